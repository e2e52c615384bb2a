"""Spacetime patches: latent videos <-> token sequences.

A latent video [B, T, H, W, C] is cut into non-overlapping patches of
(pt, ph, pw) latent voxels. Each patch becomes one token holding its
pt*ph*pw*C values in (pt, ph, pw, C) order; tokens are ordered t-major, then
h, then w (raster order per frame), so a one-frame image gives exactly the
DiT paper's token order. Nothing here depends on a fixed size: T, H and W may
change from call to call as long as the patch divides them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Grid = tuple[int, int, int]


def _working_sizes(size: int, patch: int, limit: int = 4) -> str:
  """A few sizes near `size` that `patch` divides, for error messages."""
  below = (size // patch) * patch
  candidates = [s for s in (below, below + patch, below + 2 * patch) if s > 0]
  return ", ".join(str(s) for s in candidates[:limit])


def num_tokens(latent_shape: Sequence[int], patch_size: Sequence[int]) -> int:
  """Spacetime tokens of a latent [B, T', H', W', C] cut into (pt, ph, pw) patches."""
  _, t, h, w, _ = latent_shape
  pt, ph, pw = patch_size
  return (t // pt) * (h // ph) * (w // pw)


def patch_grid(spatial_shape: Sequence[int], patch_size: Sequence[int]) -> Grid:
  """The token grid (T/pt, H/ph, W/pw) of a latent of shape (T, H, W).

  Raises:
    ValueError: a size is not a multiple of its patch size; the message names
      the axis and sizes that would work.
  """
  if len(spatial_shape) != 3 or len(patch_size) != 3:
    raise ValueError(
      f"expected (T, H, W) sizes and a (pt, ph, pw) patch, got {tuple(spatial_shape)} and {tuple(patch_size)}"
    )
  grid = []
  for axis, size, patch in zip(
    ("T (latent frames)", "H (latent height)", "W (latent width)"), spatial_shape, patch_size
  ):
    if patch < 1:
      raise ValueError(f"patch sizes must be >= 1, got {tuple(patch_size)}")
    if size % patch:
      raise ValueError(
        f"latent {axis} = {size} is not divisible by the patch size {patch} "
        f"(patch_size={tuple(patch_size)}); sizes that work: {_working_sizes(size, patch)}. "
        f"Change the clip size or dit.patch_size."
      )
    grid.append(size // patch)
  return tuple(grid)


def patchify(x: jax.Array, patch_size: Sequence[int]) -> tuple[jax.Array, Grid]:
  """Latent video [B, T, H, W, C] -> tokens [B, N, pt*ph*pw*C] and the grid (gt, gh, gw).

  N = gt*gh*gw with gt = T/pt, gh = H/ph, gw = W/pw.
  """
  if x.ndim != 5:
    raise ValueError(f"patchify expects a latent video [B, T, H, W, C], got shape {x.shape}")
  b, t, h, w, c = x.shape
  pt, ph, pw = patch_size
  gt, gh, gw = patch_grid((t, h, w), patch_size)
  x = x.reshape(b, gt, pt, gh, ph, gw, pw, c)
  x = jnp.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))  # [B, gt, gh, gw, pt, ph, pw, C]
  return x.reshape(b, gt * gh * gw, pt * ph * pw * c), (gt, gh, gw)


def unpatchify(tokens: jax.Array, grid: Sequence[int], patch_size: Sequence[int]) -> jax.Array:
  """Tokens [B, N, pt*ph*pw*C] on grid (gt, gh, gw) -> latent video [B, gt*pt, gh*ph, gw*pw, C]."""
  if tokens.ndim != 3:
    raise ValueError(f"unpatchify expects tokens [B, N, P], got shape {tokens.shape}")
  b, n, values = tokens.shape
  gt, gh, gw = grid
  pt, ph, pw = patch_size
  if n != gt * gh * gw:
    raise ValueError(f"{n} tokens do not fill the grid {tuple(grid)} ({gt * gh * gw} tokens)")
  if values % (pt * ph * pw):
    raise ValueError(
      f"token width {values} is not a multiple of the patch volume {pt * ph * pw} (patch_size={tuple(patch_size)})"
    )
  c = values // (pt * ph * pw)
  x = tokens.reshape(b, gt, gh, gw, pt, ph, pw, c)
  x = jnp.transpose(x, (0, 1, 4, 2, 5, 3, 6, 7))  # [B, gt, pt, gh, ph, gw, pw, C]
  return x.reshape(b, gt * pt, gh * ph, gw * pw, c)
