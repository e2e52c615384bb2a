"""Attention for the DiT: spacetime self-attention and text cross-attention.

Both go through `jax.nn.dot_product_attention` with a selectable
implementation (`attention_impl`):

* "xla"     -- the default; runs everywhere.
* "cudnn"   -- cuDNN flash attention on NVIDIA GPUs (bfloat16 compute; text
               padding must be on the right, passed to cuDNN as key lengths).
* "chunked" -- memory-efficient: queries are processed `query_chunk_size` at a
               time under `lax.map`, each chunk rematerialised in the backward
               pass, so the [N, N] score matrix never exists at once. The
               result equals full attention.

This module also holds `linear`, the projection layer every DiT module uses:
float32 parameters with logical axis names, inputs cast to the compute dtype,
float32 accumulation (`preferred_element_type`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models import rope as rope_lib

Initializer = Callable[..., jax.Array]
ATTENTION_IMPLS = ("xla", "cudnn", "chunked")


def linear(shape: Sequence[int], einsum_str: str, kernel_axes: Sequence[str | None],
           bias_axes: Sequence[str | None] | None, *, dtype: Any, kernel_init: Initializer,
           name: str) -> nn.Einsum:
  """A projection `einsum(inputs, kernel) + bias` with partitioned float32 params.

  Args:
    shape: kernel shape, e.g. (embed, heads, head_dim).
    einsum_str: e.g. "bnd,dhk->bnhk".
    kernel_axes / bias_axes: logical axis names (configs/base.py) of kernel and
      bias; bias_axes=None means no bias.
    dtype: compute dtype; inputs and params are cast to it, accumulation is float32.
  """
  return nn.Einsum(
      shape=tuple(shape), einsum_str=einsum_str, use_bias=bias_axes is not None,
      dtype=dtype, param_dtype=jnp.float32, preferred_element_type=jnp.float32,
      kernel_init=nn.with_logical_partitioning(kernel_init, tuple(kernel_axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(bias_axes or ())),
      name=name)


def xavier(in_axis: int | Sequence[int], out_axis: int | Sequence[int]) -> Initializer:
  """Glorot-uniform over multi-dimensional kernels (as nn.Linear's xavier_uniform_ in DiT)."""
  return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=in_axis, out_axis=out_axis)


class RMSNorm(nn.Module):
  """RMS normalisation over the last axis with a learned scale (QK norm: over head_dim)."""
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                       (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.epsilon)
    return (xf * scale).astype(x.dtype)


def _full_attention(q, k, v, mask, implementation):
  """jax.nn.dot_product_attention on [B, N, H, K] inputs; mask [B, L] bool or None."""
  if mask is None:
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  if implementation == "cudnn":
    # cuDNN takes padding as key lengths; text is right-padded, so the mask is a prefix of True.
    lengths = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], implementation=implementation)


def _chunked_attention(q, k, v, mask, chunk_size):
  """Full attention computed `chunk_size` queries at a time (pads the last chunk)."""
  b, n, h, d = q.shape
  chunk_size = max(1, min(chunk_size, n))
  num_chunks = -(-n // chunk_size)
  pad = num_chunks * chunk_size - n
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  chunks = jnp.moveaxis(q.reshape(b, num_chunks, chunk_size, h, d), 1, 0)

  @jax.checkpoint
  def attend(q_chunk):
    return _full_attention(q_chunk, k, v, mask, "xla")

  out = jax.lax.map(attend, chunks)                      # [num_chunks, B, chunk, H, K]
  out = jnp.moveaxis(out, 0, 1).reshape(b, num_chunks * chunk_size, h, d)
  return out[:, :n]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
                          impl: str = "xla", query_chunk_size: int = 1024) -> jax.Array:
  """Softmax attention; q [B, N, H, K], k/v [B, L, H, K], mask [B, L] (True = attend) -> [B, N, H, K].

  Rows whose keys are all masked return zeros (not an average of padding).
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"unknown attention_impl {impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")
  if mask is not None and mask.shape != (k.shape[0], k.shape[1]):
    raise ValueError(f"attention mask must be [B, L] = {(k.shape[0], k.shape[1])}, got {mask.shape}")
  if impl == "chunked":
    out = _chunked_attention(q, k, v, mask, query_chunk_size)
  else:
    out = _full_attention(q, k, v, mask, impl)
  if mask is not None:
    out = jnp.where(jnp.any(mask, axis=-1)[:, None, None, None], out, jnp.zeros_like(out))
  return out


class Attention(nn.Module):
  """Multi-head attention with optional QK RMSNorm and RoPE.

  Self-attention when called with `context=None`; cross-attention to
  `context` [B, L, D] (e.g. projected text tokens) with `context_mask` [B, L] otherwise.

  Attributes:
    num_heads: heads; head_dim = hidden_size / num_heads.
    qk_norm: RMSNorm on queries and keys (per head) before RoPE.
    zero_init_output: output projection starts at zero (cross-attention in a
      DiT block, so the block is the identity at initialisation).
  """
  num_heads: int
  qk_norm: bool = True
  dtype: Any = jnp.float32
  impl: str = "xla"
  query_chunk_size: int = 1024
  zero_init_output: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, context: jax.Array | None = None,
               context_mask: jax.Array | None = None,
               rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """x [B, N, D] -> [B, N, D] (float32)."""
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"hidden_size {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    source = x if context is None else context
    in_proj = dict(shape=(width, self.num_heads, head_dim), einsum_str="bnd,dhk->bnhk",
                   kernel_axes=("embed", "heads", "kv"), bias_axes=("heads", "kv"),
                   dtype=self.dtype, kernel_init=xavier(0, (1, 2)))
    q = linear(**in_proj, name="query")(x)
    k = linear(**in_proj, name="key")(source)
    v = linear(**in_proj, name="value")(source)
    if self.qk_norm:
      q = RMSNorm(name="query_norm")(q)
      k = RMSNorm(name="key_norm")(k)
    if rope is not None:
      q = rope_lib.apply_rope(q, *rope)
      k = rope_lib.apply_rope(k, *rope)
    q, k, v = (t.astype(self.dtype) for t in (q, k, v))
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    k_axes = ("activation_batch", "activation_length" if context is None else "activation_text_length",
              "activation_heads", "activation_kv")
    k = nn.with_logical_constraint(k, k_axes)
    v = nn.with_logical_constraint(v, k_axes)
    out = dot_product_attention(q, k, v, context_mask, impl=self.impl, query_chunk_size=self.query_chunk_size)
    out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads",
                                           "activation_kv"))
    out_init = nn.initializers.zeros_init() if self.zero_init_output else xavier((0, 1), 2)
    return linear((self.num_heads, head_dim, width), "bnhk,hkd->bnd", ("heads", "kv", "embed"), ("embed",),
                  dtype=self.dtype, kernel_init=out_init, name="out")(out)
