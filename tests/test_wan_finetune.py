"""Fine-tuning from a diffusers Wan 2.1 folder, converting one into a workdir, and exporting a run back.

The real tool trains the tiny Wan config on the shapes dataset for two steps, starting from a
tiny random folder (latent cache built with the folder's Wan VAE and umT5); the run is sampled
by our Pipeline and, exported, by diffusers' WanPipeline from the same latents. Needs the
[peers] extra.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import wan_peers
from conftest import xla_flags

torch = pytest.importorskip("torch", reason=wan_peers.PEERS_REASON)
diffusers = pytest.importorskip("diffusers", reason=wan_peers.PEERS_REASON)
pytest.importorskip("transformers", reason=wan_peers.PEERS_REASON)

from sora_jax import Pipeline  # noqa: E402
from sora_jax.models.wan import folder as wan_folder  # noqa: E402
from sora_jax.recipes import wan  # noqa: E402

pytestmark = [pytest.mark.peers, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = dict(num_frames=5, height=32, width=32)
PROMPTS = ["a red circle moving left"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("wan_t2v"))
  wan_peers.save_wan_folder(path)
  return path


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
  root = tmp_path_factory.mktemp("finetune")
  args = [
    "tools/train_dit.py",
    "--config=configs/dit/wan21.py:tiny",
    f"--workdir={root / 'run'}",
    f"--config.init_from={folder}",
    "--config.data.dataset=shapes",
    f"--config.data.data_dir={root / 'data'}",
    "--config.data.num_train=8",
    "--config.data.num_validation=4",
    "--config.data.num_test=4",
    "--config.train.steps=2",
    "--config.train.eval_batches=1",
    "--config.train.checkpoint_every=2",
    "--config.sample.num_steps=2",
  ]
  env = dict(os.environ, XLA_FLAGS=xla_flags(1))  # one CPU device, as a user has
  result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, f"train_dit failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return str(root / "run")


def _latents(batch=1):
  return np.random.default_rng(0).standard_normal((batch, 2, 4, 4, 4)).astype(np.float32)


def test_fine_tune_starts_from_the_folder(folder, run):
  _, start = wan_folder.load_transformer(folder)
  tuned = Pipeline.from_pretrained(run)
  assert tuned.components.denoiser.dit.architecture == "wan2.1" and tuned.components.vae.architecture == "wan2.1"
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), tuned.params["dit"], start)
  # two AdamW steps at warmup learning rates (1e-7, 2e-7): the folder's weights, nudged
  assert 0 < max(jax.tree.leaves(moved)) < 1e-5
  assert os.path.exists(os.path.join(run, "latent_cache", "train.array_record"))
  frames = tuned(PROMPTS, num_steps=2, latents=_latents(), **SIZE)
  assert frames.shape == (1, 5, 32, 32, 3) and frames.dtype == np.uint8


def test_export_of_the_run_samples_the_same_in_diffusers(run, tmp_path):
  out = wan.export(run, str(tmp_path / "export"))
  theirs = diffusers.WanPipeline.from_pretrained(out)
  ours = Pipeline.from_pretrained(run)
  latents = _latents()
  with torch.no_grad():
    want = theirs(
      prompt=PROMPTS,
      num_inference_steps=3,
      guidance_scale=4.0,
      latents=wan_peers.to_torch(latents),
      output_type="np",
      max_sequence_length=16,
      **SIZE,
    ).frames
  got = ours(PROMPTS, num_steps=3, guidance_scale=4.0, latents=latents, output_type="float", **SIZE)
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-3)  # float32 both; summation order only


def test_convert_gives_a_workdir_that_samples_like_the_folder(folder, tmp_path):
  workdir = str(tmp_path / "converted")
  wan.convert(folder, workdir)
  direct = Pipeline.from_pretrained(folder)(PROMPTS, num_steps=2, latents=_latents(), output_type="latent", **SIZE)
  converted = Pipeline.from_pretrained(workdir)(PROMPTS, num_steps=2, latents=_latents(), output_type="latent", **SIZE)
  np.testing.assert_allclose(converted, direct, atol=1e-6)  # same weights through Orbax: same numbers
  with pytest.raises(FileExistsError, match="nothing is overwritten"):
    wan.convert(folder, workdir)
