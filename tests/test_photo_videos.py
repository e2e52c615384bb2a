"""Natural-image videos (scikit-image's photographs, panned and zoomed) through the importer, and through
the VAE, the DiT and sampling with the real tools, so the own-videos path is tested on real texture."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import xla_flags

pytest.importorskip("skimage", reason="scikit-image (the [test] extra) ships the photographs")

from sora_jax.data import datasets, importer, photo_videos, video_folder_builder  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = ["astronaut", "chelsea", "coffee", "gravel"]


def test_photos_load_as_rgb():
  for name in ("astronaut", "gravel", "motorcycle"):
    image = photo_videos.load_photo(name)
    assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8 and min(image.shape[:2]) >= 300
  assert np.array_equal(photo_videos.load_photo("moon")[..., 0], photo_videos.load_photo("moon")[..., 2])
  with pytest.raises(ValueError, match="unknown photo 'lena'"):
    photo_videos.load_photo("lena")


def test_pan_zoom_moves_smoothly_over_real_texture():
  image = photo_videos.load_photo("chelsea")
  frames = photo_videos.pan_zoom_frames(image, 24, 32, 48, np.random.default_rng(0), moves=2)
  again = photo_videos.pan_zoom_frames(image, 24, 32, 48, np.random.default_rng(0), moves=2)
  assert frames.shape == (24, 32, 48, 3) and frames.dtype == np.uint8
  np.testing.assert_array_equal(frames, again)  # a pure function of the rng
  as_float = frames.astype(np.float64)
  assert as_float.std(axis=(1, 2, 3)).min() > 10, "textured frames, not flat colour"
  steps = np.abs(np.diff(as_float, axis=0)).mean(axis=(1, 2, 3))
  assert steps.min() > 0.1, "the camera moves in every frame"
  first_to_last = np.abs(as_float[-1] - as_float[0]).mean()
  assert steps.max() < first_to_last, "neighbouring frames are closer than the ends: a continuous move"


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("photos")
  photo_videos.write_photo_videos(folder, photos=PHOTOS, num_frames=24, height=48, width=48, moves=1)
  return folder


def test_write_and_import_photo_videos(photo_dir, tmp_path):
  lines = (photo_dir / "captions.csv").read_text().splitlines()
  assert lines[0] == "path,caption" and len(lines) == 1 + len(PHOTOS)
  assert lines[2] == 'chelsea.mp4,"a camera panning and zooming over a tabby cat"'
  builder, summary = video_folder_builder.import_video_folder(
    photo_dir,
    name="photos",
    captions=importer.CsvCaptions(photo_dir / "captions.csv"),
    settings=importer.ClipSettings(num_frames=9, height=32, width=32, fps=8, stride=4),
    data_dir=str(tmp_path),
    verbose=False,
  )
  assert summary.videos_read == 4 and not summary.skipped
  # 4 videos of 24 frames: too few to hold out whole ones, so each split gets the end of one video.
  assert summary.clips == {"train": 12, "validation": 1, "test": 1}
  clip = datasets.source_from_builder(builder, "test", "photos")[0]
  assert clip["video"].shape == (9, 32, 32, 3) and clip["video"].astype(float).std() > 10
  assert clip["caption"].startswith("a camera panning and zooming over")


def _run_tool(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1))  # one CPU device, as a user has
  result = subprocess.run(
    [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=900
  )
  assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


@pytest.mark.slow
def test_natural_videos_through_the_vae_the_dit_and_sampling(photo_dir, tmp_path):
  """The README's own-videos commands on natural footage: import, train_vae (its final evaluation on the
  import's test split), train_dit, then Pipeline sampling; a few steps each."""
  data_dir = tmp_path / "data"
  _run_tool(
    "tools/import_videos.py",
    f"--videos_dir={photo_dir}",
    f"--captions={photo_dir / 'captions.csv'}",
    "--name=photos",
    f"--data_dir={data_dir}",
    "--num_frames=9",
    "--height=32",
    "--width=32",
    "--stride=4",
  )
  data = [
    "--config.data.dataset=video_folder",
    "--config.data.builder_config=photos",
    f"--config.data.data_dir={data_dir}",
    "--config.data.num_frames=9",
    "--config.data.height=32",
    "--config.data.width=32",
    "--config.data.batch_size=2",
  ]
  tiny_vae = [
    "--config.vae.base_channels=8",
    "--config.vae.latent_channels=8",
    "--config.vae.mid_attention=False",
    "--config.vae_loss.latent_stats_batches=1",
    "--config.train.steps=2",
    "--config.train.sample_every=0",
  ]
  _run_tool("tools/train_vae.py", "--config=configs/vae/natural.py", f"--workdir={tmp_path / 'vae'}", *data, *tiny_vae)
  with open(tmp_path / "vae" / "eval_test.json") as f:
    evaluation = json.load(f)
  assert evaluation["split"] == "test" and evaluation["num_clips"] == 1 and np.isfinite(evaluation["psnr"])
  tiny_dit = [
    "--config.dit.variant=",
    "--config.dit.depth=1",
    "--config.train.steps=2",
    "--config.train.eval_batches=1",
    "--config.sample.num_steps=2",
  ]
  _run_tool(
    "tools/train_dit.py",
    "--config=configs/dit/demo.py",
    f"--workdir={tmp_path / 'dit'}",
    f"--config.vae_workdir={tmp_path / 'vae'}",
    *data,
    *tiny_dit,
  )
  from sora_jax import Pipeline

  pipe = Pipeline.from_pretrained(str(tmp_path))
  videos = pipe(["a camera panning and zooming over a tabby cat"], num_steps=2, seed=0, expand_prompts=False)
  assert videos.shape == (1, 9, 32, 32, 3) and videos.dtype == np.uint8
