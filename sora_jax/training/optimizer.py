"""The optimizer of every training run: AdamW, warmup + cosine schedule, clipping, accumulation.

Built from `config.train` (see configs/base.py):

    lr(step) = learning_rate * step / warmup_steps                       during warmup
             = cosine from learning_rate down to min_lr_ratio * learning_rate
               over the remaining steps ("cosine"), or flat ("constant")

    chain(clip_by_global_norm(grad_clip), adamw(lr, b1, b2, weight_decay))
    wrapped in optax.MultiSteps(every_k_schedule=grad_accum_steps) when accumulating.

`train.fused_optimizer` (default True) computes that same chain as ONE elementwise function per
parameter (`fused_adamw`): clip factor, both moments, bias corrections, decoupled weight decay and
the learning rate in one expression, so XLA emits one multi-output loop per tensor that reads
(g, mu, nu, p) once and writes (update, mu, nu) once, instead of a chain of tree-wide passes
(optax's transforms each map over the whole tree and materialise their intermediate trees). Its
state is optax's own (the same pytree, so checkpoints restore either way) and its result equals
optax's to float32 rounding (tests/test_optimizer.py). The global norm is `global_norm`, the
expression the train steps log as grad_norm, so XLA computes it once.

With gradient accumulation, `train.steps` counts micro-batches and the schedule counts
optimizer updates (one every `grad_accum_steps` micro-batches); `learning_rate_at`
gives the rate in effect at a micro-batch step, for logging.

The optimizer state inherits the logical annotations of the parameters (optax maps
over the `nn.LogicallyPartitioned` boxes), so it is sharded exactly like them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
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


def global_norm(tree: Any) -> jax.Array:
  """sqrt(sum of squares) of every leaf, in float32: the clip's norm and the logged grad_norm (one expression,
  so XLA computes it once when both are in a step)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def fused_adamw(
  learning_rate: optax.Schedule,
  *,
  b1: float,
  b2: float,
  weight_decay: float,
  grad_clip: float = 0.0,
  eps: float = 1e-8,
) -> optax.GradientTransformation:
  """chain(clip_by_global_norm(grad_clip) if grad_clip > 0, adamw(...)) as one elementwise update per tensor.

  Same state pytree as the optax chain (its `init` is the chain's), same arithmetic:
    g' = g * min(1, grad_clip / |g|)   (optax: g where |g| < grad_clip, else g / |g| * grad_clip)
    mu = b1 mu + (1 - b1) g';  nu = b2 nu + (1 - b2) g'^2;  k = count + 1
    update = -lr(count) * ((mu / (1 - b1^k)) / (sqrt(nu / (1 - b2^k)) + eps) + weight_decay * p)
  """
  adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  reference = optax.chain(optax.clip_by_global_norm(grad_clip), adamw) if grad_clip > 0 else adamw

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("fused_adamw needs params (decoupled weight decay): tx.update(grads, state, params)")
    clip_state, (adam_state, decay_state, lr_state) = (state[0], state[1]) if grad_clip > 0 else (None, state)
    count_inc = optax.safe_increment(adam_state.count)
    step_size = -learning_rate(lr_state.count)
    c1 = 1.0 - b1 ** count_inc.astype(jnp.float32)
    c2 = 1.0 - b2 ** count_inc.astype(jnp.float32)
    if grad_clip > 0:
      norm = global_norm(grads)
      scale = jnp.where(norm < grad_clip, 1.0, grad_clip / norm)
    else:
      scale = None

    def one(g, m, v, p):
      g = g if scale is None else g * scale.astype(g.dtype)
      m = (1.0 - b1) * g + b1 * m
      v = (1.0 - b2) * jnp.square(g) + b2 * v
      u = (m / c1) / (jnp.sqrt(v / c2) + eps)
      if weight_decay:
        u = u + weight_decay * p
      return (step_size * u).astype(p.dtype), m, v

    out = jax.tree.map(one, grads, adam_state.mu, adam_state.nu, params)
    outer = jax.tree.structure(grads)
    updates, mu, nu = jax.tree.transpose(outer, jax.tree.structure((0, 0, 0)), out)
    adam_state = adam_state._replace(count=count_inc, mu=mu, nu=nu)
    lr_state = lr_state._replace(count=optax.safe_increment(lr_state.count))
    inner = (adam_state, decay_state, lr_state)
    return updates, ((clip_state, inner) if grad_clip > 0 else inner)

  return optax.GradientTransformation(reference.init, update)


def make_optimizer(train_cfg: Any) -> optax.GradientTransformation:
  """AdamW (+ global-norm clip if grad_clip > 0, + MultiSteps if grad_accum_steps > 1); one fused
  elementwise update (`fused_adamw`) unless train.fused_optimizer is False."""
  _check(train_cfg)
  schedule = make_lr_schedule(train_cfg)
  if train_cfg.get("fused_optimizer", True):
    tx = fused_adamw(
      schedule, b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay, grad_clip=train_cfg.grad_clip
    )
  else:
    adamw = optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay)
    tx = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), adamw) if train_cfg.grad_clip > 0 else adamw
  if train_cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=train_cfg.grad_accum_steps)
  return tx
