"""A training-free block cache for the scan samplers (First-Block-Cache / TeaCache style) and the CFG window.

Between neighbouring sampling steps a DiT's hidden states change little over most of the
trajectory. The first block is always run; its residual r1 = block_0(h) - h is the cheap probe:

    rel = mean|r1 - r1_ref| / mean|r1_ref|        (r1_ref: r1 of the last step that ran every block)
    rel < threshold  ->  h_L = block_0(h) + R_ref  (R_ref: that step's residual of blocks 1..L-1)
    else             ->  run blocks 1..L-1, set r1_ref = r1, R_ref = h_L - block_0(h)

The decision is ONE scalar per model call (means over the whole batch, cond and uncond halves
alike), so `lax.cond` runs exactly one branch on every device; r1_ref and R_ref ride in the
sampler's scan carry (`CacheState`). Guards: the first `warmup_steps` model calls always compute
(the reference is empty at the start, and early steps decide the layout), and no more than
`max_cached` calls in a row reuse the cache. threshold 0 switches the cache off: the sampler then
never builds this state and is the plain sampler exactly.

`evals` counts the work per example, in full-network forwards: a computed call adds 1, a cached
one adds `first_fraction` (the first block + the head, as a fraction of the network's cost).

The CFG window: guidance (a forward over cond AND uncond) only where the model time t_model/1000
lies in [cfg_window[0], cfg_window[1]]; elsewhere the conditional branch alone (half the batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CacheConfig:
  """sample.cache.*: threshold (0 = off), warmup_steps (model calls that always compute), max_cached (in a row)."""

  threshold: float = 0.0
  warmup_steps: int = 2
  max_cached: int = 3

  def __post_init__(self):
    if self.threshold < 0 or self.warmup_steps < 0 or self.max_cached < 1:
      raise ValueError(
        f"sample.cache: threshold ({self.threshold}) and warmup_steps ({self.warmup_steps}) must be >= 0 and "
        f"max_cached ({self.max_cached}) >= 1 (threshold 0 = cache off; 0.05-0.2 is typical)"
      )

  @property
  def enabled(self) -> bool:
    return self.threshold > 0

  @classmethod
  def from_config(cls, cache_cfg: Any) -> CacheConfig:
    """From a `config.sample.cache` ConfigDict (or a dict); missing keys take the defaults."""
    if cache_cfg is None:
      return cls()
    get = cache_cfg.get
    return cls(
      threshold=float(get("threshold", 0.0)),
      warmup_steps=int(get("warmup_steps", 2)),
      max_cached=int(get("max_cached", 3)),
    )


class CacheState(NamedTuple):
  """The block cache in the scan carry. first_ref, rest_ref: [B, N, D] (r1_ref and R_ref above);
  calls: model calls so far; run: cached calls in a row; evals [B]: full-forward equivalents per example
  (only what this state's batch computed); cached_calls: calls that reused the cache."""

  first_ref: jax.Array
  rest_ref: jax.Array
  calls: jax.Array
  run: jax.Array
  evals: jax.Array
  cached_calls: jax.Array


def init_state(hidden_shape: tuple[int, ...]) -> CacheState:
  """An empty cache for hidden states [B, N, D] (the first `warmup_steps` >= 1 calls fill it)."""
  zeros = jnp.zeros(hidden_shape, jnp.float32)
  z = jnp.zeros((), jnp.int32)
  return CacheState(zeros, zeros, z, z, jnp.zeros((hidden_shape[0],), jnp.float32), z)


def relative_change(new: jax.Array, ref: jax.Array) -> jax.Array:
  """mean|new - ref| / mean|ref| over everything: one scalar."""
  return jnp.mean(jnp.abs(new - ref)) / jnp.maximum(jnp.mean(jnp.abs(ref)), 1e-12)


def cached_blocks(
  first: Callable[[jax.Array], jax.Array],
  rest: Callable[[jax.Array], jax.Array],
  h: jax.Array,
  state: CacheState,
  config: CacheConfig,
  first_fraction: float,
) -> tuple[jax.Array, CacheState]:
  """h -> (rest(first(h)) or first(h) + cached residual, new state); see the module docstring."""
  h1 = first(h)
  r1 = (h1 - h).astype(jnp.float32)
  use = (
    (state.calls >= max(config.warmup_steps, 1))
    & (state.run < config.max_cached)
    & (relative_change(r1, state.first_ref) < config.threshold)
  )

  def reuse(_):
    return (h1 + state.rest_ref.astype(h1.dtype)), state.first_ref, state.rest_ref

  def compute(_):
    out = rest(h1)
    return out, r1, (out - h1).astype(jnp.float32)

  out, first_ref, rest_ref = jax.lax.cond(use, reuse, compute, None)
  cost = jnp.where(use, first_fraction, 1.0)
  return out, CacheState(
    first_ref=first_ref,
    rest_ref=rest_ref,
    calls=state.calls + 1,
    run=jnp.where(use, state.run + 1, 0),
    evals=state.evals + cost,
    cached_calls=state.cached_calls + use.astype(jnp.int32),
  )


def in_cfg_window(t_model: jax.Array, window: tuple[float, float] | None, num_timesteps: float = 1000.0) -> Any:
  """Whether guidance runs at model time t_model ([B], or per frame / token: the largest, i.e. the generated
  frames' noise level; held conditioning frames sit at 0): one scalar for the whole batch."""
  if window is None:
    return True
  t = jnp.max(t_model) / num_timesteps
  return (t >= window[0]) & (t <= window[1])


def check_cfg_window(window) -> tuple[float, float] | None:
  """None / () -> None (guidance everywhere); (lo, hi) with 0 <= lo <= hi <= 1 -> floats; else a clear error."""
  if window is None or len(window) == 0:
    return None
  if len(window) != 2 or not 0.0 <= float(window[0]) <= float(window[1]) <= 1.0:
    raise ValueError(
      f"cfg_window={tuple(window)} must be (lo, hi) with 0 <= lo <= hi <= 1 (noise level t: 1 = pure noise), "
      f"e.g. (0.2, 1.0) guides only the first part of the trajectory; () = guidance at every step"
    )
  lo, hi = float(window[0]), float(window[1])
  return None if (lo, hi) == (0.0, 1.0) else (lo, hi)
