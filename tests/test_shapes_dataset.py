"""The "shapes" dataset: renderer geometry, caption grammar, TFDS build determinism, the default build's content.

Every size and the new concepts, read back from the pixels: tests/test_shapes_sizes_and_concepts.py.
"""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from sora_jax.data import datasets, shapes, shapes_builder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_frames=9, height=32, width=32, num_train=32, num_validation=8, num_test=8)


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("shapes_data")
  config = shapes_builder.make_config(seed=0, **TINY)
  return shapes_builder.build_shapes(config, str(data_dir)), str(data_dir)


def _split_files(builder, split):
  folder = builder.data_dir
  names = sorted(n for n in os.listdir(folder) if f"-{split}.array_record" in n)
  assert names, f"no {split} files in {folder}"
  return [open(os.path.join(folder, n), "rb").read() for n in names]


# ------------------------------------------------------------------ renderer


@pytest.mark.parametrize("shape", shapes.ALL_SHAPES)
@pytest.mark.parametrize("color", list(shapes.ALL_COLORS))
def test_pixels_are_exact_color_on_black(color, shape):
  spec = shapes.ClipSpec(
    color=color, shape=shape, motion="still", size_frac=0.4, start_center=(0.5, 0.5), end_center=(0.5, 0.5)
  )
  video = shapes.render_clip(spec, 2, 32, 32)
  assert video.shape == (2, 32, 32, 3) and video.dtype == np.uint8
  rgb = np.array(shapes.ALL_COLORS[color])
  lit = video.max(-1) > 0
  # Fully covered pixels carry exactly the colour; edge pixels are a fraction of it.
  assert (video.reshape(-1, 3) == rgb).all(-1).sum() > 0.5 * lit.sum()
  on = rgb > 0
  fractions = video[lit][:, on] / rgb[on]
  assert np.all(video[lit][:, ~on] == 0), "channels that are 0 in the colour must stay 0"
  # Each channel is rounded to an integer on its own: half a level of the dimmest channel (orange's 128)
  # plus half of 255 apart at most; a wrong hue is off by far more.
  tolerance = 0.5 / rgb[on].min() + 0.5 / 255 + 1e-6
  assert np.all(np.abs(fractions - fractions[:, :1]) <= tolerance), "edge pixels must be shades of the colour"
  # Background: the corners are far from a centred 40 % object.
  assert np.all(video[:, :3, :3] == 0) and np.all(video[:, -3:, -3:] == 0)


def test_anti_aliasing_gives_intermediate_edge_values():
  spec = shapes.ClipSpec("white", "circle", "still", 0.4, (0.5, 0.5), (0.5, 0.5))
  values = np.unique(shapes.render_clip(spec, 1, 32, 32))
  assert len(values) > 5, f"edges should be anti-aliased, got only values {values}"


def test_triangle_points_up():
  spec = shapes.ClipSpec("white", "triangle", "still", 0.4, (0.5, 0.5), (0.5, 0.5))
  cover = shapes.coverage(spec, 1, 32, 32)[0]
  rows = cover.sum(axis=1)
  lit_rows = np.nonzero(rows)[0]
  top, bottom = rows[lit_rows[0] + 1], rows[lit_rows[-1] - 1]
  assert bottom > 3 * top, "the triangle's base (wide) must be at the bottom, its apex at the top"


def test_diamond_is_a_square_rotated_45_degrees():
  spec = shapes.ClipSpec("white", "diamond", "still", 0.4, (0.5, 0.5), (0.5, 0.5))
  cover = shapes.coverage(spec, 1, 64, 64, supersample=8)[0]
  # Its bounding box is the size (0.4 * 64 = 25.6 px), its area half of it squared; the corners are empty.
  lit_cols = np.nonzero(cover.sum(axis=0) > 0.05)[0]
  assert abs(len(lit_cols) - 25.6) <= 1.5, lit_cols
  assert cover.sum() == pytest.approx(25.6**2 / 2, rel=0.01)  # supersampling error, ~0.2 %
  centre = 32
  assert cover[centre, centre] == 1.0 and cover[centre - 12, centre - 12] == 0.0 and cover[centre - 11, centre] == 1.0


@pytest.mark.parametrize("aspect_ratio", [1.0, 1.5, 2 / 3, 16 / 9, 4.0])
def test_sampled_specs_respect_geometry(aspect_ratio):
  for i in range(600):
    spec = shapes.sample_clip_spec(np.random.default_rng(i), aspect_ratio=aspect_ratio)
    assert shapes.MIN_SIZE_FRAC <= spec.size_frac <= shapes.MAX_SIZE_FRAC
    # The size is a fraction of the shorter side; the extent per axis follows from the aspect ratio.
    extent = shapes.object_extent(spec.size_frac, aspect_ratio)
    assert min(extent) == pytest.approx(spec.size_frac * min(aspect_ratio, 1 / aspect_ratio))
    assert max(extent) == pytest.approx(spec.size_frac)
    for center in (spec.start_center, spec.end_center):
      for c, e in zip(center, extent):
        assert e / 2 - 1e-9 <= c <= 1 - e / 2 + 1e-9, (spec, "object leaves the frame")
    dx, dy = np.subtract(spec.end_center, spec.start_center)
    expected = {
      "left": (dx <= -0.4 and dy == 0),
      "right": (dx >= 0.4 and dy == 0),
      "up": (dy <= -0.4 and dx == 0),
      "down": (dy >= 0.4 and dx == 0),
      "still": (dx == 0 and dy == 0),
    }
    assert expected[spec.motion], spec


