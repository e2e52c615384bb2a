"""The "shapes" dataset: renderer geometry, caption grammar, TFDS build determinism, metadata vs pixels."""

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


@pytest.mark.parametrize("shape", shapes.SHAPES)
@pytest.mark.parametrize("color", list(shapes.COLORS))
def test_pixels_are_exact_color_on_black(color, shape):
  spec = shapes.ClipSpec(
    color=color, shape=shape, motion="still", size_frac=0.4, start_center=(0.5, 0.5), end_center=(0.5, 0.5)
  )
  video = shapes.render_clip(spec, 2, 32, 32)
  assert video.shape == (2, 32, 32, 3) and video.dtype == np.uint8
  rgb = np.array(shapes.COLORS[color])
  lit = video.max(-1) > 0
  # Fully covered pixels carry exactly the colour; edge pixels are a fraction of it.
  assert (video.reshape(-1, 3) == rgb).all(-1).sum() > 0.5 * lit.sum()
  on = rgb > 0
  fractions = video[lit][:, on] / 255.0
  assert np.all(video[lit][:, ~on] == 0), "channels that are 0 in the colour must stay 0"
  assert np.all(np.abs(fractions - fractions[:, :1]) <= 1 / 255 + 1e-6), "edge pixels must be shades of the colour"
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


def test_sampled_specs_respect_geometry():
  for i in range(2000):
    spec = shapes.sample_clip_spec(np.random.default_rng(i))
    assert shapes.MIN_SIZE_FRAC <= spec.size_frac <= shapes.MAX_SIZE_FRAC
    half = spec.size_frac / 2
    for center in (spec.start_center, spec.end_center):
      assert all(half - 1e-9 <= c <= 1 - half + 1e-9 for c in center), (spec, "object leaves the frame")
    dx, dy = np.subtract(spec.end_center, spec.start_center)
    expected = {
      "left": (dx <= -0.4 and dy == 0),
      "right": (dx >= 0.4 and dy == 0),
      "up": (dy <= -0.4 and dx == 0),
      "down": (dy >= 0.4 and dx == 0),
      "still": (dx == 0 and dy == 0),
    }
    assert expected[spec.motion], spec


def test_wide_frames_shrink_objects_and_very_wide_frames_fail():
  spec = shapes.sample_clip_spec(np.random.default_rng(0), aspect_ratio=16 / 9)
  assert spec.size_frac * 16 / 9 <= 0.6 + 1e-9
  with pytest.raises(ValueError, match="width/height"):
    shapes.sample_clip_spec(np.random.default_rng(0), aspect_ratio=3.0)


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
  for bad in ("a red circle moving sideways", "a purple circle staying still", "red circle moving left"):
    with pytest.raises(ValueError, match="canonical"):
      shapes.parse_canonical_caption(bad)


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


def test_record_order_is_example_index(tiny_build):
  builder, _ = tiny_build
  source = builder.as_data_source(split="test")
  for i in range(len(source)):
    expected = shapes_builder.generate_example(builder.builder_config, "test", i)
    assert source[i]["index"] == i
    np.testing.assert_array_equal(source[i]["video"], expected["video"])


def _centroids(video):
  mass = video.astype(np.float64).max(-1)  # coverage * 255 (max channel of the colour)
  ys, xs = np.mgrid[: video.shape[1], : video.shape[2]]
  total = mass.sum((1, 2))
  return np.stack([(mass * (xs + 0.5)).sum((1, 2)) / total, (mass * (ys + 0.5)).sum((1, 2)) / total], -1), total


_AREA = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / size^2


def test_every_example_metadata_matches_its_pixels(tiny_build):
  builder, data_dir = tiny_build
  data_cfg = _data_cfg(data_dir)
  for split in ("train", "validation", "test"):
    source = datasets.load_data_source(data_cfg, split)
    for i in range(len(source)):
      ex = source[i]
      video, color, shape, motion = ex["video"], ex["color"], ex["shape"], ex["motion"]
      t, h, w, _ = video.shape
      assert ex["canonical_caption"] == shapes.canonical_caption_from(color, shape, motion)
      assert shapes.parse_caption(ex["caption"]) == (color, shape, motion), ex["caption"]
      # Colour: the brightest pixels are exactly the caption's colour; nothing else is lit.
      rgb = np.array(shapes.COLORS[color])
      assert np.all(video.reshape(-1, 3).max(0) == rgb), (color, video.reshape(-1, 3).max(0))
      assert np.all(video[..., rgb == 0] == 0)
      # Size and fully inside: lit mass per frame equals the whole shape's area in every frame.
      size_px = ex["size_frac"] * w
      assert 0.30 - 1e-6 <= ex["size_frac"] <= 0.45 + 1e-6
      centroids, mass = _centroids(video)
      expected_mass = _AREA[shape] * size_px**2 * 255
      np.testing.assert_allclose(mass, expected_mass, rtol=0.06, err_msg=f"{ex['canonical_caption']}: clipped?")
      width_px = (video.max(-1) > 127).any(1).sum(-1)  # lit columns per frame
      assert np.all(np.abs(width_px - size_px) <= 1.5), (width_px, size_px)
      # Motion: centroid displacement matches the caption's direction.
      dx, dy = (centroids[-1] - centroids[0]) / np.array([w, h])
      moved = {
        "left": dx < -0.38 and abs(dy) < 0.02,
        "right": dx > 0.38 and abs(dy) < 0.02,
        "up": dy < -0.38 and abs(dx) < 0.02,
        "down": dy > 0.38 and abs(dx) < 0.02,
        "still": abs(dx) < 0.02 and abs(dy) < 0.02,
      }
      assert moved[motion], (ex["canonical_caption"], dx, dy)
      steps = np.diff(centroids, axis=0)
      assert np.allclose(steps, steps.mean(0), atol=0.25), "constant velocity"
      # The stored centre is the bounding-box centre (= centroid along x for all three shapes).
      np.testing.assert_allclose(centroids[0, 0] / w, ex["start_center"][0], atol=0.02)
      np.testing.assert_allclose(centroids[-1, 0] / w, ex["end_center"][0], atol=0.02)


def _data_cfg(data_dir):
  sys.path.insert(0, REPO)
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
