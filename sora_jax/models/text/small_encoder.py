"""A small trainable text transformer: token ids [B, L] -> token states [B, L, D] + pooled [B, D].

Trained jointly with the DiT on the synthetic domain, where a few thousand captions
over a tiny vocabulary need no pretrained language model. Pre-norm transformer
(bidirectional self-attention with a key padding mask, GELU MLP), learned absolute
positions up to `max_length`, a final LayerNorm; the pooled vector is the mean of
the token states over the mask.

The layers `Linear` and `SelfAttention` here are shared with the MiniLM encoder
(`minilm.py`): parameters carry logical axis names ('vocab', 'embed', 'heads', 'kv',
'mlp', 'norm'), matmuls accumulate in float32 whatever the compute dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

TOKEN_AXES = ("activation_batch", "activation_text_length", "activation_embed")
HEAD_AXES = ("activation_batch", "activation_text_length", "activation_heads", "activation_kv")


def layer_norm(epsilon: float, dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
  """LayerNorm with float32 params named ('norm',) and a two-pass (exact) variance."""
  return nn.LayerNorm(
    epsilon=epsilon,
    dtype=dtype,
    param_dtype=jnp.float32,
    use_fast_variance=False,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
    name=name,
  )


class Linear(nn.Module):
  """x [..., *in] @ kernel [*in, *features] (+ bias [*features]), float32 accumulation.

  `kernel_axes` names every kernel dimension (the last `num_in_axes` of x are contracted).
  """

  features: Sequence[int]
  kernel_axes: Sequence[str]
  num_in_axes: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = tuple(self.features)
    in_shape = x.shape[-self.num_in_axes :]
    if len(self.kernel_axes) != self.num_in_axes + len(features):
      raise ValueError(
        f"kernel_axes {self.kernel_axes} must name {self.num_in_axes} input and {len(features)} output dimensions"
      )
    fan_in_init = lambda key, shape, dtype: self.kernel_init(  # init as a 2D [in, out] matrix
      key, (math.prod(in_shape), math.prod(features)), dtype
    ).reshape(shape)
    kernel = self.param(
      "kernel", nn.with_logical_partitioning(fan_in_init, tuple(self.kernel_axes)), in_shape + features, jnp.float32
    )
    contract = (tuple(range(x.ndim - self.num_in_axes, x.ndim)), tuple(range(self.num_in_axes)))
    y = jax.lax.dot_general(
      x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())), preferred_element_type=jnp.float32
    )
    if self.use_bias:
      bias = self.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.kernel_axes[self.num_in_axes :])),
        features,
        jnp.float32,
      )
      y = y + bias
    return y.astype(self.dtype)


class SelfAttention(nn.Module):
  """Bidirectional multi-head self-attention over text tokens with a key padding mask.

  x [B, L, D], mask bool [B, L] (True = real token) -> [B, L, D]. Keys at padded
  positions get zero weight; queries at padded positions are computed anyway (their
  outputs are ignored downstream through the mask).
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    project = lambda name: Linear(
      (self.num_heads, head_dim), ("embed", "heads", "kv"), dtype=self.dtype, kernel_init=self.kernel_init, name=name
    )(x)
    q, k, v = (nn.with_logical_constraint(project(n), HEAD_AXES) for n in ("query", "key", "value"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(head_dim))
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32)
    context = nn.with_logical_constraint(context.astype(self.dtype), HEAD_AXES)
    return Linear(
      (width,), ("heads", "kv", "embed"), num_in_axes=2, dtype=self.dtype, kernel_init=self.kernel_init, name="out"
    )(context)


class Mlp(nn.Module):
  """x [B, L, D] -> GELU(x W1 + b1) W2 + b2, hidden width `hidden`."""

  hidden: int
  dtype: Dtype = jnp.float32
  approximate_gelu: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = Linear((self.hidden,), ("embed", "mlp"), dtype=self.dtype, kernel_init=self.kernel_init, name="up")(x)
    h = nn.with_logical_constraint(
      jax.nn.gelu(h, approximate=self.approximate_gelu),
      ("activation_batch", "activation_text_length", "activation_mlp"),
    )
    return Linear((x.shape[-1],), ("mlp", "embed"), dtype=self.dtype, kernel_init=self.kernel_init, name="down")(h)


def masked_mean(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """tokens [B, L, D], mask [B, L] -> mean over the real tokens [B, D] (float32; 0 for an empty row)."""
  weights = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(tokens.astype(jnp.float32) * weights, axis=1)
  return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)); x + mlp(LN(x))."""

  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + SelfAttention(self.num_heads, dtype=self.dtype, name="attention")(
      layer_norm(1e-6, self.dtype, name="norm_attention")(x), mask
    )
    x = x + Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(layer_norm(1e-6, self.dtype, name="norm_mlp")(x))
    return nn.with_logical_constraint(x, TOKEN_AXES)


class SmallTextEncoder(nn.Module):
  """ids int32 [B, L], mask bool [B, L] -> (tokens [B, L, width], pooled [B, width]) in float32."""

  vocab_size: int
  max_length: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    if ids.ndim != 2 or mask.shape != ids.shape:
      raise ValueError(f"expected ids and mask of shape [B, L], got {ids.shape} and {mask.shape}")
    if ids.shape[1] > self.max_length:
      raise ValueError(
        f"{ids.shape[1]} tokens exceed the learned positions (max_length={self.max_length}); "
        "tokenize with the same max_length as the encoder"
      )
    embed = nn.Embed(
      self.vocab_size,
      self.width,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
      name="token_embedding",
    )
    positions = self.param(
      "position_embedding",
      nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
      (self.max_length, self.width),
      jnp.float32,
    )
    mask = mask.astype(bool)
    x = embed(ids) + positions[None, : ids.shape[1]].astype(self.dtype)
    x = nn.with_logical_constraint(x.astype(self.dtype), TOKEN_AXES)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_ratio * self.width, dtype=self.dtype, name=f"block_{i}")(x, mask)
    tokens = layer_norm(1e-6, self.dtype, name="final_norm")(x).astype(jnp.float32)
    return tokens, masked_mean(tokens, mask)