def test_objects_are_sized_on_the_shorter_side():
  spec = shapes.ClipSpec("red", "square", "still", 0.4, (0.5, 0.5), (0.5, 0.5))
  for height, width in ((32, 48), (48, 32)):
    side = shapes.coverage(spec, 1, height, width, supersample=10).sum() ** 0.5
    # 12.8 px edges fall on the 10x10 sample grid, so only float rounding remains (sized on W: 19.2 px).
    assert side == pytest.approx(0.4 * 32, abs=0.01), (height, width)
  with pytest.raises(ValueError, match="aspect_ratio"):
    shapes.sample_clip_spec(np.random.default_rng(0), aspect_ratio=0.0)


def test_fixed_attributes_are_kept():
  spec = shapes.sample_clip_spec(np.random.default_rng(0), color="orange", shape="diamond", motion="up")
  assert (spec.color, spec.shape, spec.motion) == ("orange", "diamond", "up")
  assert spec.end_center[1] <= spec.start_center[1] - 0.4


def test_bad_spec_values_raise():
  with pytest.raises(ValueError, match="color"):
    shapes.ClipSpec("purple", "circle", "still", 0.4, (0.5, 0.5), (0.5, 0.5))
  with pytest.raises(ValueError, match="motion"):
    shapes.ClipSpec("red", "circle", "spinning", 0.4, (0.5, 0.5), (0.5, 0.5))


# ------------------------------------------------------------------ captions


def test_canonical_grammar_and_round_trip():
  captions = shapes.all_canonical_captions()
  assert len(set(captions)) == 7 * 3 * 5
  assert "a red circle moving left" in captions and "a white triangle staying still" in captions
  for caption in captions:
    color, shape, motion = shapes.parse_canonical_caption(caption)
    assert shapes.canonical_caption_from(color, shape, motion) == caption
  for bad in (
    "a red circle moving sideways",
    "a purple circle staying still",
    "red circle moving left",
    "an red circle moving left",
    "a orange diamond moving left",
  ):
    with pytest.raises(ValueError, match="canonical"):
      shapes.parse_canonical_caption(bad)


def test_new_concept_captions_use_an_before_a_vowel():
  captions = shapes.new_concept_captions()
  assert len(set(captions)) == 8 * 4 * 5 - 7 * 3 * 5 == 55
  assert "an orange diamond moving left" in captions and "an orange circle staying still" in captions
  assert "a red diamond moving up" in captions
  assert not set(captions) & set(shapes.all_canonical_captions()), "every caption holds a new concept"
  for caption in captions:
    assert shapes.parse_canonical_caption(caption) == shapes.parse_caption(caption)
  rng = np.random.default_rng(0)
  spec = shapes.ClipSpec("orange", "square", "left", 0.4, (0.7, 0.5), (0.3, 0.5))
  paraphrases = {shapes.paraphrase_caption(spec, rng) for _ in range(200)}
  assert not any(" a orange" in f" {p}" for p in paraphrases), paraphrases
  assert any(p.startswith("an orange") for p in paraphrases)


def test_images_are_captioned_like_still_clips():
  rng = np.random.default_rng(0)
  spec = shapes.ClipSpec("red", "circle", "still", 0.4, (0.5, 0.5), (0.5, 0.5))
  captions = {shapes.paraphrase_caption(spec, rng, image=True) for _ in range(300)}
  assert "a red circle" in captions and "a red circle staying still" in captions
  assert all(shapes.parse_caption(c) == ("red", "circle", "still") for c in captions), captions
  moving = shapes.ClipSpec("red", "circle", "left", 0.4, (0.7, 0.5), (0.3, 0.5))
  with pytest.raises(ValueError, match="still"):
    shapes.paraphrase_caption(moving, rng, image=True)
  with pytest.raises(ValueError, match="motion"):
    shapes.parse_caption("a red circle moving")  # a verb of motion without a direction


def test_every_canonical_caption_occurs_in_a_default_size_train_split():
  config = shapes_builder.make_config()  # 2048 train clips
  seen = {shapes.canonical_caption(shapes_builder.example_spec(config, "train", i)[0]) for i in range(config.num_train)}
  assert seen == set(shapes.all_canonical_captions())


def test_paraphrases_vary_and_parse_back():
  rng = np.random.default_rng(0)
  captions = set()
  for i in range(600):
    spec = shapes.sample_clip_spec(np.random.default_rng(i))
    caption = shapes.paraphrase_caption(spec, rng)
    captions.add(caption)
    assert shapes.parse_caption(caption) == (spec.color, spec.shape, spec.motion), caption
  canonical = set(shapes.all_canonical_captions())
  assert len(captions - canonical) > 300, "most training captions should be paraphrases"
  assert len(captions & canonical) > 30, "the canonical form must also occur in training"
  assert any("box" in c for c in captions) and any("travelling" in c for c in captions)


