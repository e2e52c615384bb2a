"""Attention for the DiT: spacetime self-attention and text cross-attention.

Implementations (`attention_impl`); all compute the same softmax attention:

* "xla"     -- the default; runs everywhere. Resolves per backend when traced:
               "einsum" on CPU, "jax_nn" on GPU/TPU (`resolve_impl`).
* "einsum"  -- plain-XLA attention in a heads-major [B, H, N, K] layout: the
               1/sqrt(K) scale folded into q, exp(logits - rowmax) left
               unnormalised, and the softmax denominator divided out AFTER the
               AV matmul (on [.., N, K] instead of [.., N, N]); the row max is a
               stop_gradient (softmax does not depend on it), so the backward
               pass has no [N, N] reductions (XLA:CPU runs those slowly). The
               q/k/v projections write the heads-major layout directly. Attention
               alone (forward + backward, [2, 256, 6, 64]) measured 30 -> 8.4 ms
               CPU time against "jax_nn" on one core. (A fused QKV matmul, the three
               kernels concatenated at compute time, measured no faster on CPU
               and is not used.)
* "jax_nn"  -- `jax.nn.dot_product_attention(implementation="xla")` on
               [B, N, H, K]; the "xla" choice on GPU/TPU.
* "cudnn"   -- cuDNN flash attention on NVIDIA GPUs via
               `jax.nn.dot_product_attention` (bfloat16 compute; text padding
               must be on the right, passed to cuDNN as key lengths).
* "chunked" -- memory-efficient: queries are processed `query_chunk_size` at a
               time under `lax.map`, each chunk rematerialised in the backward
               pass, so the [N, N] score matrix never exists at once. Each chunk
               is the "einsum" attention. The result equals full attention.

This module also holds `linear`, the projection layer every DiT module uses:
float32 parameters with logical axis names, inputs cast to the compute dtype,
float32 accumulation (`preferred_element_type`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models import fused as fused_lib
from sora_jax.models import rope as rope_lib

Initializer = Callable[..., jax.Array]
ATTENTION_IMPLS = ("xla", "einsum", "jax_nn", "cudnn", "chunked")


def linear(
  shape: Sequence[int],
  einsum_str: str,
  kernel_axes: Sequence[str | None],
  bias_axes: Sequence[str | None] | None,
  *,
  dtype: Any,
  kernel_init: Initializer,
  name: str,
  fused: bool = False,
) -> nn.Einsum:
  """A projection `einsum(inputs, kernel) + bias` with partitioned float32 params.

  Args:
    shape: kernel shape, e.g. (embed, heads, head_dim).
    einsum_str: e.g. "bnd,dhk->bnhk".
    kernel_axes / bias_axes: logical axis names (configs/base.py) of kernel and
      bias; bias_axes=None means no bias.
    dtype: compute dtype; inputs and params are cast to it, accumulation is float32.
    fused: a `fused.FusedEinsum` (same params): the backward matmuls also run in `dtype` with float32
      accumulation and the weight gradient stays float32 (see models/fused.py); equal for float32.
  """
  return (fused_lib.FusedEinsum if fused else nn.Einsum)(
    shape=tuple(shape),
    einsum_str=einsum_str,
    use_bias=bias_axes is not None,
    dtype=dtype,
    param_dtype=jnp.float32,
    preferred_element_type=jnp.float32,
    kernel_init=nn.with_logical_partitioning(kernel_init, tuple(kernel_axes)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(bias_axes or ())),
    name=name,
  )


def xavier(in_axis: int | Sequence[int], out_axis: int | Sequence[int]) -> Initializer:
  """Glorot-uniform over multi-dimensional kernels (as nn.Linear's xavier_uniform_ in DiT)."""
  return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=in_axis, out_axis=out_axis)


class RMSNorm(nn.Module):
  """RMS normalisation over the last axis with a learned scale (QK norm: over head_dim)."""

  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
      "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (x.shape[-1],), jnp.float32
    )
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.epsilon)
    return (xf * scale).astype(x.dtype)


