"""LoRA fine-tuning end to end with the real tools (issue 18), on the session's tiny trained workdir (conftest.py).

tools/train_dit.py --config=configs/dit/lora_demo.py --config.lora.rank=4 --config.init_from=<that DiT>: only
adapters are checkpointed (plus the config pointing to the base), the run resumes, the Pipeline restores
base + adapters, and load_lora / set_lora_scale / fuse_lora agree.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA, REPO, TINY_DIT, xla_flags

pytestmark = pytest.mark.slow


def _run_lora_tool_expecting_failure(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1))
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)


def _lora_args(root, lora_dir, steps):
  return [
    "tools/train_dit.py",
    "--config=configs/dit/lora_demo.py",
    f"--workdir={lora_dir}",
    f"--config.init_from={root / 'dit'}",
    f"--config.vae_workdir={root / 'vae'}",
    f"--config.data.data_dir={root / 'data'}",
    *DATA,
    *TINY_DIT,
    "--config.sample.num_steps=1",
    "--config.lora.rank=4",
    f"--config.train.steps={steps}",
    "--config.train.checkpoint_every=2",
    "--config.train.log_every=1",
    "--config.train.warmup_steps=0",
    "--config.train.max_minutes=0",
  ]


@pytest.fixture(scope="module")
def runs(workdir, run_tool, tmp_path_factory):
  """(base workdir, LoRA workdir): a 2-step LoRA run (the lora_demo config) on the session's tiny DiT."""
  lora_dir = tmp_path_factory.mktemp("lora") / "run"
  run_tool(*_lora_args(workdir, lora_dir, steps=2))
  return workdir, lora_dir


def test_lora_checkpoints_hold_only_adapters_and_resume(runs, run_tool):
  from sora_jax.training import checkpointing

  runs, lora_dir = runs
  config = json.loads((lora_dir / "config.json").read_text())
  assert config["lora"]["rank"] == 4 and config["init_from"] == str(runs / "dit")  # the pointer to the base
  with checkpointing.Checkpointer(str(lora_dir)) as ckpt:
    assert ckpt.latest_step() == 2
    saved = ckpt.saved_tree(2)
  leaves = []

  def walk(tree, path=()):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, path + (k,))
      else:
        leaves.append(path + (k,))

  walk(saved["params"])
  assert leaves and all(p[-1] in ("lora_A", "lora_B") for p in leaves), leaves[:5]
  assert os.path.exists(lora_dir / "lora" / "pytorch_lora_weights.safetensors")
  # resume: two more steps from the step-2 checkpoint
  run_tool(*_lora_args(runs, lora_dir, steps=4))
  records = [json.loads(line) for line in (lora_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # steps 3, 4 continue the run
  with checkpointing.Checkpointer(str(lora_dir)) as ckpt:
    assert ckpt.latest_step() == 4


def test_lora_pipeline_restores_base_with_adapters(runs):
  from sora_jax import Pipeline

  runs, lora_dir = runs
  prompts = ["an orange diamond moving left", "a red circle moving up"]
  args = dict(num_steps=2, seed=0, output_type="float")
  base = Pipeline.from_pretrained(str(runs))
  pipe = Pipeline.from_pretrained(str(lora_dir))
  assert list(pipe.loras) == ["run"]
  base_out = base(prompts, **args)
  assert np.abs(pipe(prompts, **args) - base_out).max() > 0  # the adapters are applied
  # A 2-step run on a 3-step base barely moves the samples (its adaLN gates are still near zero):
  # scale the adapters up so fused / unfused / file agree on a visible change, not on float noise.
  pipe.set_lora_scale(1000.0)
  big = pipe(prompts, **args)
  assert np.abs(big - base_out).max() > 1e-3
  pipe.fuse_lora()
  # fused kernels vs the separate low-rank path: float32 rounding of the same sums, through 2 sampler steps + VAE
  np.testing.assert_allclose(pipe(prompts, **args), big, atol=1e-4)
  pipe.unfuse_lora()
  pipe.set_lora_scale(0.0)
  np.testing.assert_allclose(pipe(prompts, **args), base_out, atol=1e-6)  # scale 0: the base model
  # the exported PEFT file, loaded onto the base pipeline, is the same LoRA
  base.load_lora(str(lora_dir / "lora"), scale=1000.0)
  np.testing.assert_allclose(base(prompts, **args), big, atol=1e-4)
  with pytest.raises(ValueError, match="is loaded already"):
    base.load_lora(str(lora_dir / "lora"))
  with pytest.raises(ValueError, match="no LoRA named"):
    base.set_lora_scale(0.5, name="nope")


def test_lora_run_needs_a_base(runs, tmp_path):
  args = _lora_args(runs[0], tmp_path / "x", steps=1)
  args = [a for a in args if not a.startswith(("--config.init_from", "--workdir"))]
  result = _run_lora_tool_expecting_failure(*args, f"--workdir={tmp_path / 'x'}", "--config.init_from=")
  assert result.returncode != 0 and "set --config.init_from" in result.stderr
