"""The optimizer of every training run: AdamW, warmup + cosine schedule, clipping, accumulation.

Built from `config.train` (see configs/base.py):

    lr(step) = learning_rate * step / warmup_steps                       during warmup
             = cosine from learning_rate down to min_lr_ratio * learning_rate
               over the remaining steps ("cosine"), or flat ("constant")

    chain(clip_by_global_norm(grad_clip), adamw(lr, b1, b2, weight_decay))
    wrapped in optax.MultiSteps(every_k_schedule=grad_accum_steps) when accumulating.

With gradient accumulation, `train.steps` counts micro-batches and the schedule counts
optimizer updates (one every `grad_accum_steps` micro-batches); `learning_rate_at`
gives the rate in effect at a micro-batch step, for logging.

The optimizer state inherits the logical annotations of the parameters (optax maps
over the `nn.LogicallyPartitioned` boxes), so it is sharded exactly like them.
"""

from __future__ import annotations

from typing import Any

import optax

_SCHEDULES = ("cosine", "constant")


def _check(train_cfg: Any) -> None:
  if train_cfg.lr_schedule not in _SCHEDULES:
    raise ValueError(f"train.lr_schedule={train_cfg.lr_schedule!r} is not one of {_SCHEDULES}.")
  if train_cfg.grad_accum_steps < 1:
    raise ValueError(f"train.grad_accum_steps={train_cfg.grad_accum_steps} must be >= 1 (1 = no accumulation).")
  if train_cfg.warmup_steps < 0 or train_cfg.learning_rate <= 0:
    raise ValueError(
      f"train.warmup_steps ({train_cfg.warmup_steps}) must be >= 0 and train.learning_rate "
      f"({train_cfg.learning_rate}) > 0."
    )


def num_updates(train_cfg: Any) -> int:
  """Optimizer updates in the whole run (train.steps micro-batches / grad_accum_steps)."""
  return max(train_cfg.steps // train_cfg.grad_accum_steps, 1)


def make_lr_schedule(train_cfg: Any) -> optax.Schedule:
  """Learning rate as a function of the optimizer update count: linear warmup, then cosine or flat."""
  _check(train_cfg)
  peak = train_cfg.learning_rate
  warmup = train_cfg.warmup_steps
  warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
  decay_steps = max(num_updates(train_cfg) - warmup, 1)
  after = {
    "cosine": lambda: optax.cosine_decay_schedule(peak, decay_steps, alpha=train_cfg.min_lr_ratio),
    "constant": lambda: optax.constant_schedule(peak),
  }[train_cfg.lr_schedule]()
  if warmup == 0:
    return after
  return optax.join_schedules([warmup_fn, after], [warmup])


def learning_rate_at(train_cfg: Any, step: int) -> float:
  """The learning rate applied at micro-batch `step` of the run (for logging)."""
  return float(make_lr_schedule(train_cfg)(step // train_cfg.grad_accum_steps))


def make_optimizer(train_cfg: Any) -> optax.GradientTransformation:
  """AdamW (+ global-norm clip if grad_clip > 0, + MultiSteps if grad_accum_steps > 1)."""
  _check(train_cfg)
  adamw = optax.adamw(
    make_lr_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay
  )
  tx = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), adamw) if train_cfg.grad_clip > 0 else adamw
  if train_cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=train_cfg.grad_accum_steps)
  return tx