def resolve_impl(impl: str) -> str:
  """The implementation "xla" stands for on this backend: "einsum" on CPU, "jax_nn" on GPU/TPU.

  Other names are returned unchanged (after checking them).
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"unknown attention_impl {impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")
  if impl == "xla":
    return "einsum" if jax.default_backend() == "cpu" else "jax_nn"
  return impl


def heads_major(impl: str) -> bool:
  """Whether `impl` (after `resolve_impl`) works on heads-major [B, H, N, K] tensors."""
  return resolve_impl(impl) in ("einsum", "chunked")


def _expand_mask(mask):
  """[B, L] (per key) or [B, N, L] (per query and key, e.g. packed segments) -> broadcastable to [B, H, N, L]."""
  return mask[:, None, None, :] if mask.ndim == 2 else mask[:, None, :, :]


def _dot(spec: str, a, b, fused: bool):
  """einsum with float32 accumulation in the inputs' dtype; `fused`: also backwards (`fused.mixed_einsum`)."""
  if fused:
    return fused_lib.mixed_einsum(spec, a, b, b.dtype)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _einsum_attention(q, k, v, mask, fused: bool = False):
  """Softmax attention in the heads-major layout: q [B, H, N, K], k/v [B, H, L, K], mask [B, L], [B, N, L] or None.

  Logits, softmax statistics and the AV accumulation are float32; the result has q's dtype.
  Rows whose keys are all masked come out as the mean of v (the caller zeroes them).
  """
  scale = q.shape[-1] ** -0.5
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  logits = _dot("bhnk,bhlk->bhnl", q, k, fused)
  if mask is not None:
    logits = jnp.where(_expand_mask(mask), logits, jnp.finfo(jnp.float32).min)
  # Softmax is invariant to the shift, so the row max needs no gradient: no [N, L] reductions backwards.
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits - row_max)  # unnormalised, in (0, 1]; the max is 1
  denominator = jnp.sum(weights, axis=-1, keepdims=True)  # >= 1
  out = _dot("bhnl,bhlk->bhnk", weights.astype(v.dtype), v, fused)
  return (out / denominator).astype(q.dtype)


def _jax_nn_attention(q, k, v, mask, implementation):
  """jax.nn.dot_product_attention on [B, N, H, K] inputs; mask [B, L] or [B, N, L] bool, or None."""
  if mask is None:
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  if implementation == "cudnn" and mask.ndim == 3:
    raise ValueError("attention_impl='cudnn' takes key padding only, not per-query masks (packed segments)")
  if implementation == "cudnn":
    # cuDNN takes padding as key lengths; text is right-padded, so the mask is a prefix of True.
    lengths = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")
  return jax.nn.dot_product_attention(q, k, v, mask=_expand_mask(mask), implementation=implementation)


def _chunked_attention(q, k, v, mask, chunk_size, fused: bool = False):
  """Heads-major `_einsum_attention` computed `chunk_size` queries at a time (pads the last chunk)."""
  b, h, n, d = q.shape
  chunk_size = max(1, min(chunk_size, n))
  num_chunks = -(-n // chunk_size)
  pad = num_chunks * chunk_size - n
  q = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
  chunks = jnp.moveaxis(q.reshape(b, h, num_chunks, chunk_size, d), 2, 0)
  if mask is not None and mask.ndim == 3:  # per-query rows travel with their queries
    mask_rows = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)), constant_values=True)
    mask_rows = jnp.moveaxis(mask_rows.reshape(b, num_chunks, chunk_size, -1), 1, 0)

    @jax.checkpoint
    def attend_rows(args):
      return _einsum_attention(args[0], k, v, args[1], fused)

    out = jax.lax.map(attend_rows, (chunks, mask_rows))
  else:

    @jax.checkpoint
    def attend(q_chunk):
      return _einsum_attention(q_chunk, k, v, mask, fused)

    out = jax.lax.map(attend, chunks)  # [num_chunks, B, H, chunk, K]
  out = jnp.moveaxis(out, 0, 2).reshape(b, h, num_chunks * chunk_size, d)
  return out[:, :, :n]


_TO_HEADS_MAJOR = (0, 2, 1, 3)  # [B, N, H, K] <-> [B, H, N, K] (its own inverse)


def dot_product_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  mask: jax.Array | None = None,
  *,
  impl: str = "xla",
  query_chunk_size: int = 1024,
  layout: str = "bnhk",
  fused: bool = False,
) -> jax.Array:
  """Softmax attention; q [B, N, H, K], k/v [B, L, H, K], mask [B, L] or [B, N, L] (True = attend) -> [B, N, H, K].

  With layout="bhnk" inputs and output are heads-major instead: q [B, H, N, K], k/v [B, H, L, K]
  (what `Attention` passes to the "einsum" and "chunked" implementations, which work in it).
  Rows whose keys are all masked return zeros (not an average of padding). `fused`: the "einsum" and
  "chunked" matmuls run their backward in the inputs' dtype too (`fused.mixed_einsum`).
  """
  impl = resolve_impl(impl)
  if layout not in ("bnhk", "bhnk"):
    raise ValueError(f"layout must be 'bnhk' or 'bhnk', got {layout!r}")
  key_length = k.shape[1] if layout == "bnhk" else k.shape[2]
  query_length = q.shape[1] if layout == "bnhk" else q.shape[2]
  allowed = ((k.shape[0], key_length), (k.shape[0], query_length, key_length))
  if mask is not None and mask.shape not in allowed:
    raise ValueError(f"attention mask must be [B, L] = {allowed[0]} or [B, N, L] = {allowed[1]}, got {mask.shape}")
  wants = "bhnk" if impl in ("einsum", "chunked") else "bnhk"
  if layout != wants:
    q, k, v = (jnp.transpose(t, _TO_HEADS_MAJOR) for t in (q, k, v))
  if impl == "chunked":
    out = _chunked_attention(q, k, v, mask, query_chunk_size, fused)
  elif impl == "einsum":
    out = _einsum_attention(q, k, v, mask, fused)
  else:
    out = _jax_nn_attention(q, k, v, mask, "cudnn" if impl == "cudnn" else "xla")
  if layout != wants:
    out = jnp.transpose(out, _TO_HEADS_MAJOR)
  if mask is not None:
    if mask.ndim == 2:
      out = jnp.where(jnp.any(mask, axis=-1)[:, None, None, None], out, jnp.zeros_like(out))
    else:  # [B, N] rows with no key
      rows = jnp.any(mask, axis=-1)
      rows = rows[:, :, None, None] if layout == "bnhk" else rows[:, None, :, None]
      out = jnp.where(rows, out, jnp.zeros_like(out))
  return out


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
  """Packed sequences (NaViT): bool [B, N, L], True where query n and key l belong to the same clip.

  query_segments int [B, N], key_segments int [B, L]: each token's clip id within its row; ids < 0 mark padding
  (attends to nothing, is attended by nothing).
  """
  same = query_segments[:, :, None] == key_segments[:, None, :]
  return same & (query_segments[:, :, None] >= 0) & (key_segments[:, None, :] >= 0)


