"""The one training loop (VAE and DiT alike): sharded init, resume, jitted steps, logs, checkpoints.

A training tool supplies pure functions; this module does the plumbing:

    state = train(
        config=config, workdir=workdir,
        init_fn=init_fn,            # rng -> state pytree whose params carry logical annotations
        train_step=train_step,      # (state, batch, rng) -> (state, {"loss": ..., ...})
        make_iterator=make_iter,    # () -> iterator of numpy batch dicts with get_state/set_state
        eval_fn=eval_fn,            # optional (state, step) -> {"name": float}
        sample_fn=sample_fn)        # optional (state, step, writer) -> None

What it does, in order:
1. mesh from `config.mesh` (or the one given), logical rules, divisibility checks;
2. shardings derived from `jax.eval_shape(init_fn)` (nothing allocated);
3. resume: if `<workdir>/checkpoints` has a checkpoint, restore the state onto this
   mesh and the data iterator's position; otherwise init the state directly sharded
   (with `pretrained`, its params -- and EMA copy -- are the pretrained weights, placed
   shard by shard by the caller, and only the optimizer state is created here);
4. `jax.jit(train_step, in_shardings, out_shardings, donate_argnums=0)`;
   the step's rng is `fold_in(key(config.seed + 1), step)`, so a resumed run draws
   exactly the numbers an uninterrupted one would;
5. every `train.log_every` steps: the mean of each metric since the last log, `lr`,
   `steps_per_sec` (+ `<name>_per_sec` for `per_step_counts`) to the MetricWriter
   (TensorBoard + text + metrics.jsonl) and the progress bar;
6. eval every `train.eval_every`, samples every `train.sample_every` (0 = at the end
   only), checkpoints every `train.checkpoint_every`; and at the end (after
   `train.steps`, or when `train.max_minutes` of wall time ran out): a final eval,
   samples and checkpoint. A run that dies resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from sora_jax.errors import EXIT_PREEMPTED, ClearError, ConfigMismatchError, NonFiniteError, Preempted
from sora_jax.monitoring.progress import progress_bar
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning
from sora_jax.training import checkpointing
from sora_jax.training.optimizer import learning_rate_at
from sora_jax.training.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)

# Seeds derived from config.seed (kept apart so init and per-step noise never collide).
_INIT_SEED_OFFSET = 0
_STEP_SEED_OFFSET = 1


class DataIterator(Protocol):
  """What `make_iterator` returns: grain's iterators (and sora_jax.data.pipeline's) fit."""

  def __next__(self) -> Mapping[str, np.ndarray]: ...
  def get_state(self) -> Any: ...
  def set_state(self, state: Any) -> None: ...


def make_writer(workdir: str) -> Any:
  """MetricWriter(workdir): TensorBoard + text log + metrics.jsonl, written by process 0 only."""
  from sora_jax.monitoring.writer import MetricWriter

  return MetricWriter(workdir, process_index=jax.process_index())


def _every(step: int, interval: int) -> bool:
  return interval > 0 and step % interval == 0


def _mean_metrics(pending: list[Mapping[str, jax.Array]]) -> dict[str, float]:
  """Mean of each metric over the steps since the last log (one host transfer)."""
  host = jax.device_get(pending)
  return {key: float(np.mean([np.asarray(m[key], np.float64) for m in host])) for key in host[0]}


def _all_processes_agree(flag: bool) -> bool:
  """Process 0's decision, shared by all (so every process stops at the same step)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
  return {(k if "/" in k else f"{prefix}/{k}"): float(v) for k, v in metrics.items()}


NONFINITE_MODES = ("skip", "stop")


