"""Any size from one model: bucket training through the real tools, images as 1-frame videos through
VAE + DiT + Pipeline, sampling at an untrained in-between size, the error for an impossible size, and
positions computed from each clip's own grid."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import xla_flags

from sora_jax.models import embeddings
from sora_jax.models.dit import DiT
from sora_jax.sampling import sizes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = [
  "--config.data.num_train=16",
  "--config.data.num_validation=4",
  "--config.data.num_test=4",
  "--config.data.batch_size=4",
  "--config.data.num_frames=9",
]
TINY_DIT = [
  "--config.dit.depth=1",
  "--config.dit.variant=",
  "--config.train.eval_batches=1",
  "--config.train.checkpoint_every=100",
  "--config.sample.num_steps=2",
]
# 9x32x32 is the base (4 clips a batch, 3x2x2 = 12 tokens each); 9x32x48 (18 tokens) gets 4 x 12/18 -> 2,
# images (4 tokens) 4 x 12/4 = 12.
TABLE = "configs/dit/demo_sizes.py:9x32x32=0.5,9x32x48=0.25,1x32x32=0.25"


def _run_tool(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1))  # one CPU device, as a user has
  result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


@pytest.fixture(scope="module")
def sizes_run(workdir, tmp_path_factory):
  """(root, log): a bucket-table DiT run in root/dit on the session's tiny VAE (conftest `workdir`: the same
  TINY_VAE settings, trained on 9x32x32 shapes clips; nothing here writes into it)."""
  root = tmp_path_factory.mktemp("sizes")
  data = DATA + [f"--config.data.data_dir={root / 'data'}"]
  dit = ["tools/train_dit.py", f"--config={TABLE}", f"--workdir={root / 'dit'}", *data, *TINY_DIT]
  dit.append(f"--config.vae_workdir={workdir / 'vae'}")
  run = _run_tool(*dit, "--config.train.steps=4")  # (resuming the mixture: tests/test_buckets.py)
  return root, run.stderr + run.stdout


@pytest.fixture(scope="module")
def pipe(sizes_run):
  from sora_jax import Pipeline

  return Pipeline.from_pretrained(str(sizes_run[0]))


@pytest.mark.slow
def test_bucket_training_caches_every_size_and_logs_each_bucket(sizes_run):
  root, log = sizes_run
  cache = root / "dit" / "latent_cache"
  for split in ("train", "validation"):
    for size in ("9x32x32", "9x32x48", "1x32x32"):
      assert (cache / f"{split}_{size}.array_record").exists()
  assert "9x32x32: p=0.50 batch=4 tokens=12" in log and "1x32x32: p=0.25 batch=12 tokens=4" in log
  metrics = (root / "dit" / "metrics.jsonl").read_text()
  assert '"eval/loss_9x32x48"' in metrics and '"eval/loss_1x32x32"' in metrics


@pytest.mark.slow
def test_images_are_one_frame_videos_through_vae_dit_and_pipeline(pipe):
  images = pipe(["a red circle", "a blue square"], num_frames=1, num_steps=2)
  assert images.shape == (2, 1, 32, 32, 3) and images.dtype == np.uint8
  landscape = pipe(["a green triangle"], num_frames=1, height=32, width=48, num_steps=2)
  assert landscape.shape == (1, 1, 32, 48, 3)
  latents = pipe.encode(images)
  assert latents.shape[:2] == (2, 1), "a 1-frame clip is one latent frame of the causal VAE"
  assert pipe.decode(latents).shape == images.shape


@pytest.mark.slow
def test_sampling_at_an_untrained_in_between_size(pipe):
  # trained: 1, 9 frames at 32x32 / 32x48; 5 frames and 48x48 were never seen
  videos = pipe(["a red circle moving left"], num_frames=5, height=48, width=48, num_steps=2)
  assert videos.shape == (1, 5, 48, 48, 3) and videos.dtype == np.uint8
  assert videos.max() > 0


@pytest.mark.slow
def test_an_impossible_size_is_a_clear_error_before_any_work(pipe):
  compiled = dict(pipe._compiled)
  with pytest.raises(ValueError) as info:
    pipe(["a red circle moving left"], num_frames=7, height=40, width=40, num_steps=2)
  message = str(info.value)
  assert "7x40x40" in message and "1+4k" in message and "multiple of 16" in message
  assert message.endswith("Nearest valid sizes: 5x32x32, 5x32x48, 5x48x32, 5x48x48, 9x32x32, 9x32x48, 9x48x32, 9x48x48")
  assert pipe._compiled == compiled, "nothing compiled for a size that cannot be produced"


def test_size_rules_with_a_time_patch():
  sizes.check_size(9, 16, 32, temporal_factor=4, spatial_factor=8, patch_size=(1, 2, 2))
  with pytest.raises(ValueError, match=r"divisible by the DiT's time patch 2.*Nearest valid sizes: 5x32x32, 13x32x32$"):
    sizes.check_size(9, 32, 32, temporal_factor=4, spatial_factor=8, patch_size=(2, 2, 2))
  with pytest.raises(ValueError, match=r"Nearest valid sizes: 1x16x16$"):
    sizes.check_size(0, 3, 16, temporal_factor=4, spatial_factor=8, patch_size=(1, 2, 2))


def test_sincos3d_positions_follow_each_grid():
  """The absolute table is computed from the clip's own grid at call time: a token at (t, h, w) gets the same
  vector in every grid (nothing pinned to the training grid), and grids never trained run with one param set."""
  small = embeddings.sincos_3d_embedding(64, 1, 2, 3).reshape(1, 2, 3, 64)
  large = embeddings.sincos_3d_embedding(64, 5, 3, 4).reshape(5, 3, 4, 64)
  np.testing.assert_array_equal(small, large[:1, :2, :3])
  dit = DiT(in_channels=4, text_dim=8, hidden_size=32, depth=1, num_heads=2, abs_pos_embedding="sincos3d")
  cond = {"text": jnp.zeros((1, 3, 8)), "text_mask": jnp.ones((1, 3), bool), "pooled": jnp.zeros((1, 8))}
  # jitted: one program per grid compiles in seconds; op-by-op dispatch compiled every op for every grid (~20 s)
  params = jax.jit(dit.init)(jax.random.PRNGKey(0), jnp.zeros((1, 3, 4, 4, 4)), jnp.zeros((1,)), cond)
  apply = jax.jit(dit.apply)
  for shape in ((1, 1, 4, 4, 4), (1, 5, 6, 4, 4), (1, 2, 4, 8, 4)):
    out = apply(params, jax.random.normal(jax.random.PRNGKey(1), shape), jnp.full((1,), 500.0), cond)
    assert out.shape == shape and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.slow
def test_evaluate_sizes_gives_a_section_per_size_and_a_sheet(pipe):
  from sora_jax.evaluation import adherence
  from sora_jax.media import contact_sheet

  sections = adherence.evaluate_sizes(pipe, [(1, 32, 32), (9, 32, 48)], max_prompts=2, batch_size=2, num_steps=2)
  firsts = sections.pop("videos")
  assert set(sections) == set(firsts) == {"1x32x32", "9x32x48"}
  image, video = sections["1x32x32"], sections["9x32x48"]
  assert image["num_videos"] == 2 and image["framing_travel"] is None, "images: colour x shape prompts, no travel"
  assert video["num_videos"] == 2 and firsts["9x32x48"].shape == (9, 32, 48, 3)
  for section in sections.values():
    for key in ("accuracy_color", "accuracy_shape", "accuracy_all", "framing_inside"):
      assert 0.0 <= section[key] <= 1.0
  sheet = contact_sheet.make_sizes_image(list(firsts.values()), list(firsts))
  assert sheet.ndim == 3 and sheet.shape[1] > 48 * 3 + 32 * 3, "both columns side by side"


def test_framing_reads_whole_objects_as_inside_and_cut_ones_as_not():
  from sora_jax.data import shapes
  from sora_jax.evaluation import shapes_analyzer as sa

  cut_found = []
  for i in range(24):
    size = ((17, 32, 48), (17, 48, 32), (1, 32, 32))[i % 3]
    spec = shapes.sample_clip_spec(np.random.default_rng(i), aspect_ratio=size[2] / size[1])
    if size[0] == 1:
      spec = shapes.sample_clip_spec(np.random.default_rng(i), aspect_ratio=1.0, motion="still")
    video = shapes.render_clip(spec, *size)
    framed = sa.framing(video)
    assert framed["inside"], f"a rendered clip is wholly inside ({size}, {spec})"
    assert framed["travels_enough"] and (spec.motion == "still" or framed["travel"] >= 0.35)
    shifted = np.zeros_like(video)
    shift = int(0.3 * size[2])
    shifted[:, :, shift:] = video[:, :, : size[2] - shift]
    if video[:, :, size[2] - shift :].any():  # the shift pushed part of the object out of the frame
      cut_found.append(not sa.framing(shifted)["inside"])
  # the reader is conservative (a cut that still reads as a clean shape counts as inside): most cuts are seen
  assert len(cut_found) >= 8 and np.mean(cut_found) >= 0.75, cut_found
