"""Bad input gives one clear error (what was wrong, what is valid) before any work or write.

Each case is one row of CASES (Pipeline arguments, encode/decode inputs) or TOOL_CASES (tool flags);
the issue's count of clear / unclear / silent cases is re-run by this file: every kept case must be clear.
The workdir is written without training (init params, as tests/test_restore.py does).
"""

import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import xla_flags

from sora_jax.errors import ClearError
from sora_jax.models import factory
from sora_jax.models import vae as vae_lib
from sora_jax.sharding import partitioning
from sora_jax.training import checkpointing, dit_step, vae_step
from sora_jax.training.optimizer import make_optimizer

REPO = pathlib.Path(__file__).resolve().parent.parent
SAVED = REPO / "tests" / "data" / "pre_refactor_workdir"


def _write_checkpoint(workdir, init_fn, step):
  state = partitioning.unbox(jax.jit(init_fn)(jax.random.key(step)))  # jitted: op by op, init runs the forward
  with checkpointing.Checkpointer(workdir) as ckpt:
    ckpt.save(step, state)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad") / "run"
  shutil.copytree(SAVED, root)
  vae_cfg = checkpointing.load_config_from_workdir(root / "vae")
  data = vae_cfg.data
  vae = vae_lib.CausalVAE(vae_cfg.vae)
  shape = (1, data.num_frames, data.height, data.width, 3)
  ema = vae_cfg.train.ema_decay > 0
  _write_checkpoint(root / "vae", vae_step.make_init_fn(vae, make_optimizer(vae_cfg.train), shape, ema=ema), 1)
  channels = vae_cfg.vae.latent_channels
  vae_lib.save_latent_stats(str(root / "vae"), {"mean": np.zeros(channels), "std": np.ones(channels)})
  dit_cfg = checkpointing.load_config_from_workdir(root / "dit")
  denoiser = factory.build_denoiser(
    dit_cfg, vae_lib.latent_shape(vae_cfg.vae, data.num_frames, data.height, data.width)
  )
  _write_checkpoint(root / "dit", dit_step.make_init_fn(denoiser, make_optimizer(dit_cfg.train), ema=True), 1)
  return root


@pytest.fixture(scope="module")
def pipe(workdir):
  from sora_jax import Pipeline

  return Pipeline.from_pretrained(str(workdir))


PROMPT = ["a red circle moving left"]
# (case id, call(pipe), regex the message must match: the bad value and what is valid)
CASES = [
  ("width=0", lambda p: p(PROMPT, width=0), r"width=0 must be >= 1"),
  ("num_frames=0", lambda p: p(PROMPT, num_frames=0), r"num_frames=0 must be >= 1"),
  ("num_steps=0", lambda p: p(PROMPT, num_steps=0), r"num_steps=0 must be >= 1"),
  ("num_steps=2.5", lambda p: p(PROMPT, num_steps=2.5), r"num_steps=2.5 must be a positive integer"),
  ("height=-32", lambda p: p(PROMPT, height=-32), r"height=-32 must be >= 1"),
  (
    "height=33",
    lambda p: p(PROMPT, height=33),
    r"9x33x32 .*cannot be produced: height must be a positive multiple .*Nearest valid sizes: 9x32x32",
  ),
  (
    "num_frames=4",
    lambda p: p(PROMPT, num_frames=4),
    r"4x32x32 .*frames must be 1\+4k.*Nearest valid sizes: 1x32x32, 5x32x32",
  ),
  ("guidance_scale=nan", lambda p: p(PROMPT, guidance_scale=math.nan), r"guidance_scale=nan must be >= 0 and finite"),
  ("guidance_scale=-1", lambda p: p(PROMPT, guidance_scale=-1.0), r"guidance_scale=-1.0 must be >= 0 and finite"),
  ("guidance_scale='4'", lambda p: p(PROMPT, guidance_scale="4"), r"guidance_scale='4' must be a number"),
  ("seed='x'", lambda p: p(PROMPT, seed="x"), r"seed='x' must be an integer"),
  ("prompts=[]", lambda p: p([]), r"prompts is empty"),
  ("prompt=3", lambda p: p([3]), r"prompts must be strings; got 3"),
  ("prompt=''", lambda p: p([""]), r"a prompt is empty: .*expand_prompts=False"),
  ("prompt=emoji", lambda p: p(["🙂🙂"]), r"prompt '🙂🙂' names nothing the prompt expander knows"),
  ("prompt=unknown words", lambda p: p(["quantum banana"]), r"names nothing the prompt expander knows"),
  ("output_type='png'", lambda p: p(PROMPT, output_type="png"), r"output_type='png' is not one of"),
  (
    "encode float [0,1]",
    lambda p: p.encode(np.full((1, 9, 32, 32, 3), 0.5, np.float32)),
    r"must be uint8 .*got dtype float32. Convert",
  ),
  ("encode 4-D", lambda p: p.encode(np.zeros((9, 32, 32, 3), np.uint8)), r"must be uint8 \[B, T, H, W, 3\]; got shape"),
  ("encode T=8", lambda p: p.encode(np.zeros((1, 8, 32, 32, 3), np.uint8)), r"T must be 1\+4k frames"),
  ("decode NaN", lambda p: p.decode(np.full((1, 3, 4, 4, 16), np.nan, np.float32)), r"NaN/Inf values; decode needs"),
  ("decode wrong channels", lambda p: p.decode(np.zeros((1, 3, 4, 4, 7), np.float32)), r"latents must be numbers"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pipeline_rejects_bad_input_clearly(pipe, call, match):
  with pytest.raises(ClearError, match=match) as error:
    call(pipe)
  assert isinstance(error.value, ValueError)  # callers catching ValueError still do


def _tool(*args, cwd=REPO):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1))
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(result):
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode != 0 and lines and lines[-1].startswith("error: "), result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  return lines[-1]


def test_sample_with_a_mistyped_workdir_creates_nothing(tmp_path):
  typo = tmp_path / "runs" / "dmeo"
  line = _one_error_line(_tool("tools/sample.py", f"--workdir={typo}", "--prompt=a red circle moving left"))
  assert f"--workdir={str(typo)!r} does not exist" in line and not typo.exists()


def test_sample_with_an_unreadable_prompt_names_it(workdir, tmp_path):
  out = tmp_path / "out"
  line = _one_error_line(_tool("tools/sample.py", f"--workdir={workdir}", "--prompt=quantum banana", f"--out={out}"))
  assert "'quantum banana' names nothing" in line and not out.exists()


def test_train_vae_with_zero_steps_fails_before_building_data(tmp_path):
  data_dir = tmp_path / "data"
  result = _tool(
    "tools/train_vae.py",
    "--config=configs/vae/demo.py",
    f"--workdir={tmp_path / 'vae'}",
    f"--config.data.data_dir={data_dir}",
    "--config.train.steps=0",
  )
  assert "train.steps=0: the number of optimizer steps must be a positive integer" in _one_error_line(result)
  assert not data_dir.exists() and not (tmp_path / "vae").exists()


def test_evaluate_with_a_mistyped_workdir_creates_nothing(tmp_path):
  typo = tmp_path / "nope"
  line = _one_error_line(_tool("tools/evaluate.py", f"--workdir={typo}"))
  assert "does not exist" in line and not typo.exists()
