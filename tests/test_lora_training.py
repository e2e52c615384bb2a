"""LoRA fine-tuning end to end with the real tools: a tiny base run (tools/train_vae.py + train_dit.py),
then tools/train_dit.py --config.lora.rank=4 --config.init_from=<base>: only adapters are checkpointed,
the run resumes, the Pipeline restores base + adapters, and load_lora / set_lora_scale / fuse_lora agree."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = [
  "--config.data.num_train=8",
  "--config.data.num_validation=4",
  "--config.data.num_test=4",
  "--config.data.batch_size=4",
  "--config.data.num_frames=9",
]
TINY_VAE = [
  "--config.vae.base_channels=8",
  "--config.vae.channel_multipliers=(1,1,1,1)",
  "--config.vae.num_res_blocks=1",
  "--config.vae.mid_attention=False",
  "--config.vae_loss.latent_stats_batches=1",
  "--config.train.steps=1",
]
TINY_DIT = [
  "--config.dit.depth=1",
  "--config.dit.variant=",
  "--config.train.eval_batches=1",
  "--config.sample.num_steps=1",
]


def _run_tool(*args, ok=True):
  env = dict(os.environ, XLA_FLAGS="")  # one CPU device, as a user has
  result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
  if ok:
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


def _lora_args(root, steps):
  return [
    "tools/train_dit.py",
    "--config=configs/dit/lora_demo.py",
    f"--workdir={root / 'lora'}",
    f"--config.init_from={root / 'dit'}",
    f"--config.vae_workdir={root / 'vae'}",
    f"--config.data.data_dir={root / 'data'}",
    *DATA,
    *TINY_DIT,
    "--config.lora.rank=4",
    f"--config.train.steps={steps}",
    "--config.train.checkpoint_every=2",
    "--config.train.log_every=1",
    "--config.train.warmup_steps=0",
    "--config.train.max_minutes=0",
  ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("lora")
  data = DATA + [f"--config.data.data_dir={root / 'data'}"]
  _run_tool("tools/train_vae.py", "--config=configs/base.py", f"--workdir={root / 'vae'}", *data, *TINY_VAE)
  base = [
    f"--workdir={root / 'dit'}",
    *data,
    *TINY_DIT,
    "--config.train.steps=2",
    f"--config.vae_workdir={root / 'vae'}",
  ]
  _run_tool("tools/train_dit.py", "--config=configs/dit/demo.py", *base)
  _run_tool(*_lora_args(root, steps=2))
  return root


def test_checkpoints_hold_only_adapters_and_resume(runs):
  from sora_jax.training import checkpointing

  config = json.loads((runs / "lora" / "config.json").read_text())
  assert config["lora"]["rank"] == 4 and config["init_from"] == str(runs / "dit")  # the pointer to the base
  with checkpointing.Checkpointer(str(runs / "lora")) as ckpt:
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
  assert os.path.exists(runs / "lora" / "lora" / "pytorch_lora_weights.safetensors")
  # resume: two more steps from the step-2 checkpoint
  _run_tool(*_lora_args(runs, steps=4))
  records = [json.loads(line) for line in (runs / "lora" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # steps 3, 4 continue the run
  with checkpointing.Checkpointer(str(runs / "lora")) as ckpt:
    assert ckpt.latest_step() == 4


def test_pipeline_restores_base_with_adapters(runs):
  from sora_jax import Pipeline

  prompts = ["an orange diamond moving left", "a red circle moving up"]
  args = dict(num_steps=2, seed=0, output_type="float")
  base = Pipeline.from_pretrained(str(runs / "dit"))
  pipe = Pipeline.from_pretrained(str(runs / "lora"))
  assert list(pipe.loras) == ["lora"]
  with_lora = pipe(prompts, **args)
  base_out = base(prompts, **args)
  assert np.abs(with_lora - base_out).max() > 1e-4  # the trained adapters change the samples
  pipe.fuse_lora()
  # fused kernels vs the separate low-rank path: float32 rounding of the same sums, through 2 sampler steps + VAE
  np.testing.assert_allclose(pipe(prompts, **args), with_lora, atol=1e-4)
  pipe.unfuse_lora()
  pipe.set_lora_scale(0.0)
  np.testing.assert_allclose(pipe(prompts, **args), base_out, atol=1e-6)  # scale 0: the base model
  # the exported PEFT file, loaded onto the base pipeline, is the same LoRA
  base.load_lora(str(runs / "lora" / "lora"), scale=1.0)
  np.testing.assert_allclose(base(prompts, **args), with_lora, atol=1e-5)
  with pytest.raises(ValueError, match="is loaded already"):
    base.load_lora(str(runs / "lora" / "lora"))
  with pytest.raises(ValueError, match="no LoRA named"):
    base.set_lora_scale(0.5, name="nope")


def test_lora_run_needs_a_base(runs, tmp_path):
  args = _lora_args(runs, steps=1)
  args = [a for a in args if not a.startswith(("--config.init_from", "--workdir"))]
  result = _run_tool(*args, f"--workdir={tmp_path / 'x'}", "--config.init_from=", ok=False)
  assert result.returncode != 0 and "set --config.init_from" in result.stderr
