"""Embeddings of the DiT inputs: timesteps, class labels, text, fixed 2D positions.

* `timestep_embedding` + `TimestepEmbedder`: sinusoidal features of t (0..1000
  scale) followed by an MLP, as in DiT / ADM.
* `LabelEmbedder`: a class table with one extra row, the null class used for
  classifier-free guidance (dropout is done by the caller passing the null label).
* `TextProjection`: text-encoder token states -> model width (cross-attention keys/values).
* `PooledTextProjection`: pooled sentence vector -> conditioning vector (added to
  the timestep embedding, drives adaLN).
* `sincos_2d_embedding`: the DiT paper's fixed 2D sin-cos position table (image mode).
* `sincos_3d_embedding`: a fixed (t, h, w) sin-cos table for video tokens (as CogVideoX),
  added on top of 3D RoPE so that every token knows where it is, not only how far apart.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models.attention import linear

TIMESTEP_FEATURES = 256


def timestep_embedding(
  t: jax.Array, dim: int = TIMESTEP_FEATURES, max_period: float = 10_000.0, frequency_shift: float = 0.0
) -> jax.Array:
  """Sinusoidal features [B, dim] = [cos(t*f), sin(t*f)] of timesteps t [B].

  Frequencies f_i = max_period^(-i / (dim/2 - frequency_shift)). The DiT paper
  uses frequency_shift=0; diffusers' DiT port uses 1 (kept for weight parity).
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - frequency_shift)
  args = jnp.asarray(t, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _mlp(x: jax.Array, width: int, dtype: Any, activation, init, names: tuple[str, str]) -> jax.Array:
  """Two-layer MLP [B, ..., in] -> [B, ..., width] with partitioned params."""
  x = linear(
    (x.shape[-1], width), "...i,io->...o", ("cond", "embed"), ("embed",), dtype=dtype, kernel_init=init, name=names[0]
  )(x)
  x = activation(x)
  return linear(
    (width, width), "...i,io->...o", ("cond", "embed"), ("embed",), dtype=dtype, kernel_init=init, name=names[1]
  )(x)


class TimestepEmbedder(nn.Module):
  """Timesteps t [B] (float, 0..1000 scale) -> embedding [B, hidden_size] (float32)."""

  hidden_size: int
  dtype: Any = jnp.float32
  frequency_shift: float = 0.0

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    if t.ndim != 1:
      raise ValueError(f"timesteps must have shape [B], got {t.shape}")
    features = timestep_embedding(t, TIMESTEP_FEATURES, frequency_shift=self.frequency_shift)
    return _mlp(features, self.hidden_size, self.dtype, nn.silu, nn.initializers.normal(0.02), ("linear_1", "linear_2"))


class LabelEmbedder(nn.Module):
  """Class labels [B] int in [0, num_classes] -> [B, hidden_size]; label num_classes is the null class."""

  num_classes: int
  hidden_size: int

  @nn.compact
  def __call__(self, labels: jax.Array) -> jax.Array:
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"cond['label'] must be integer class ids of shape [B], got {labels.dtype} {labels.shape}")
    table = self.param(
      "embedding",
      nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
      (self.num_classes + 1, self.hidden_size),
      jnp.float32,
    )
    return jnp.take(table, labels, axis=0)


class TextProjection(nn.Module):
  """Text-encoder states [B, L, D_text] -> [B, L, hidden_size] (Linear, GELU-tanh, Linear)."""

  hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, text: jax.Array) -> jax.Array:
    out = _mlp(
      text,
      self.hidden_size,
      self.dtype,
      lambda x: nn.gelu(x, approximate=True),
      nn.initializers.normal(0.02),
      ("linear_1", "linear_2"),
    )
    return nn.with_logical_constraint(out, ("activation_batch", "activation_text_length", "activation_embed"))


class PooledTextProjection(nn.Module):
  """Pooled text vector [B, D_text] -> conditioning [B, hidden_size] (Linear, SiLU, Linear)."""

  hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    return _mlp(pooled, self.hidden_size, self.dtype, nn.silu, nn.initializers.normal(0.02), ("linear_1", "linear_2"))


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """[M, dim] = [sin(p*w), cos(p*w)] with w_i = 1/10000^(2i/dim)."""
  omega = 1.0 / 10_000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.outer(positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d_embedding(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """The DiT paper's fixed position table [grid_h*grid_w, dim] (float32), tokens in raster order.

  The first dim/2 channels encode the column index, the last dim/2 the row
  index (the layout of the MAE/DiT reference code, kept for weight parity).
  """
  if dim % 4:
    raise ValueError(f"sincos2d position embedding needs hidden_size divisible by 4, got {dim}")
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  emb = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
  return emb.astype(np.float32)


def sincos_3d_bands(dim: int) -> tuple[int, int, int]:
  """Channels of the (t, h, w) bands of `sincos_3d_embedding`: a quarter for time, the rest split."""
  if dim % 4:
    raise ValueError(f"sincos3d position embedding needs hidden_size divisible by 4, got {dim}")
  t_dim = 2 * (dim // 8)
  h_dim = 2 * ((dim - t_dim) // 4)
  return t_dim, h_dim, dim - t_dim - h_dim


def sincos_3d_embedding(dim: int, grid_t: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 3D position table [grid_t*grid_h*grid_w, dim] (float32) in patchify (t, h, w) order.

  Channels are [time band | row band | column band] (`sincos_3d_bands`), each the 1D
  sin-cos features of that coordinate. Any grid size works (no learned table).
  """
  t_dim, h_dim, w_dim = sincos_3d_bands(dim)
  t, h, w = np.meshgrid(np.arange(grid_t), np.arange(grid_h), np.arange(grid_w), indexing="ij")
  emb = np.concatenate([_sincos_1d(t_dim, t), _sincos_1d(h_dim, h), _sincos_1d(w_dim, w)], axis=1)
  return emb.astype(np.float32)