def _floating_leaves_finite(tree: Any) -> jax.Array:
  """True when every floating-point leaf of `tree` is free of NaN and Inf (a scalar bool)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def guard_nonfinite(train_step: Callable) -> Callable:
  """`train_step` whose update is skipped when it is not finite, inside the same jitted step.

  The step's update is kept only when its loss, its `grad_norm` (when the step reports one) and
  every floating leaf of the new state are finite; otherwise the state comes back unchanged (params,
  optimizer moments, EMA), except `step`, which advances, so the data and rng stay aligned with
  the loop. The metrics gain `nonfinite` (1.0 for a skipped step, else 0.0). The cond's true branch
  returns `new` bit for bit, so a run without a bad step is unchanged.
  """

  def guarded(state, batch, rng, *frozen):  # frozen: a LoRA run's base weights, passed through
    new_state, metrics = train_step(state, batch, rng, *frozen)
    finite = jnp.isfinite(jnp.asarray(metrics["loss"], jnp.float32))
    if "grad_norm" in metrics:
      finite &= jnp.isfinite(jnp.asarray(metrics["grad_norm"], jnp.float32))
    finite &= _floating_leaves_finite(new_state)
    # One lax.cond over the whole state, not a jnp.where per leaf: the per-leaf selects made XLA:CPU compile
    # the step 4-9x longer (tiny VAE step 11 s -> 224 s, demo DiT step ~150 s; docs/performance.md).
    kept = jax.lax.cond(finite, lambda: new_state, lambda: state)
    if hasattr(new_state, "step") and hasattr(kept, "replace"):
      kept = kept.replace(step=new_state.step)
    return kept, dict(metrics, nonfinite=1.0 - finite.astype(jnp.float32))

  return guarded


def check_train_config(tcfg: Any) -> None:
  """Clear errors for train.* values the loop cannot run with, before anything is built or written."""
  if int(tcfg.steps) != tcfg.steps or tcfg.steps <= 0:
    raise ClearError(f"train.steps={tcfg.steps!r}: the number of optimizer steps must be a positive integer")
  mode = tcfg.get("nonfinite", "skip")
  if mode not in NONFINITE_MODES:
    raise ClearError(f"train.nonfinite={mode!r} is not one of {NONFINITE_MODES}")
  if tcfg.get("max_nonfinite_in_a_row", 1) < 1:
    raise ClearError(f"train.max_nonfinite_in_a_row={tcfg.max_nonfinite_in_a_row!r} must be at least 1")
  if tcfg.max_minutes < 0:
    raise ClearError(f"train.max_minutes={tcfg.max_minutes!r} must be >= 0 (0 = no time limit)")


def init_from_pretrained(init_fn: Callable, shardings: Any, abstract: Any, init_rng: jax.Array, pretrained: Callable):
  """A fresh state whose params (and EMA params, if kept) are `pretrained(abstract.params)`.

  The loaded params go into the jitted init as a donated argument: the random params of
  `init_fn` are unused there and compiled away, so no second copy of the model exists.
  """
  params = pretrained(abstract.params)
  if jax.tree.structure(params) != jax.tree.structure(abstract.params):
    raise ValueError(
      f"the pretrained params do not have the model's structure: {jax.tree.structure(params)} vs "
      f"{jax.tree.structure(abstract.params)}"
    )

  def init_with(rng, loaded):
    state = partitioning.unbox(init_fn(rng))
    ema = None if state.ema_params is None else jax.tree.map(lambda a: a.copy(), loaded)
    return state.replace(params=loaded, ema_params=ema)

  return jax.jit(init_with, out_shardings=shardings, donate_argnums=1)(init_rng, params)


def _restore_or_init(
  ckpt: checkpointing.Checkpointer,
  init_fn: Callable,
  abstract: Any,
  mesh,
  rules,
  init_rng: jax.Array,
  iterator: DataIterator,
  pretrained: Callable | None = None,
  shardings: Any = None,
  config: Any = None,
) -> tuple[Any, int]:
  """(state, step): the latest checkpoint's if there is one (iterator repositioned), else fresh
  (from `pretrained` weights when given)."""
  step = ckpt.latest_step()
  if step is None:
    if pretrained is not None:
      return init_from_pretrained(init_fn, shardings, abstract, init_rng, pretrained), 0
    state, _ = partitioning.init_sharded_state(init_fn, mesh, rules, init_rng)
    return state, 0
  state, data_state, step = _restore_newest_intact(ckpt, abstract, step, config)
  if data_state is None:
    log.warning(
      "checkpoint %d has no data-iterator state for this process count; the data order restarts from the beginning.",
      step,
    )
  else:
    iterator.set_state(data_state)
  log.info("resumed from %s at step %d", ckpt.step_dir(step), step)
  return state, step


def _restore_newest_intact(ckpt: checkpointing.Checkpointer, abstract: Any, latest: int, config: Any):
  """(state, data_state, step) of the newest checkpoint that restores, from `latest` down.

  A corrupt step (bad checksum, unreadable file) is skipped with one warning naming it and the step
  used instead. A step whose saved model config differs from `config` raises ConfigMismatchError
  naming the fields (falling back would not help: every step of the run has that config).
  """
  steps = [s for s in sorted(ckpt.all_steps(), reverse=True) if s <= latest]
  first_error = None
  for step in steps:
    try:
      state, data_state = ckpt.restore(abstract, step)
    except checkpointing.CorruptCheckpointError as e:
      _raise_if_config_differs(ckpt, step, config, e)
      first_error = first_error or (step, e)
      continue
    if first_error is not None:
      bad, error = first_error
      log.warning(
        "checkpoint %s is corrupt (%s); resuming from %s instead.",
        ckpt.step_dir(bad),
        str(error).rpartition("Cause: ")[2][:300],
        ckpt.step_dir(step),
      )
    return state, data_state, step
  raise first_error[1]


def _raise_if_config_differs(ckpt: checkpointing.Checkpointer, step: int, config: Any, error: Exception) -> None:
  if config is None:
    return
  try:
    saved = ckpt.restore_config(step)
  except Exception:  # no readable config in the step: judge by the data alone
    return
  differences = checkpointing.config_differences(saved, config)
  if differences:
    raise ConfigMismatchError(
      f"the checkpoint {ckpt.step_dir(step)} was written with a different model config, so it cannot be resumed "
      f"with this one: {'; '.join(differences)}. Use the run's own settings, or a new --workdir for a new model."
    ) from error


@dataclasses.dataclass
class _Run:
  """What the step loop needs, once set up by `train`."""

  config: Any
  ckpt: checkpointing.Checkpointer
  iterator: DataIterator
  jitted_step: Callable
  mesh: jax.sharding.Mesh
  writer: Any
  eval_fn: Callable | None
  sample_fn: Callable | None
  step_rng: jax.Array
  counts: dict[str, float]
  desc: str
  frozen: tuple = ()
  finite_fn: Callable[[Any], jax.Array] | None = None


def train(
  *,
  config: Any,
  workdir: str,
  init_fn: Callable[[jax.Array], Any],
  train_step: Callable[[Any, dict, jax.Array], tuple[Any, Mapping[str, jax.Array]]],
  make_iterator: Callable[[], DataIterator],
  eval_fn: Callable[[Any, int], Mapping[str, float]] | None = None,
  sample_fn: Callable[[Any, int, Any], None] | None = None,
  mesh: jax.sharding.Mesh | None = None,
  per_step_counts: Mapping[str, float] | None = None,
  writer: Any = None,
  desc: str = "train",
  pretrained: Callable[[Any], Any] | None = None,
  frozen: Any = None,
) -> Any:
  """Trains for `config.train.steps` steps (resuming from `workdir`), returns the final state.

  Args:
    config: the full config (uses seed, data.batch_size, mesh.*, train.*).
    workdir: checkpoints, config.json and logs go here; an existing run there is resumed.
    init_fn: rng -> initial state (any pytree, e.g. a TrainState) with logically
      annotated params; called under eval_shape first, then jitted with out_shardings.
    train_step: (state, batch, rng) -> (new state, dict of scalar metrics); pure,
      jitted here with the state donated. `batch` holds the numeric fields of the
      iterator's dicts as global jax.Arrays (strings dropped).
    make_iterator: () -> this process's data iterator (numpy dicts, its share of the
      global batch) with get_state/set_state.
    eval_fn: (state, step) -> scalars, logged under "eval/<name>".
    sample_fn: (state, step, writer) -> None; writes sample videos / images.
    mesh: use this mesh instead of building one from config.mesh.
    per_step_counts: e.g. {"tokens": 4096, "examples": 8}: logged as "<name>_per_sec".
    writer: metric writer with write_scalars/write_images (default: `make_writer(workdir)`,
      closed at the end; a writer passed in is left open for the caller).
    desc: the progress bar's label.
    pretrained: abstract params (ShapeDtypeStructs with the run's shardings) -> the params a
      fresh run starts from (e.g. weights read from a diffusers folder); a resumed run ignores it.
    frozen: weights the step reads but does not train (a LoRA run's base params, jax.Arrays placed
      on `mesh`): passed as `train_step(state, batch, rng, frozen)`, never donated nor checkpointed.
  Returns:
    The state after the last step (sharded jax.Arrays).
  Raises:
    checkpointing.CorruptCheckpointError: the workdir's latest checkpoint cannot be read.
  """
  check_train_config(config.train)
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
  rules = partitioning.logical_rules(config)
  mesh_lib.check_divisibility(mesh, batch_size=config.data.batch_size)
  log.info("mesh: %s", mesh_lib.describe(mesh))
  init_rng = jax.random.key(config.seed + _INIT_SEED_OFFSET)
  abstract, shardings = partitioning.abstract_state(init_fn, mesh, rules, init_rng)
  frozen_shardings = None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen)
  jitted_step = partitioning.jit_sharded_step(guard_nonfinite(train_step), shardings, mesh, frozen_shardings)
  finite_fn = jax.jit(_floating_leaves_finite)

  # One run per workdir (a second one fails here, before anything is written); closing the checkpointer
  # waits for in-flight async saves, also when a step raises.
  with WorkdirLock(workdir), checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints) as ckpt:
    iterator = make_iterator()
    own_writer = writer is None
    writer = make_writer(workdir) if own_writer else writer
    try:
      state, step = _restore_or_init(
        ckpt,
        init_fn,
        abstract,
        mesh,
        rules,
        init_rng,
        iterator,
        pretrained=pretrained,
        shardings=shardings,
        config=config,
      )
      checkpointing.save_config(workdir, config)
      if step >= config.train.steps:
        log.info("%s is already trained to step %d (train.steps=%d); nothing to do.", workdir, step, config.train.steps)
        return state
      run = _Run(
        config=config,
        ckpt=ckpt,
        iterator=iterator,
        jitted_step=jitted_step,
        mesh=mesh,
        writer=writer,
        eval_fn=eval_fn,
        sample_fn=sample_fn,
        step_rng=jax.random.key(config.seed + _STEP_SEED_OFFSET),
        counts=dict(per_step_counts or {}),
        desc=desc,
        frozen=() if frozen is None else (frozen,),
        finite_fn=finite_fn,
      )
      with partitioning.use_mesh(mesh, rules):
        return _run_steps(run, state, step)
    finally:  # stop prefetch threads, flush logs (a writer passed in stays open for the caller)
      for resource in (iterator, writer) if own_writer else (iterator,):
        close = getattr(resource, "close", None)
        if close is not None:
          close()


@dataclasses.dataclass
class _Progress:
  """Where the step loop stands: the step, the metrics not yet logged, the steps of the last
  checkpoint / eval / samples, and the (time, step) the next steps/s is measured from."""

  step: int
  last_saved: int
  last_eval: int
  last_sample: int
  rate_start: tuple[float, int]
  pending: list[Mapping[str, jax.Array]] = dataclasses.field(default_factory=list)
  nonfinite_total: int = 0
  nonfinite_in_a_row: int = 0
  unchecked: tuple[int, jax.Array] | None = None  # (step, its `nonfinite` flag) not yet read on the host
  deadline: float = math.inf  # time.monotonic() at which train.max_minutes stops the run
  warned_cut: bool = False

  @classmethod
  def at(cls, step: int) -> _Progress:
    return cls(step=step, last_saved=step, last_eval=step, last_sample=step, rate_start=(time.monotonic(), step))


def _steps_before_deadline(run: _Run, progress: _Progress, rate: float) -> int | None:
  """The step train.max_minutes will stop at, at the current rate, when that is before train.steps; else None."""
  if not math.isfinite(progress.deadline) or not rate > 0:
    return None
  reachable = progress.step + int(rate * max(progress.deadline - time.monotonic(), 0.0))
  return reachable if reachable < run.config.train.steps else None


def _log_train_scalars(run: _Run, progress: _Progress, bar) -> None:
  """Writes the mean of the pending metrics, the learning rate and the step rates since the last log."""
  step = progress.step
  scalars = _mean_metrics(progress.pending)
  progress.pending = []
  now = time.monotonic()
  then, step_then = progress.rate_start
  rate = (step - step_then) / max(now - then, 1e-9) if step > step_then else float("nan")
  progress.rate_start = (now, step)
  scalars["lr"] = learning_rate_at(run.config.train, step - 1)
  scalars["steps_per_sec"] = rate
  scalars.update({f"{name}_per_sec": rate * n for name, n in run.counts.items()})
  run.writer.write_scalars(step, scalars)
  postfix = {"loss": f"{scalars['loss']:.4g}"} if "loss" in scalars else {}
  cut = _steps_before_deadline(run, progress, rate)
  if cut is not None:
    postfix["max_minutes_stops_at"] = cut  # the bar's ETA is for train.steps; this is where the run will stop
    if not progress.warned_cut:
      progress.warned_cut = True
      log.warning(
        "at %.3g steps/s, train.max_minutes=%s will stop this run near step %d of train.steps=%d (the schedule "
        "cut short); raise or clear train.max_minutes to train the whole schedule.",
        rate,
        run.config.train.max_minutes,
        cut,
        run.config.train.steps,
      )
  if postfix:
    bar.set_postfix(**postfix)


def _save(run: _Run, progress: _Progress, state: Any, force: bool = False) -> bool:
  """Starts saving the state at progress.step, unless a floating leaf is NaN/Inf (then logs why, saves nothing)."""
  if run.finite_fn is not None and not bool(run.finite_fn(state)):
    log.error(
      "step %d: the training state holds NaN/Inf values; not checkpointing it (the last checkpoint stays %s).",
      progress.step,
      run.ckpt.latest_step(),
    )
    return False
  run.ckpt.save(progress.step, state, data_state=run.iterator.get_state(), config=run.config, force=force)
  progress.last_saved = progress.step
  return True


def _check_nonfinite(run: _Run, progress: _Progress, flag: tuple[int, jax.Array] | None) -> None:
  """Counts a skipped (non-finite) step; raises NonFiniteError per train.nonfinite / max_nonfinite_in_a_row."""
  if flag is None:
    return
  step, value = flag
  if float(jax.device_get(value)) == 0.0:
    progress.nonfinite_in_a_row = 0
    return
  progress.nonfinite_total += 1
  progress.nonfinite_in_a_row += 1
  tcfg = run.config.train
  mode, limit = tcfg.get("nonfinite", "skip"), tcfg.get("max_nonfinite_in_a_row", 20)
  log.warning(
    "step %d: the loss or a gradient is NaN/Inf; the update was skipped (%d in a row, %d in this run).",
    step,
    progress.nonfinite_in_a_row,
    progress.nonfinite_total,
  )
  last = run.ckpt.latest_step()
  where = f"the last checkpoint (step {last}) holds finite values" if last is not None else "no checkpoint was written"
  if mode == "stop":
    raise NonFiniteError(
      f"training stopped at step {step}: the loss or a gradient is NaN/Inf (train.nonfinite='stop'); {where}. "
      f"Lower --config.train.learning_rate (now {tcfg.learning_rate:g}) or set --config.train.nonfinite=skip."
    )
  if progress.nonfinite_in_a_row >= limit:
    raise NonFiniteError(
      f"training stopped at step {step}: the loss or a gradient was NaN/Inf for {limit} steps in a row "
      f"(train.max_nonfinite_in_a_row), each update skipped; {where}. The run has diverged: lower "
      f"--config.train.learning_rate (now {tcfg.learning_rate:g}) and resume or start over."
    )


class _StopSignals:
  """Turns SIGTERM / SIGINT into a request to stop after the current step (installed while the loop runs).

  The first signal sets `received`; the previous handlers come back at once, so a second signal
  kills the process as usual. Only the main thread can install handlers; elsewhere this is inert.
  With several processes, JAX's preemption service also watches SIGTERM (see `_stop_requested`).
  """

  def __init__(self):
    self.received: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    self.received = signum
    self.restore()

  def __enter__(self) -> _StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __exit__(self, *exc) -> None:
    self.restore()


def _stop_requested(signals: _StopSignals, step: int, check_now: bool) -> bool:
  """Whether every process stops after `step`: this process got SIGTERM/SIGINT (single process), or, with
  several processes, JAX's preemption sync point says so (`reached_preemption_sync_point`, which all
  processes call at every step and which agrees on one step) or any process got a signal (checked
  every `check_now` step with one all-gather, so every process sees the same answer at the same step)."""
  if jax.process_count() == 1:
    return signals.received is not None
  try:
    if multihost_utils.reached_preemption_sync_point(step):
      return True
  except RuntimeError:  # the preemption service is off: the all-gather below still agrees
    pass
  if not check_now:
    return False
  flags = multihost_utils.process_allgather(np.asarray(signals.received is not None))
  return bool(np.any(flags))


def _evaluate(run: _Run, progress: _Progress, state: Any) -> None:
  if run.eval_fn is not None:
    results = _prefixed(run.eval_fn(state, progress.step), "eval")
    run.writer.write_scalars(progress.step, results)
    log.info("step %d: %s", progress.step, " ".join(f"{k}={v:.5g}" for k, v in results.items()))
  progress.last_eval = progress.step


def _sample(run: _Run, progress: _Progress, state: Any) -> None:
  if run.sample_fn is not None:
    run.sample_fn(state, progress.step, run.writer)
  progress.last_sample = progress.step


def _run_steps(run: _Run, state: Any, step: int) -> Any:
  """Steps from `step` to train.steps (or the time limit, or a stop signal), with logs, evals, samples,
  checkpoints."""
  with _StopSignals() as signals:
    return _run_steps_until_stopped(run, state, step, signals)


def _run_steps_until_stopped(run: _Run, state: Any, step: int, signals: _StopSignals) -> Any:
  tcfg = run.config.train
  total = tcfg.steps
  deadline = time.monotonic() + 60.0 * tcfg.max_minutes if tcfg.max_minutes > 0 else math.inf
  check_time_every = 1 if jax.process_count() == 1 else max(tcfg.log_every, 1)
  bar = progress_bar(total=total, initial=step, desc=run.desc, unit="step", disable=jax.process_index() != 0)
  progress = _Progress.at(step)
  progress.deadline = deadline
  first_step = True
  stopped_by: str | None = None
  while progress.step < total:
    try:
      numpy_batch = next(run.iterator)
    except StopIteration:
      log.warning("the data iterator ended at step %d (before train.steps=%d); stopping.", progress.step, total)
      break
    batch = partitioning.shard_batch(numpy_batch, run.mesh)
    state, metrics = run.jitted_step(state, batch, jax.random.fold_in(run.step_rng, progress.step), *run.frozen)
    progress.step += 1
    progress.pending.append(metrics)
    # The previous step's NaN/Inf flag, read while this step runs (one step in flight keeps the device busy).
    _check_nonfinite(run, progress, progress.unchecked)
    progress.unchecked = (progress.step, metrics["nonfinite"])
    bar.update(1)
    if first_step:  # keep compilation out of steps/s
      jax.block_until_ready(metrics)
      progress.rate_start, first_step = (time.monotonic(), progress.step), False
    if _every(progress.step, tcfg.log_every) or progress.step == total:
      _log_train_scalars(run, progress, bar)
    if _every(progress.step, tcfg.eval_every):
      _evaluate(run, progress, state)
    if _every(progress.step, tcfg.sample_every):
      _sample(run, progress, state)
    if _every(progress.step, tcfg.checkpoint_every):
      _save(run, progress, state)
    check_now = progress.step % check_time_every == 0
    if _stop_requested(signals, progress.step, check_now):
      stopped_by = signal.Signals(signals.received).name if signals.received is not None else "a preemption notice"
      break
    if check_now and _all_processes_agree(time.monotonic() > deadline):
      log.warning(
        "train.max_minutes=%s reached at step %d of train.steps=%d: the schedule is cut short (the learning rate "
        "has not decayed to its end); checkpointing and stopping. Re-run the same command to train on.",
        tcfg.max_minutes,
        progress.step,
        total,
      )
      break

  bar.close()
  _check_nonfinite(run, progress, progress.unchecked)
  progress.unchecked = None
  if progress.pending:
    _log_train_scalars(run, progress, bar)
  if progress.last_saved != progress.step:
    _save(run, progress, state, force=True)
  if stopped_by is not None:
    run.ckpt.wait()  # on disk before the process exits
    latest = run.ckpt.latest_step()
    saved = "no checkpoint could be saved" if latest is None else f"saved the checkpoint {run.ckpt.step_dir(latest)}"
    raise Preempted(
      f"{stopped_by} received: stopped after step {progress.step} of {total} and {saved} (model, optimizer, "
      f"data position; each step's rng derives from its step). Re-run the same command to resume "
      f"(exit code {EXIT_PREEMPTED})."
    )
  if progress.last_eval != progress.step:
    _evaluate(run, progress, state)
  if progress.last_sample != progress.step:
    _sample(run, progress, state)
  return state
