"""3D rotary position embedding (RoPE) over spacetime token grids.

Each attention head's dimension is split into three bands that rotate with
the token's frame index t, row h and column w respectively (the split used by
Wan 2.1: t gets head_dim - 4*(head_dim//6) dims, h and w get 2*(head_dim//6)
each). Angles are computed from the grid at call time, so there is no table
of a fixed maximum size and any (T, H, W) works. Because a rotation by angle
a followed by the transpose of a rotation by angle b is a rotation by a-b,
the attention score q.k after RoPE depends only on the position difference.

Rotation pairs dimension i with dimension i + head_dim/2 ("half" layout).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_THETA = 10_000.0


def band_sizes(head_dim: int) -> tuple[int, int, int]:
  """Dimensions of the (t, h, w) bands for a head of `head_dim` (all even)."""
  if head_dim % 2 or head_dim < 6:
    raise ValueError(
      f"3D RoPE needs an even head_dim >= 6, got {head_dim}; choose hidden_size/num_heads "
      f"accordingly (e.g. 32, 64 or 128)"
    )
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def _band_frequencies(dim: int, theta: float) -> np.ndarray:
  """Rotation frequencies [dim/2] of one band: theta^(-2i/dim)."""
  return theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)


def grid_positions(grid: Sequence[int]) -> jax.Array:
  """Integer (t, h, w) coordinates [N, 3] of every token of a (gt, gh, gw) grid in patchify order.

  Built with jnp (iota under jit), so long videos do not embed [N, ...] constants in the program.
  """
  gt, gh, gw = grid
  t, h, w = jnp.meshgrid(jnp.arange(gt), jnp.arange(gh), jnp.arange(gw), indexing="ij")
  return jnp.stack([t.ravel(), h.ravel(), w.ravel()], axis=-1)


def rope_angles(positions: jax.Array, head_dim: int, theta: float = DEFAULT_THETA) -> jax.Array:
  """Rotation angles [N, head_dim/2] (float32) for (t, h, w) positions [N, 3]."""
  freqs = [_band_frequencies(d, theta) for d in band_sizes(head_dim)]
  positions = jnp.asarray(positions, jnp.float32)
  return jnp.concatenate(
    [positions[:, axis, None] * jnp.asarray(f, jnp.float32)[None, :] for axis, f in enumerate(freqs)], axis=-1
  )


def rope_tables(grid: Sequence[int], head_dim: int, theta: float = DEFAULT_THETA) -> tuple[jax.Array, jax.Array]:
  """(cos, sin), each [N, head_dim/2] float32, for the tokens of a (gt, gh, gw) grid."""
  angles = rope_angles(grid_positions(grid), head_dim, theta)
  # The barrier materialises the tables once: without it XLA fuses cos/sin into every consumer
  # and re-evaluates them per (batch, head) element of q and k, forwards and backwards
  # (~10 % of a CPU train step at the Wan-small shape).
  return jax.lax.optimization_barrier((jnp.cos(angles), jnp.sin(angles)))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, *, heads_major: bool = False) -> jax.Array:
  """Rotates queries or keys x [B, N, heads, head_dim] by tables [N, head_dim/2].

  With heads_major=True, x is [B, heads, N, head_dim] instead. Computed in float32;
  the result has x's dtype.
  """
  half = x.shape[-1] // 2
  tokens = x.shape[2] if heads_major else x.shape[1]
  if cos.shape != (tokens, half):
    raise ValueError(
      f"RoPE tables of shape {cos.shape} do not match {tokens} tokens of head_dim "
      f"{x.shape[-1]} (expected {(tokens, half)})"
    )
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., :half], xf[..., half:]
  if heads_major:
    cos, sin = cos[None, None], sin[None, None]
  else:
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
