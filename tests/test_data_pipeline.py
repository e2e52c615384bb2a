"""grain pipeline: batch format, exact resume, epochs, flips that fix captions, temporal crop, global arrays."""

import grain
import jax
import numpy as np
import pytest

from configs import base
from sora_jax.data import pipeline, shapes, shapes_builder


class ArraySource:
  """A tiny in-memory random-access source: record i = {'x': [i, i], 'caption': 'item i'}."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"x": np.array([i, i], np.int32), "caption": f"item {i}"}


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
  cfg = base.get_config().data
  cfg.data_dir = str(tmp_path_factory.mktemp("pipeline_data"))
  cfg.num_frames, cfg.num_train, cfg.num_validation, cfg.num_test = 9, 32, 8, 8
  cfg.batch_size = 4
  shapes_builder.build_dataset(cfg)
  return cfg


def _assert_same_batch(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_video_batches_have_the_documented_format(data_cfg):
  batch = next(pipeline.make_train_iterator(data_cfg, seed=0))
  assert batch["video"].shape == (4, 9, 32, 32, 3) and batch["video"].dtype == np.float32
  assert batch["video"].min() == -1.0 and batch["video"].max() == 1.0
  assert batch["caption"].shape == (4,) and batch["caption"].dtype.kind == "U"
  assert {"canonical_caption", "color", "shape", "motion", "size_frac"} <= batch.keys()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_gives_the_identical_next_batch(data_cfg, prefetch):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.random_flip, cfg.prefetch = True, prefetch
  it = pipeline.make_train_iterator(cfg, seed=3)
  for _ in range(11):  # past one epoch of 32 clips (8 batches), so the reshuffle is covered
    next(it)
  state = it.get_state()
  expected = next(it)
  restored = pipeline.make_train_iterator(cfg, seed=3)
  restored.set_state(state)
  _assert_same_batch(restored.__next__(), expected)
  _assert_same_batch(next(restored), next(it))
  it.close()
  restored.close()


def test_generic_iterator_epochs_shuffle_and_state(tmp_path):
  source = ArraySource(12)
  one_epoch = list(pipeline.make_iterator(source, batch_size=4, seed=0, num_epochs=1))
  seen = np.concatenate([b["x"][:, 0] for b in one_epoch])
  assert len(one_epoch) == 3 and sorted(seen) == list(range(12)), "one epoch = every record once"
  assert list(seen) != list(range(12)), "shuffled"
  in_order = np.concatenate(
    [b["x"][:, 0] for b in pipeline.make_iterator(source, batch_size=4, seed=0, shuffle=False, num_epochs=1)]
  )
  assert list(in_order) == list(range(12))
  assert list(next(iter(one_epoch))["caption"]) == [f"item {i}" for i in seen[:4]]
  forever = pipeline.make_iterator(source, batch_size=4, seed=0)
  first, second = [np.concatenate([next(forever)["x"][:, 0] for _ in range(3)]) for _ in range(2)]
  assert sorted(second) == list(range(12)) and list(first) != list(second), "each epoch reshuffles"
  other_seed = np.concatenate(
    [b["x"][:, 0] for b in pipeline.make_iterator(source, batch_size=4, seed=1, num_epochs=1)]
  )
  assert list(other_seed) != list(seen)


def test_each_process_reads_its_own_shard_with_its_part_of_the_global_batch(monkeypatch):
  seen = []
  for process in range(2):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda p=process: p)
    batches = list(pipeline.make_iterator(ArraySource(12), batch_size=4, seed=0, num_epochs=1))
    assert all(b["x"].shape == (2, 2) for b in batches), "global batch 4 over 2 processes = 2 each"
    seen.append({int(i) for b in batches for i in b["x"][:, 0]})
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(12))
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    pipeline.make_iterator(ArraySource(12), batch_size=3, seed=0)


def test_iterator_round_trips_through_grains_orbax_checkpoint_handler(tmp_path):
  from etils import epath

  it = pipeline.make_iterator(ArraySource(10), batch_size=2, seed=0)
  for _ in range(7):
    next(it)
  state = it.get_state()
  assert isinstance(state, bytes) and b"last_seen_indices" in state
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(it))
  expected = next(it)
  restored = handler.restore(
    epath.Path(tmp_path),
    args=grain.checkpoint.CheckpointRestore(pipeline.make_iterator(ArraySource(10), batch_size=2, seed=0)),
  )
  _assert_same_batch(next(restored), expected)


def test_a_split_smaller_than_one_batch_is_read_round_to_fill_one(caplog):
  # A small import's validation split (1 clip) evaluated in batches of 4: one batch, not none.
  batches = list(pipeline.make_iterator(ArraySource(3), batch_size=4, seed=0, shuffle=False, num_epochs=1))
  assert [b["x"][:, 0].tolist() for b in batches] == [[0, 1, 2, 0]]
  assert "fewer than one batch of 4" in caplog.text
  # Enough records: one ordered pass, the remainder dropped as before.
  assert len(list(pipeline.make_iterator(ArraySource(6), batch_size=4, seed=0, shuffle=False, num_epochs=1))) == 1


def test_bad_batch_size_is_a_clear_error():
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.make_iterator(ArraySource(8), batch_size=0, seed=0)


@pytest.mark.parametrize(
  "text,expected",
  [
    ("a red circle moving left", "a red circle moving right"),
    ("the blue box is sliding to the right", "the blue box is sliding to the left"),
    ("Leftward: a dot", "Rightward: a dot"),
    ("a green triangle moving up", "a green triangle moving up"),
    ("a cat on the LEFT, bright", "a cat on the RIGHT, bright"),
  ],
)
def test_swap_left_right(text, expected):
  assert pipeline.swap_left_right(text) == expected


def test_flip_mirrors_pixels_and_swaps_left_right_everywhere():
  config = shapes_builder.make_config(num_frames=5, height=32, width=32, seed=0)
  index = next(i for i in range(100) if shapes_builder.example_spec(config, "train", i)[0].motion == "left")
  example = shapes_builder.generate_example(config, "train", index)
  flipped = pipeline.flip_example(example)
  np.testing.assert_array_equal(flipped["video"], example["video"][:, :, ::-1])
  assert flipped["motion"] == "right"
  assert flipped["canonical_caption"] == example["canonical_caption"].replace("left", "right")
  assert shapes.parse_caption(flipped["caption"])[2] == "right"
  np.testing.assert_allclose(flipped["start_center"][0], 1 - example["start_center"][0], rtol=1e-6)
  cols = np.arange(32) + 0.5

  def x_centroid(frame):
    mass = frame.max(-1).sum(0).astype(float)
    return (mass * cols).sum() / mass.sum()

  assert x_centroid(flipped["video"][-1]) > x_centroid(flipped["video"][0]) + 10, "flipped clip moves right"


def test_random_flip_is_deterministic_per_seed_and_flips_some(data_cfg):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.random_flip = True
  a = [next(pipeline.make_train_iterator(cfg, seed=5)) for _ in range(2)]
  _assert_same_batch(a[0], a[1])
  plain = next(pipeline.make_train_iterator(data_cfg, seed=5))
  flipped_rows = [i for i in range(4) if not np.array_equal(plain["video"][i], a[0]["video"][i])]
  for i in flipped_rows:
    np.testing.assert_array_equal(a[0]["video"][i], plain["video"][i][:, :, ::-1])
    assert a[0]["caption"][i] == pipeline.swap_left_right(plain["caption"][i])
  flipping, plain_it = pipeline.make_train_iterator(cfg, seed=5), pipeline.make_train_iterator(data_cfg, seed=5)
  flipped_batches = sum(not np.array_equal(next(flipping)["video"], next(plain_it)["video"]) for _ in range(8))
  assert flipped_batches > 0, "probability 0.5 per clip: some of 32 clips must be flipped"


def test_temporal_crop_takes_a_window_of_the_stored_clip(data_cfg):
  stored = pipeline.datasets.load_data_source(data_cfg, "train")  # 9-frame clips
  cfg = data_cfg.copy_and_resolve_references()
  cfg.random_temporal_crop, cfg.num_frames = True, 5
  transforms = pipeline.video_transforms(cfg, stored_num_frames=9, train=True)
  batches = pipeline.make_iterator(stored, batch_size=4, seed=0, transforms=transforms)
  offsets = set()
  for _ in range(4):
    batch = next(batches)
    assert batch["video"].shape == (4, 5, 32, 32, 3)
    for video, index, offset in zip(batch["video"], batch["index"], batch["start_frame_offset"]):
      original = stored[int(index)]["video"].astype(np.float32) / 127.5 - 1
      np.testing.assert_allclose(video, original[offset : offset + 5], atol=1e-6)
      offsets.add(int(offset))
  assert len(offsets) > 1 and offsets <= set(range(5)), offsets
  eval_ops = pipeline.video_transforms(cfg, stored_num_frames=9, train=False)
  assert not eval_ops[0].random_offset, "evaluation takes the first frames"
  cfg.num_frames = 17
  too_long = pipeline.make_iterator(
    stored, batch_size=4, seed=0, transforms=pipeline.video_transforms(cfg, 9, train=True), prefetch=0
  )
  with pytest.raises(ValueError, match="num_frames"):
    next(too_long)


def test_wrong_frame_size_is_a_clear_error(data_cfg):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.num_train = 32
  built = shapes_builder.build_dataset(cfg, verbose=False)
  source = pipeline.datasets.DecodedSource(built.as_data_source(split="train"), "tiny")
  cfg.height = 64
  with pytest.raises(ValueError, match="32x32"):
    pipeline._check_stored_size(cfg, pipeline.datasets.stored_video_shape(source), repr(source))


def test_eval_iterator_is_one_ordered_pass(data_cfg):
  batches = list(pipeline.make_eval_iterator(data_cfg))
  assert len(batches) == 2  # 8 validation clips / batch 4
  assert list(np.concatenate([b["index"] for b in batches])) == list(range(8))
