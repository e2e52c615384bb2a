"""Classifier-free guidance (Ho & Salimans 2022): condition dropout in training, guided prediction in sampling.

Training: `drop_condition` replaces each example's condition by the null condition
with probability p, so one network learns both p(x | c) and p(x).

Sampling: `cfg_model_fn` runs the conditional and unconditional branches as ONE forward
over 2B examples and returns

    pred = pred_cond + (scale - 1) * (pred_cond - pred_uncond)

(= pred_uncond + scale * (pred_cond - pred_uncond), written so that scale = 1 returns the
conditional prediction exactly). A negative prompt is simply its embedding used as `uncond`.
Guidance is linear in the prediction, so it applies unchanged to velocity, epsilon or v.
A learn_sigma model's output [..., 2C] (prediction, variance) is guided on the prediction
half only; the variance half is the conditional branch's, as in DiT (`forward_with_cfg`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def _broadcast_like(leaf: jax.Array, like: jax.Array, what: str) -> jax.Array:
  """A condition leaf for one example ([...]) or a batch of 1 ([1, ...]) -> like's batch [B, ...]."""
  leaf = jnp.asarray(leaf)
  if leaf.ndim == like.ndim - 1:
    leaf = leaf[None]
  if leaf.ndim != like.ndim or leaf.shape[1:] != like.shape[1:] or leaf.shape[0] not in (1, like.shape[0]):
    raise ValueError(
      f"{what} leaf of shape {leaf.shape} does not fit the condition's {like.shape}: give one "
      f"example ({like.shape[1:]}), a batch of 1 or a batch of {like.shape[0]}"
    )
  return jnp.broadcast_to(leaf, like.shape).astype(like.dtype)


def _match_structure(cond: Any, other: Any, what: str) -> Any:
  if jax.tree.structure(cond) != jax.tree.structure(other):
    raise ValueError(
      f"{what} must have the same pytree structure as cond: {jax.tree.structure(other)} vs {jax.tree.structure(cond)}"
    )
  return jax.tree.map(lambda c, o: _broadcast_like(o, jnp.asarray(c), what), cond, other)


def drop_condition(rng: jax.Array, cond: Any, null_cond: Any, p: float) -> Any:
  """Per example, replaces every leaf of `cond` [B, ...] by `null_cond` with probability p.

  `null_cond` has cond's structure, with leaves for one example ([...]) or a batch ([1 or B, ...]):
  e.g. the empty prompt's tokens / mask / pooled, or the null class label.
  """
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"condition dropout probability must be in [0, 1], got {p}")
  null_cond = _match_structure(cond, null_cond, "null_cond")
  leaves = jax.tree.leaves(cond)
  if not leaves or p == 0.0:
    return cond
  batch = jnp.shape(leaves[0])[0]
  drop = jax.random.bernoulli(rng, p, (batch,))

  def choose(c, n):
    c = jnp.asarray(c)
    return jnp.where(drop.reshape((batch,) + (1,) * (c.ndim - 1)), n, c)

  return jax.tree.map(choose, cond, null_cond)


def guide(pred_cond: jax.Array, pred_uncond: jax.Array, scale, *, channels: int) -> jax.Array:
  """pred_cond + (scale - 1) (pred_cond - pred_uncond) on the first `channels` channels (last axis).

  `channels` is the sample's channel count C: a C-channel prediction is guided whole; of a
  learn_sigma output [..., 2C] only the prediction half is, and the variance half is
  pred_cond's (extrapolating it would leave the range the variance was trained in).
  """
  if pred_cond.shape[-1] != 2 * channels:  # no variance half (a wrong shape is the sampler's to report)
    return pred_cond + (scale - 1.0) * (pred_cond - pred_uncond)
  eps_cond, var_cond = pred_cond[..., :channels], pred_cond[..., channels:]
  eps = eps_cond + (scale - 1.0) * (eps_cond - pred_uncond[..., :channels])
  return jnp.concatenate([eps, var_cond], axis=-1)


def cfg_model_fn(model_fn: ModelFn, cond: Any, uncond: Any, scale) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Guided `fn(x_t [B, ...], t_model [B]) -> prediction [B, ...]` for the samplers.

  Args:
    model_fn: the network, `model_fn(x_t, t_model, cond) -> prediction`.
    cond: conditioning pytree with batch B (e.g. {'text', 'text_mask', 'pooled'} or labels [B]).
    uncond: the null / negative-prompt condition, same structure; leaves for one example or batch 1 or B.
    scale: guidance scale (float or scalar array; 1 = conditional only, larger = stronger guidance).
  """
  uncond = _match_structure(cond, uncond, "uncond")
  both = jax.tree.map(lambda c, u: jnp.concatenate([jnp.asarray(c), u], axis=0), cond, uncond)

  def guided(x_t: jax.Array, t_model: jax.Array) -> jax.Array:
    pred = model_fn(jnp.concatenate([x_t, x_t], axis=0), jnp.concatenate([t_model, t_model], axis=0), both)
    pred_cond, pred_uncond = jnp.split(pred.astype(jnp.float32), 2, axis=0)
    return guide(pred_cond, pred_uncond, scale, channels=x_t.shape[-1])

  return guided


def stack_conditions(cond: Any, uncond: Any) -> Any:
  """cond [B, ...] and uncond (one example, batch 1 or B) -> [2B, ...]: the batch `cfg_model_fn` runs."""
  uncond = _match_structure(cond, uncond, "uncond")
  return jax.tree.map(lambda c, u: jnp.concatenate([jnp.asarray(c), u], axis=0), cond, uncond)


def conditional_model_fn(model_fn: ModelFn, cond: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Unguided `fn(x_t, t_model) = model_fn(x_t, t_model, cond)` (one forward of B; same as scale 1)."""
  return lambda x_t, t_model: model_fn(x_t, t_model, cond)