class Attention(nn.Module):
  """Multi-head attention with optional QK RMSNorm and RoPE.

  Self-attention when called with `context=None`; cross-attention to
  `context` [B, L, D] (e.g. projected text tokens) with `context_mask` [B, L] otherwise.
  Params: query/key/value kernels [D, H, K] + biases [H, K], out kernel [H, K, D] + bias [D]
  (the same for every `impl`; see the module docstring for the layouts each impl computes in).

  Attributes:
    num_heads: heads; head_dim = hidden_size / num_heads.
    qk_norm: RMSNorm on queries and keys (per head) before RoPE.
    zero_init_output: output projection starts at zero (cross-attention in a
      DiT block, so the block is the identity at initialisation).
    fused: projections through `fused.FusedEinsum` (bf16 backward matmuls; see `linear`).
  """

  num_heads: int
  qk_norm: bool = True
  dtype: Any = jnp.float32
  impl: str = "xla"
  query_chunk_size: int = 1024
  zero_init_output: bool = False
  fused: bool = False

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    *,
    context: jax.Array | None = None,
    context_mask: jax.Array | None = None,
    rope: tuple[jax.Array, jax.Array] | None = None,
    segment_ids: tuple[jax.Array, jax.Array] | None = None,
  ) -> jax.Array:
    """x [B, N, D] -> [B, N, D] (float32).

    segment_ids: (query ids int [B, N], key ids int [B, L]) of packed sequences: a token attends only to
    tokens of its own clip (`segment_mask`), combined with `context_mask`.
    """
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"hidden_size {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    layout = "bhnk" if heads_major(self.impl) else "bnhk"
    in_proj = dict(
      shape=(width, self.num_heads, head_dim),
      einsum_str=f"bnd,dhk->{layout}",
      kernel_axes=("embed", "heads", "kv"),
      bias_axes=("heads", "kv"),
      dtype=self.dtype,
      kernel_init=xavier(0, (1, 2)),
      fused=self.fused,
    )
    source = x if context is None else context
    q = linear(**in_proj, name="query")(x)
    k = linear(**in_proj, name="key")(source)
    v = linear(**in_proj, name="value")(source)
    if self.qk_norm:
      q = RMSNorm(name="query_norm")(q)
      k = RMSNorm(name="key_norm")(k)
    if rope is not None:
      q = rope_lib.apply_rope(q, *rope, heads_major=layout == "bhnk")
      k = rope_lib.apply_rope(k, *rope, heads_major=layout == "bhnk")
    q, k, v = (t.astype(self.dtype) for t in (q, k, v))

    def constrain(t, length_axis):
      axes = ("activation_batch", length_axis, "activation_heads", "activation_kv")
      if layout == "bhnk":
        axes = (axes[0], axes[2], axes[1], axes[3])
      return nn.with_logical_constraint(t, axes)

    q = constrain(q, "activation_length")
    k_length = "activation_length" if context is None else "activation_text_length"
    k, v = constrain(k, k_length), constrain(v, k_length)
    mask = context_mask
    if segment_ids is not None:
      mask = segment_mask(*segment_ids)
      if context_mask is not None:
        mask = mask & context_mask[:, None, :]
    out = dot_product_attention(
      q, k, v, mask, impl=self.impl, query_chunk_size=self.query_chunk_size, layout=layout, fused=self.fused
    )
    out = constrain(out, "activation_length")
    out_init = nn.initializers.zeros_init() if self.zero_init_output else xavier((0, 1), 2)
    return linear(
      (self.num_heads, head_dim, width),
      f"{layout},hkd->bnd",
      ("heads", "kv", "embed"),
      ("embed",),
      dtype=self.dtype,
      kernel_init=out_init,
      name="out",
      fused=self.fused,
    )(out)
