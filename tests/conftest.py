"""Test set-up: 8 virtual CPU devices (for sharding tests) before JAX initialises; the tiny trained workdir.

`workdir` (session): made once by tools/train_vae.py and tools/train_dit.py (a few steps each,
9-frame 32x32 clips, configs/dit/demo.py so it also trains with given frames), laid out like
`make demo`'s runs/demo (vae/ + dit/); `pipe`: its Pipeline. Shared by the Pipeline, sampling
and prompting-with-images tests so the suite trains it once.
"""

import fcntl
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

# Every program the suite compiles goes through XLA:CPU's LLVM backend at optimisation level 1 instead of the
# default 2: same HLO, same fusions, same buffers; LLVM spends less time on the kernels of programs that run for
# milliseconds. Measured on the conftest tiny VAE (2-core Xeon under load): init compile 45 s -> 8 s, train step
# 32 s -> 19 s, with bit-identical initial params and step metrics equal to the last float bit or two (one KL
# value differed in its 7th significant digit). Level 0 would save more but changes initial params; users keep 2.
# SORA_JAX_TEST_XLA_FLAGS= (empty) runs the suite with XLA's defaults.
TEST_XLA_FLAGS = os.environ.get("SORA_JAX_TEST_XLA_FLAGS", "--xla_backend_optimization_level=1")


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS of a suite process on `devices` virtual CPU devices (1: one CPU device, as a user has)."""
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network at run time, ever

# One XLA compilation cache for this test run, shared by the xdist workers and every tool they start (they inherit
# the environment): the suite compiles the same tiny programs many times over (each tool run, each test file's
# process). It starts empty every run (the suite's time budget holds cold), and is deleted at the end.
# The executable read back is the one XLA built, so the numbers cannot differ from a fresh compile.
_OWN_XLA_CACHE = not os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("JAX_COMPILATION_CACHE_DIR")
if _OWN_XLA_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sora_jax_test_xla_cache_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = [
  "--config.data.num_train=16",
  "--config.data.num_validation=8",
  "--config.data.num_test=8",
  "--config.data.batch_size=4",
  "--config.data.num_frames=9",
]
TINY_VAE = [
  "--config.vae.base_channels=8",
  "--config.vae.channel_multipliers=(1,1,1,1)",
  "--config.vae.num_res_blocks=1",
  "--config.vae.mid_attention=False",
  "--config.vae_loss.latent_stats_batches=1",
  "--config.train.steps=2",
]
TINY_DIT = [
  "--config.dit.depth=1",
  "--config.dit.variant=",
  "--config.train.steps=3",
  "--config.train.eval_batches=1",
  "--config.sample.num_steps=2",
]


def _run_tool(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1))  # one CPU device, as a user has
  result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


@pytest.fixture(scope="session")
def run_tool():
  """`run_tool("tools/x.py", *flags)`: runs a tool on one CPU device, asserting success; returns the result."""
  return _run_tool


def _workdir_base(tmp_path_factory) -> pathlib.Path:
  """The folder common to the controller and all xdist workers of this run (a worker's basetemp is inside it)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _build_workdir(base: pathlib.Path, run=_run_tool) -> pathlib.Path:
  """Trains the tiny workdir under `base` unless done before; the file lock makes every other process wait."""
  root = base / "tiny_demo_workdir"
  with open(base / "tiny_demo_workdir.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / "done").exists():
      data = DATA + [f"--config.data.data_dir={root / 'data'}"]
      run("tools/train_vae.py", "--config=configs/base.py", f"--workdir={root / 'vae'}", *data, *TINY_VAE)
      run(
        "tools/train_dit.py",
        "--config=configs/dit/demo.py",
        f"--workdir={root / 'dit'}",
        *data,
        *TINY_DIT,
        f"--config.vae_workdir={root / 'vae'}",
      )
      (root / "done").write_text("ok\n")
  return root


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
  """Trained once per test run: pytest-xdist workers share it through a file lock in their common temporary
  folder (under xdist the controller starts training it before the workers start: see pytest_configure).
  $SORA_JAX_TINY_WORKDIR names one trained before with these settings, to reuse instead."""
  if os.environ.get("SORA_JAX_TINY_WORKDIR"):
    return pathlib.Path(os.environ["SORA_JAX_TINY_WORKDIR"])
  return _build_workdir(_workdir_base(tmp_path_factory))


@pytest.fixture(scope="session")
def pipe(workdir):
  from sora_jax import Pipeline

  return Pipeline.from_pretrained(str(workdir))


# ---------------------------------------------------------------- scheduling under pytest-xdist (-n 2 --dist loadfile)
# Test files that use the shared `workdir` / `pipe` fixtures above.
WORKDIR_FILES = (
  "test_web_app.py",
  "test_pipeline.py",
  "test_pipeline_conditioning.py",
  "test_lora_training.py",
  "test_cache_adherence.py",
  "test_sizes.py",
)
# Files handed out first, longest first (seconds measured in the full suite; the rest follow in collection order),
# so that no long file starts last while the other worker has nothing left; the workdir files come after a few
# minutes of other work, by when the controller has trained the workdir in the background.
FIRST_FILES = (
  "test_multi_device_tools.py",
  "test_photo_videos.py",
  "test_vae_training.py",
  "test_fused.py",
  "test_benchmark_tools.py",
  "test_web_app.py",
  "test_pipeline_conditioning.py",
  "test_pipeline.py",
  "test_sizes.py",
  "test_lora_training.py",
  "test_bad_inputs.py",
  "test_sharding_equivalence_vae.py",
  "test_sharding_equivalence.py",
  "test_wan_finetune.py",
  "test_chaos.py",
  "test_restore.py",
  "test_conditioning.py",
  "test_vae.py",
  "test_cache_adherence.py",
  "test_dit_step.py",
  "test_wan_pipeline.py",
)
_background = {}


def _uses_workdir(args) -> bool:
  """Whether a run of these command-line paths includes a file that uses the shared workdir."""
  paths = [a.split("::")[0] for a in args if not a.startswith("-")] or ["tests"]
  return any(os.path.isdir(p) or os.path.basename(p) in WORKDIR_FILES for p in paths)


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set up the run's base temporary folder
def pytest_configure(config):
  if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
    return  # an xdist worker, or no xdist: the fixture trains the workdir when a test first asks for it
  config.option.loadscopereorder = False  # hand out files in FIRST_FILES order, not by their number of tests
  if os.environ.get("SORA_JAX_TINY_WORKDIR") or not _uses_workdir(config.args):
    return
  base = config._tmp_path_factory.getbasetemp()  # the workers' basetemps are inside it (xdist)

  def run(*args):
    if _background.get("stop"):
      raise RuntimeError("the run has ended")
    env = dict(os.environ, XLA_FLAGS=xla_flags(1))
    cmd = [sys.executable, *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _background["proc"] = proc
    if proc.wait():  # the first worker that needs the workdir trains it again and reports the failure
      raise RuntimeError(f"{args[0]} exited with {proc.returncode}")

  def build():
    try:
      _build_workdir(base, run)
    except RuntimeError:
      pass

  _background["thread"] = threading.Thread(target=build, name="tiny-workdir", daemon=True)
  _background["thread"].start()


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(FIRST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_unconfigure(config):
  thread = _background.get("thread")
  if thread is not None and thread.is_alive():  # the run ended first (-x, Ctrl-C): stop the build
    _background["stop"] = True
    if "proc" in _background:
      _background["proc"].terminate()
    thread.join()
  if _OWN_XLA_CACHE:  # only the process that made it (workers inherit it)
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
