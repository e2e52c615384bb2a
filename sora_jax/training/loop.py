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
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils

from sora_jax.monitoring.progress import progress_bar
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning
from sora_jax.training import checkpointing
from sora_jax.training.optimizer import learning_rate_at

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
) -> tuple[Any, int]:
  """(state, step): the latest checkpoint's if there is one (iterator repositioned), else fresh
  (from `pretrained` weights when given)."""
  step = ckpt.latest_step()
  if step is None:
    if pretrained is not None:
      return init_from_pretrained(init_fn, shardings, abstract, init_rng, pretrained), 0
    state, _ = partitioning.init_sharded_state(init_fn, mesh, rules, init_rng)
    return state, 0
  state, data_state = ckpt.restore(abstract, step)
  if data_state is None:
    log.warning(
      "checkpoint %d has no data-iterator state for this process count; the data order restarts from the beginning.",
      step,
    )
  else:
    iterator.set_state(data_state)
  log.info("resumed from %s at step %d", ckpt.step_dir(step), step)
  return state, step


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
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
  rules = partitioning.logical_rules(config)
  mesh_lib.check_divisibility(mesh, batch_size=config.data.batch_size)
  log.info("mesh: %s", mesh_lib.describe(mesh))
  init_rng = jax.random.key(config.seed + _INIT_SEED_OFFSET)
  abstract, shardings = partitioning.abstract_state(init_fn, mesh, rules, init_rng)
  frozen_shardings = None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen)
  jitted_step = partitioning.jit_sharded_step(train_step, shardings, mesh, frozen_shardings)

  # Closing the checkpointer waits for in-flight async saves, also when a step raises.
  with checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints) as ckpt:
    iterator = make_iterator()
    own_writer = writer is None
    writer = make_writer(workdir) if own_writer else writer
    try:
      state, step = _restore_or_init(
        ckpt, init_fn, abstract, mesh, rules, init_rng, iterator, pretrained=pretrained, shardings=shardings
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

  @classmethod
  def at(cls, step: int) -> _Progress:
    return cls(step=step, last_saved=step, last_eval=step, last_sample=step, rate_start=(time.monotonic(), step))


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
  if "loss" in scalars:
    bar.set_postfix(loss=f"{scalars['loss']:.4g}")


def _save(run: _Run, progress: _Progress, state: Any, force: bool = False) -> None:
  run.ckpt.save(progress.step, state, data_state=run.iterator.get_state(), config=run.config, force=force)
  progress.last_saved = progress.step


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
  """Steps from `step` to train.steps (or the time limit), with logs, evals, samples, checkpoints."""
  tcfg = run.config.train
  total = tcfg.steps
  deadline = time.monotonic() + 60.0 * tcfg.max_minutes if tcfg.max_minutes > 0 else math.inf
  check_time_every = 1 if jax.process_count() == 1 else max(tcfg.log_every, 1)
  bar = progress_bar(total=total, initial=step, desc=run.desc, unit="step", disable=jax.process_index() != 0)
  progress = _Progress.at(step)
  first_step = True
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
    if progress.step % check_time_every == 0 and _all_processes_agree(time.monotonic() > deadline):
      log.warning(
        "train.max_minutes=%s reached at step %d; checkpointing and stopping.", tcfg.max_minutes, progress.step
      )
      break

  bar.close()
  if progress.pending:
    _log_train_scalars(run, progress, bar)
  if progress.last_saved != progress.step:
    _save(run, progress, state, force=True)
  if progress.last_eval != progress.step:
    _evaluate(run, progress, state)
  if progress.last_sample != progress.step:
    _sample(run, progress, state)
  return state
