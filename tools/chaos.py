r"""Chaos check: kill a tiny training run at random points, resume it, and compare with an uninterrupted run.

  python tools/chaos.py --kills=5 --seed=0                    # kill -9 five times, SIGTERM once, NaN cases
  python tools/chaos.py --kills=2 --cases=kill,sigterm,nan    # what tests/test_chaos.py runs (~1 min)

The run is real (a small Flax MLP on the project's training loop: sharded jit, real Orbax async
checkpoints every 2 steps, the grain pipeline with its saved position, the step rng derived from
the step) but tiny, so each start costs seconds. Cases:

  kill     the run is started, `kill -9`ed after a random number of steps (and a random fraction of a
           step, so some kills land in an async checkpoint write) --kills times, then run to the end;
           its final params, optimizer state and EMA must equal the uninterrupted run's bit for bit.
  sigterm  SIGTERM after a random step: exit code 75, one `stopped:` line, a checkpoint at the step it
           stopped after; the resumed run ends bit-identical to the uninterrupted one.
  nan      a batch of NaNs at step 3: with train.nonfinite=stop the run exits 1 with one `error:` line
           and its checkpoints are finite; with =skip it finishes, the step counted as skipped.

Prints one line per case and `chaos: all N cases passed` (exit 0), or what differed (exit 1).
(`--role=worker` is the training run itself, started by the controller.)
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from sora_jax import hardware

_ROLE = flags.DEFINE_enum("role", "controller", ["controller", "worker"], "controller (default) or the run itself.")
_KILLS = flags.DEFINE_integer("kills", 3, "kill -9s of the interrupted run.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill points.")
_CASES = flags.DEFINE_list("cases", ["kill", "sigterm", "nan"], "Which cases to run: kill, sigterm, nan.")
_STEPS = flags.DEFINE_integer("steps", 16, "Training steps of the tiny run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs go (default: a temporary directory, removed).")
# worker flags
_NAN_AT = flags.DEFINE_integer("nan_at", 0, "worker: feed a batch of NaNs at this step (0 = never).")
_NONFINITE = flags.DEFINE_string("nonfinite", "skip", "worker: train.nonfinite.")
_STEP_SLEEP = flags.DEFINE_float("step_sleep", 0.05, "worker: seconds each batch takes to load (room for signals).")

FINAL = "final_state.npz"
PROGRESS = "progress.txt"
BATCH, FEATURES = 8, 6


# ------------------------------------------------------------------------------ the worker (a tiny real run)


def _worker(workdir: str) -> None:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from configs import base
  from sora_jax.data import pipeline
  from sora_jax.training import loop, optimizer, train_state

  class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
      dense = lambda n, names: nn.Dense(
        n, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
      )
      return dense(4, ("mlp", "embed"))(nn.gelu(dense(16, ("embed", "mlp"))(x)))

  config = base.get_config()
  config.data.batch_size = BATCH
  config.mesh.shape = (-1, 1, 1, 1)
  config.train.update(
    steps=_STEPS.value,
    warmup_steps=2,
    learning_rate=3e-2,
    log_every=1,
    eval_every=0,
    sample_every=0,
    checkpoint_every=2,
    keep_checkpoints=2,
    ema_decay=0.9,
    nonfinite=_NONFINITE.value,
  )
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(64, FEATURES)).astype(np.float32)
  source = [{"x": x, "y": np.tanh(2 * x[:4]), "index": np.int32(i)} for i, x in enumerate(xs)]
  model, tx = Mlp(), optimizer.make_optimizer(config.train)
  progress_path = os.path.join(workdir, PROGRESS)

  class Slow:
    """The grain iterator, a little slower (room for a signal mid-run), writing how many batches it gave."""

    def __init__(self):
      self.it = pipeline.make_iterator(source, batch_size=BATCH, seed=1, prefetch=2)
      self.given = None

    def __next__(self):
      batch = next(self.it)
      time.sleep(_STEP_SLEEP.value)
      self.given = (self.given or 0) + 1
      with open(progress_path, "a") as f:
        f.write(f"{self.given}\n")
      return batch

    def get_state(self):
      return self.it.get_state()

    def set_state(self, state):
      self.it.set_state(state)

    def close(self):
      self.it.close()

  def init_fn(key):
    return train_state.create_train_state(model.init(key, jnp.zeros((1, FEATURES)))["params"], tx)

  def train_step(state, batch, key):
    x = batch["x"] + 0.01 * jax.random.normal(key, batch["x"].shape)
    if _NAN_AT.value:  # the batch of step nan_at (0-based step state.step) becomes NaN
      x = jnp.where(state.step + 1 == _NAN_AT.value, jnp.nan, x)

    def loss_fn(params):
      return jnp.mean((model.apply({"params": params}, x) - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads, tx, config.train.ema_decay), {"loss": loss}

  state = loop.train(config=config, workdir=workdir, init_fn=init_fn, train_step=train_step, make_iterator=Slow)
  leaves = jax.tree.leaves(jax.device_get(state))
  np.savez(os.path.join(workdir, FINAL), *[np.asarray(x) for x in leaves])


# ------------------------------------------------------------------------------ the controller


def _command(workdir: str) -> list[str]:
  return [sys.executable, os.path.abspath(__file__), "--role=worker", f"--workdir={workdir}", f"--steps={_STEPS.value}"]


def _env() -> dict:
  return dict(os.environ, XLA_FLAGS=hardware.xla_flags_with_device_count(1), PYTHONUNBUFFERED="1")


def _start(workdir: str, *extra: str) -> subprocess.Popen:
  return subprocess.Popen(
    _command(workdir) + list(extra), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


def _run(workdir: str, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run(_command(workdir) + list(extra), env=_env(), capture_output=True, text=True, timeout=600)


def _steps_given(workdir: str) -> int:
  path = os.path.join(workdir, PROGRESS)
  if not os.path.exists(path):
    return 0
  lines = open(path).read().split()
  return int(lines[-1]) if lines else 0


def _wait_for_step(proc: subprocess.Popen, workdir: str, step: int, timeout: float = 300.0) -> bool:
  """Waits until the run has taken `step` batches since its start; False if it ended first."""
  start_lines = _count_lines(workdir)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      return False
    if _count_lines(workdir) - start_lines >= step:
      return True
    time.sleep(0.01)
  return False


def _count_lines(workdir: str) -> int:
  path = os.path.join(workdir, PROGRESS)
  return len(open(path).read().split()) if os.path.exists(path) else 0


def _final(workdir: str):
  import numpy as np

  with np.load(os.path.join(workdir, FINAL)) as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def _same(a: str, b: str) -> str:
  """'' when the two runs ended bit-identical, else what differs."""
  import numpy as np

  x, y = _final(a), _final(b)
  if len(x) != len(y):
    return f"{len(x)} vs {len(y)} arrays"
  bad = [i for i, (u, v) in enumerate(zip(x, y)) if u.shape != v.shape or not np.array_equal(u, v)]
  return f"arrays {bad} differ" if bad else ""


def _checkpoint_steps(workdir: str) -> list[int]:
  root = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def _case_kill(root: str, reference: str, rnd: random.Random) -> tuple[bool, str]:
  workdir = os.path.join(root, "killed")
  kills = []
  for _ in range(_KILLS.value):
    proc = _start(workdir)
    step = rnd.randint(1, max(1, _STEPS.value // 2))
    if _wait_for_step(proc, workdir, step):
      time.sleep(rnd.uniform(0, 0.05))  # anywhere within a step, sometimes during an async save
      proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills.append(f"{step}+")
  result = _run(workdir)
  if result.returncode != 0:
    return False, f"the resumed run failed (exit {result.returncode}): {result.stderr[-400:]}"
  diff = _same(workdir, reference)
  return not diff, f"{len(kills)} kill -9s after steps {kills} (since each restart); resumed {diff or 'bit-identical'}"


def _case_sigterm(root: str, reference: str, rnd: random.Random) -> tuple[bool, str]:
  workdir = os.path.join(root, "sigterm")
  proc = _start(workdir)
  step = rnd.randint(3, max(3, _STEPS.value - 4))
  if not _wait_for_step(proc, workdir, step):
    return False, f"the run ended before step {step}: {proc.communicate()[1][-400:]}"
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  stopped_after = _steps_given(workdir)
  lines = [line for line in err.splitlines() if line.startswith("stopped:")]
  saved = _checkpoint_steps(workdir)
  if proc.returncode != 75 or len(lines) != 1 or not saved or saved[-1] != stopped_after:
    return False, f"exit {proc.returncode}, stop lines {lines}, checkpoints {saved}, batches taken {stopped_after}"
  result = _run(workdir)
  diff = _same(workdir, reference) if result.returncode == 0 else f"resume failed: {result.stderr[-400:]}"
  what = f"SIGTERM after step {step}: stopped after step {stopped_after}, exit 75, checkpoint {saved[-1]}"
  return not diff, f"{what}; resumed {diff or 'bit-identical'}"


def _case_nan(root: str, reference: str, rnd: random.Random) -> tuple[bool, str]:
  del reference, rnd
  import numpy as np

  stop_dir, skip_dir = os.path.join(root, "nan_stop"), os.path.join(root, "nan_skip")
  stopped = _run(stop_dir, "--nan_at=5", "--nonfinite=stop")
  errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
  if stopped.returncode != 1 or len(errors) != 1 or _checkpoint_steps(stop_dir) != [2, 4]:
    return False, f"stop: exit {stopped.returncode}, {errors}, checkpoints {_checkpoint_steps(stop_dir)}"
  skipped = _run(skip_dir, "--nan_at=5")
  if skipped.returncode != 0:
    return False, f"skip: exit {skipped.returncode}: {skipped.stderr[-400:]}"
  finite = all(np.all(np.isfinite(x)) for x in _final(skip_dir) if x.dtype.kind == "f")
  records = [json.loads(line) for line in open(os.path.join(skip_dir, "metrics.jsonl"))]
  counted = [r["step"] for r in records if r.get("nonfinite")]
  ok = finite and counted == [5]
  return ok, f"NaN batch at step 5: stop -> exit 1, one error line, checkpoints [2, 4]; skip -> skipped {counted}"


CASES = {"kill": _case_kill, "sigterm": _case_sigterm, "nan": _case_nan}


def _controller() -> int:
  unknown = [c for c in _CASES.value if c not in CASES]
  if unknown:
    print(f"error: --cases {unknown} unknown; valid: {sorted(CASES)}", file=sys.stderr)
    return 2
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="chaos_")
  rnd = random.Random(_SEED.value)
  try:
    reference = os.path.join(root, "uninterrupted")
    result = _run(reference)
    if result.returncode != 0:
      print(f"chaos: the uninterrupted run failed:\n{result.stderr[-2000:]}", file=sys.stderr)
      return 1
    failed = 0
    for name in _CASES.value:
      ok, what = CASES[name](root, reference, rnd)
      failed += not ok
      print(f"chaos {name}: {'ok' if ok else 'FAILED'}: {what}", flush=True)
    n = len(_CASES.value)
    print(f"chaos: all {n} cases passed" if not failed else f"chaos: {failed} of {n} cases FAILED")
    return 1 if failed else 0
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(root, ignore_errors=True)


def main(argv):
  del argv
  if _ROLE.value == "worker":
    from sora_jax.errors import ClearError

    try:
      _worker(_WORKDIR.value)
    except ClearError as e:
      label = "stopped" if e.exit_code == 75 else "error"
      print(f"{label}: {e.one_line()}", file=sys.stderr, flush=True)
      sys.exit(e.exit_code)
    return
  sys.exit(_controller())


if __name__ == "__main__":
  app.run(main)