# ------------------------------------------------------------------ TFDS build


def test_build_is_deterministic_and_seed_dependent(tiny_build, tmp_path):
  builder, _ = tiny_build
  again = shapes_builder.build_shapes(shapes_builder.make_config(seed=0, **TINY), str(tmp_path / "again"))
  other = shapes_builder.build_shapes(shapes_builder.make_config(seed=1, **TINY), str(tmp_path / "other"))
  for split in ("train", "validation", "test"):
    assert _split_files(builder, split) == _split_files(again, split), f"{split}: same seed, different bytes"
  first = builder.as_data_source(split="train")[0]["video"]
  assert not np.array_equal(first, other.as_data_source(split="train")[0]["video"])
  # Splits come from different seeds too.
  assert not np.array_equal(first, builder.as_data_source(split="validation")[0]["video"])


def test_build_is_reused_and_named_by_config(tiny_build, capsys):
  builder, data_dir = tiny_build
  assert builder.builder_config.name == "f9_32x32_s0_n32-8-8"
  assert shapes_builder.make_config().name == "f17_32x32_s0"
  mtime = os.path.getmtime(os.path.join(builder.data_dir, "dataset_info.json"))
  shapes_builder.build_shapes(shapes_builder.make_config(seed=0, **TINY), data_dir)
  assert "reusing" in capsys.readouterr().out
  assert os.path.getmtime(os.path.join(builder.data_dir, "dataset_info.json")) == mtime


# sha256 over every decoded example (sorted keys, then values as bytes) of each split of the default
# 17x32x32 build, computed with the code of version 1.0.0 (main at f26753f). The demo's numbers rest on
# these clips. (The files' raw bytes are not comparable: TFDS serialises each example's feature map in an
# order that varies between processes, so only the decoded content is stable.)
DEFAULT_BUILD_SHA256 = {
  "train": "9f2a673c055b8784e071579108573dd3f0c668afd0177d918de04e37ca2bd6e2",
  "validation": "47cca70332b7e43773178ad5b474be3fd61db27a84c24d48d519a55d0be2bceb",
  "test": "e934618e60c8f60d7b10b271d697b071d72d5bd07c18e18023bfe02340abfbc0",
}


def _content_sha256(source) -> str:
  digest = hashlib.sha256()
  for i in range(len(source)):
    example = source[i]
    for key in sorted(example):
      value = example[key]
      digest.update(key.encode())
      digest.update(value if isinstance(value, bytes) else np.asarray(value).tobytes())
  return digest.hexdigest()


@pytest.mark.slow
def test_default_build_keeps_the_demo_clips(tmp_path):
  builder = shapes_builder.build_shapes(shapes_builder.make_config(), str(tmp_path))
  assert builder.builder_config.name == "f17_32x32_s0"
  for split, expected in DEFAULT_BUILD_SHA256.items():
    assert _content_sha256(builder.as_data_source(split=split)) == expected, f"the default {split} split changed"


def test_record_order_is_example_index(tiny_build):
  builder, _ = tiny_build
  source = builder.as_data_source(split="test")
  for i in range(len(source)):
    expected = shapes_builder.generate_example(builder.builder_config, "test", i)
    assert source[i]["index"] == i
    np.testing.assert_array_equal(source[i]["video"], expected["video"])


def _data_cfg(data_dir):
  from configs import base

  cfg = base.get_config().data
  cfg.data_dir = data_dir
  cfg.num_frames, cfg.num_train, cfg.num_validation, cfg.num_test = 9, 32, 8, 8
  return cfg


def test_load_data_source_decodes_text_and_checks_split(tiny_build):
  _, data_dir = tiny_build
  source = datasets.load_data_source(_data_cfg(data_dir), "train")
  ex = source[0]
  assert isinstance(ex["caption"], str) and ex["video"].dtype == np.uint8
  assert ex["video"].shape == (9, 32, 32, 3) and ex["size_frac"].dtype == np.float32
  with pytest.raises(ValueError, match="no split 'holdout'"):
    datasets.load_data_source(_data_cfg(data_dir), "holdout")


def test_show_dataset_tool_writes_a_contact_sheet(tiny_build, tmp_path):
  _, data_dir = tiny_build
  out = tmp_path / "sheet.png"
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "tools", "show_dataset.py"),
      f"--data_dir={data_dir}",
      "--num=4",
      f"--out={out}",
      "--split=validation",
      "--config.data.num_frames=9",
      "--config.data.num_train=32",
      "--config.data.num_validation=8",
      "--config.data.num_test=8",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_local_build_prints_no_download_lines(tmp_path, capfd):
  config = shapes_builder.make_config(num_frames=5, height=16, width=16, num_train=4, num_validation=2, num_test=2)
  shapes_builder.build_shapes(config, str(tmp_path))
  out, err = capfd.readouterr()
  assert "built 8 clips" in out
  for line in ("Downloading and preparing", "downloaded and prepared", "Generating train examples"):
    assert line not in out + err, f"TFDS printed {line!r} for a local build"
