"""tools/train_vae.py and tools/train_dit.py end to end on 2 and 8 CPU devices, periodic samples and evals included.

The equivalence tests check the train step on every mesh; these run the tools themselves (restore of the
VAE, latent cache, eval, the compiled sampler under the training mesh, checkpoints), which is where a
DiT run on 2+ devices used to crash at its first sample (the VAE restored onto one device).
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATA = [
  "--config.data.num_train=8",
  "--config.data.num_validation=8",
  "--config.data.num_test=8",
  "--config.data.batch_size=8",
  "--config.data.num_frames=5",
]
TINY_VAE = [
  "--config.vae.base_channels=4",
  "--config.vae.channel_multipliers=(1,1,1,1)",
  "--config.vae.num_res_blocks=1",
  "--config.vae.mid_attention=False",
  "--config.vae_loss.latent_stats_batches=1",
  "--config.train.steps=2",
  "--config.train.sample_every=1",
  "--config.train.eval_every=1",
  "--config.train.eval_batches=1",
  "--eval_clips=8",
  "--num_reconstructions=2",
]
TINY_DIT = [
  "--config.dit.depth=1",
  "--config.dit.variant=",
  "--config.dit.hidden_size=32",
  "--config.dit.num_heads=2",
  "--config.train.steps=3",
  "--config.train.eval_every=2",
  "--config.train.sample_every=2",
  "--config.train.eval_batches=1",
  "--config.sample.num_steps=1",
]
# Meshes (data, fsdp, context, tensor) that use every device; the 8-device DiT mesh splits every axis.
MESHES = {
  2: {"vae": "(2,1,1,1)", "dit": "(1,1,2,1)"},
  8: {"vae": "(4,2,1,1)", "dit": "(2,1,2,2)"},
}


def run_tool(devices: int, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices))
  result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
  tail = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  assert result.returncode == 0, f"{args[0]} on {devices} devices failed:\n{tail}"
  return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 8])
def test_vae_then_dit_tools_with_samples_and_evals(devices, data_dir, tmp_path):
  data = DATA + [f"--config.data.data_dir={data_dir}"]
  vae_dir, dit_dir = tmp_path / "vae", tmp_path / "dit"
  run_tool(
    devices,
    "tools/train_vae.py",
    "--config=configs/base.py",
    f"--workdir={vae_dir}",
    f"--config.mesh.shape={MESHES[devices]['vae']}",
    *data,
    *TINY_VAE,
  )
  assert sorted(p.name for p in (vae_dir / "samples").glob("recon_*.png")) == ["recon_000001.png", "recon_000002.png"]
  assert json.loads((vae_dir / "eval_test.json").read_text())["num_clips"] == 8

  run_tool(
    devices,
    "tools/train_dit.py",
    "--config=configs/dit/demo.py",
    f"--workdir={dit_dir}",
    f"--config.vae_workdir={vae_dir}",
    f"--config.mesh.shape={MESHES[devices]['dit']}",
    *data,
    *TINY_DIT,
  )
  # A sample at step 2 (periodic, under the training mesh) and at the end; evals at 2 and 3.
  assert sorted(p.name for p in (dit_dir / "samples").glob("*.gif")) == ["step_000002.gif", "step_000003.gif"]
  records = [json.loads(line) for line in (dit_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "eval/loss" in r] == [2, 3]
