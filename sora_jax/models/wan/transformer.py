"""Wan 2.1's video transformer: the network of diffusers' `WanTransformer3DModel`, in Flax.

    latents [B, T, H, W, C] --patchify (1, 2, 2)--> tokens [B, N, pt*ph*pw*C] --linear--> [B, N, D]
    temb = MLP(sincos(t))                  [B, D]      (t on the 0..1000 scale)
    proj = Linear(SiLU(temb)) -> [B, 6, D]             (one projection shared by all blocks)
    text = MLP_gelu_tanh(umT5 states)      [B, L, D]
    depth x block:
      shift, scale, gate (x2) = proj + block.scale_shift_table [6, D]
      x += gate * SelfAttn(LN(x) * (1 + scale) + shift)      RMS-norm of q, k across all heads, 3D RoPE
      x += CrossAttn(LN_affine(x), text)                      no text mask (Wan zero-pads the text)
      x += gate' * FFN_gelu_tanh(LN(x) * (1 + scale') + shift')
    shift, scale = temb + scale_shift_table [2, D];  out = Linear(LN(x) * (1 + scale) + shift)
    -> unpatchify -> [B, T, H, W, C]

Where it differs from our `DiT` (models/dit.py): no pooled text vector, no adaLN zero-init, the
q/k norm spans all heads (not one head), RoPE rotates adjacent pairs (2j, 2j+1) of each head
dimension instead of (j, j + K/2) (same bands and frequencies as `rope.py`), the output
modulation reads the raw timestep embedding, and cross-attention has an affine LayerNorm and no
mask. Parameter names follow diffusers' module names, so the weight table
(`weights.TRANSFORMER`) is one line per tensor. Called like our DiT
(`apply(params, x, t, cond)` with cond {'text', 'text_mask', 'pooled'}; the mask and pooled
vector are accepted and unused), so training, sampling and guidance work unchanged.

Activations in the residual stream are float32; matmul inputs are cast to `dtype` with float32
accumulation. Parameters are float32 unless loaded in another dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sora_jax.models import embeddings
from sora_jax.models import patchify as patchify_lib
from sora_jax.models import rope as rope_lib
from sora_jax.models.attention import ATTENTION_IMPLS, dot_product_attention, heads_major, linear, xavier
from sora_jax.models.dit import (
  REMAT_POLICIES,
  TOKEN_AXES,
  Mlp,
  Modulation,
  block_stack,
  cached_block_stack,
  norm_modulate,
)
from sora_jax.models.dtypes import DTYPE_NAMES, compute_dtype, resolve_name

ARCHITECTURE = "wan2.1"
TIME_FREQUENCIES = embeddings.TIMESTEP_FEATURES  # diffusers' freq_dim (256 in every Wan 2.1 config)


def apply_interleaved_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, *, heads_major_layout: bool) -> jax.Array:
  """Rotates the pairs (2j, 2j+1) of the last axis of x by angle j (tables [N, K/2]); float32 math.

  x is [B, N, H, K] or, with heads_major_layout, [B, H, N, K]. The same rotation as
  `rope.apply_rope` with the head dimensions permuted, which is how Wan stores q and k.
  """
  k = x.shape[-1]
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], k // 2, 2)
  x1, x2 = xf[..., 0], xf[..., 1]
  if heads_major_layout:
    cos, sin = cos[None, None], sin[None, None]
  else:
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


class HeadsRMSNorm(nn.Module):
  """RMS norm of q or k over all heads at once ([.., H, .., K] -> normalised over H*K), learned scale [H, K]."""

  epsilon: float = 1e-6
  heads_axis: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    heads, head_dim = x.shape[self.heads_axis], x.shape[-1]
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones_init(), ("heads", "kv")),
      (heads, head_dim),
      jnp.float32,
    )
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=(self.heads_axis, -1), keepdims=True) + self.epsilon)
    shape = [1] * x.ndim
    shape[self.heads_axis], shape[-1] = heads, head_dim
    return (xf * scale.astype(jnp.float32).reshape(shape)).astype(x.dtype)


class WanAttention(nn.Module):
  """Wan's attention: q/k/v/out projections with biases, optional q/k RMS norm across heads, RoPE.

  Call: x [B, N, D], context [B, L, D] (cross-attention) or None (self), rope (cos, sin) [N, K/2]
  or None -> [B, N, D] float32. Params: query/key/value kernels [D, H, K] + biases [H, K], out
  kernel [H, K, D] + bias [D], query_norm/key_norm scales [H, K].
  """

  num_heads: int
  qk_norm: bool = True
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  impl: str = "xla"
  query_chunk_size: int = 1024
  fused: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, rope=None) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    hm = heads_major(self.impl)
    layout = "bhnk" if hm else "bnhk"
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
      q = HeadsRMSNorm(self.epsilon, heads_axis=1 if hm else 2, name="query_norm")(q)
      k = HeadsRMSNorm(self.epsilon, heads_axis=1 if hm else 2, name="key_norm")(k)
    if rope is not None:
      q = apply_interleaved_rope(q, *rope, heads_major_layout=hm)
      k = apply_interleaved_rope(k, *rope, heads_major_layout=hm)
    q, k, v = (t.astype(self.dtype) for t in (q, k, v))

    def constrain(t, length_axis):
      axes = ("activation_batch", length_axis, "activation_heads", "activation_kv")
      if hm:
        axes = (axes[0], axes[2], axes[1], axes[3])
      return nn.with_logical_constraint(t, axes)

    q = constrain(q, "activation_length")
    kv_length = "activation_length" if context is None else "activation_text_length"
    k, v = constrain(k, kv_length), constrain(v, kv_length)
    out = dot_product_attention(
      q, k, v, None, impl=self.impl, query_chunk_size=self.query_chunk_size, layout=layout, fused=self.fused
    )
    out = constrain(out, "activation_length")
    return linear(
      (self.num_heads, head_dim, width),
      f"{layout},hkd->bnd",
      ("heads", "kv", "embed"),
      ("embed",),
      dtype=self.dtype,
      kernel_init=xavier((0, 1), 2),
      name="out",
      fused=self.fused,
    )(out)


class WanBlock(nn.Module):
  """One Wan block: modulated self-attention, cross-attention to the text, modulated FFN.

  Call: x [B, N, D] (float32), proj [B, 6, D] (the shared timestep projection), rope tables,
  text [B, L, D] -> x [B, N, D] (or (x, None) when `scanned`, nn.scan's carry form).
  """

  num_heads: int
  mlp_dim: int
  qk_norm: bool = True
  cross_attn_norm: bool = True
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  attention_impl: str = "xla"
  query_chunk_size: int = 1024
  scanned: bool = False
  fused: bool = False

  @nn.compact
  def __call__(self, x, proj, rope, text):
    width = x.shape[-1]
    attention = dict(
      num_heads=self.num_heads,
      qk_norm=self.qk_norm,
      epsilon=self.epsilon,
      dtype=self.dtype,
      impl=self.attention_impl,
      query_chunk_size=self.query_chunk_size,
      fused=self.fused,
    )
    # diffusers: scale_shift_table [1, 6, D] + proj, in float32 ("offset" of a shared Modulation).
    mods = Modulation(6, width, "shared", self.dtype, name="modulation")(proj.astype(jnp.float32))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mods[:, i, None, :] for i in range(6))

    h = norm_modulate(x, shift_msa, scale_msa, self.fused, self.epsilon)
    h = WanAttention(**attention, name="self_attention")(h, rope=rope)
    x = nn.with_logical_constraint(x + h * gate_msa, TOKEN_AXES)

    h = x
    if self.cross_attn_norm:
      h = nn.LayerNorm(
        epsilon=self.epsilon,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name="cross_norm",
      )(x)
    h = WanAttention(**attention, name="cross_attention")(h, context=text)
    x = nn.with_logical_constraint(x + h, TOKEN_AXES)

    h = norm_modulate(x, shift_mlp, scale_mlp, self.fused, self.epsilon)
    h = Mlp(self.mlp_dim, self.dtype, self.fused, name="mlp")(h)
    x = nn.with_logical_constraint(x + h * gate_mlp, TOKEN_AXES)
    return (x, None) if self.scanned else x


class WanTransformer(nn.Module):
  """Wan 2.1's text-to-video transformer; build with `from_config` or `from_diffusers_config`.

  Call: x [B, T, H, W, C] latents, t [B] float timesteps on the 0..1000 scale, cond
  {'text' [B, L, text_dim], ...} -> [B, T, H, W, C] float32.

  Attributes (diffusers' config name in brackets): in_channels [in_channels = out_channels],
  text_dim [text_dim], hidden_size [num_attention_heads * attention_head_dim], depth
  [num_layers], num_heads [num_attention_heads], mlp_dim [ffn_dim], patch_size [patch_size],
  qk_norm [qk_norm = "rms_norm_across_heads"], cross_attn_norm, epsilon [eps]; and ours:
  attention_impl, query_chunk_size, scan_layers, remat_policy, dtype, fused_ops (as `DiT`).
  """

  in_channels: int = 16
  text_dim: int = 4096
  hidden_size: int = 1536
  depth: int = 30
  num_heads: int = 12
  mlp_dim: int = 8960
  patch_size: tuple[int, int, int] = (1, 2, 2)
  qk_norm: bool = True
  cross_attn_norm: bool = True
  epsilon: float = 1e-6
  attention_impl: str = "xla"
  query_chunk_size: int = 1024
  scan_layers: bool = True
  remat_policy: str = "none"
  dtype: str = "float32"
  fused_ops: bool = True

  # The DiT interface other parts of the library read.
  conditioning = "text"
  learn_sigma = False
  architecture = ARCHITECTURE

  @classmethod
  def from_config(
    cls, dit_cfg: ml_collections.ConfigDict, in_channels: int, text_dim: int = 0, **overrides
  ) -> WanTransformer:
    """The transformer described by `config.dit` (architecture "wan2.1"; sizes as given)."""
    fields = dict(
      hidden_size=dit_cfg.hidden_size,
      depth=dit_cfg.depth,
      num_heads=dit_cfg.num_heads,
      mlp_dim=dit_cfg.mlp_dim,
      patch_size=tuple(dit_cfg.patch_size),
      qk_norm=dit_cfg.qk_norm,
      attention_impl=dit_cfg.attention_impl,
      query_chunk_size=dit_cfg.query_chunk_size,
      scan_layers=dit_cfg.scan_layers,
      remat_policy=dit_cfg.remat_policy,
      dtype=dit_cfg.dtype,
      fused_ops=dit_cfg.get("fused_ops", True),
    )
    fields.update(overrides)
    return cls(in_channels=in_channels, text_dim=text_dim, **fields)

  @classmethod
  def from_diffusers_config(cls, config: Mapping[str, Any], **overrides) -> WanTransformer:
    """The transformer of a diffusers `WanTransformer3DModel` config.json (a dict); overrides win.

    Raises ValueError for the parts of the diffusers class we do not implement (image
    conditioning of the I2V models, other q/k norms, a time embedding of another width).
    """
    config = dict(config)
    unsupported = {
      "image_dim": config.get("image_dim"),
      "added_kv_proj_dim": config.get("added_kv_proj_dim"),
      "pos_embed_seq_len": config.get("pos_embed_seq_len"),
    }
    unsupported = {k: v for k, v in unsupported.items() if v is not None}
    if unsupported:
      raise ValueError(
        f"this WanTransformer3DModel config uses {unsupported}: image conditioning (Wan I2V / FLF2V) is not "
        f"implemented; only the text-to-video transformer (Wan 2.1 T2V) converts"
      )
    if config.get("qk_norm", "rms_norm_across_heads") not in ("rms_norm_across_heads", None):
      raise ValueError(f"qk_norm={config['qk_norm']!r} is not implemented; Wan 2.1 uses 'rms_norm_across_heads'")
    if config.get("freq_dim", TIME_FREQUENCIES) != TIME_FREQUENCIES:
      raise ValueError(f"freq_dim={config['freq_dim']} is not implemented; Wan 2.1 uses {TIME_FREQUENCIES}")
    in_channels = config.get("in_channels", 16)
    if (config.get("out_channels") or in_channels) != in_channels:
      raise ValueError(f"out_channels={config['out_channels']} != in_channels={in_channels} is not implemented")
    heads = config.get("num_attention_heads", 40)
    fields = dict(
      in_channels=in_channels,
      text_dim=config.get("text_dim", 4096),
      hidden_size=heads * config.get("attention_head_dim", 128),
      depth=config.get("num_layers", 40),
      num_heads=heads,
      mlp_dim=config.get("ffn_dim", 13824),
      patch_size=tuple(config.get("patch_size", (1, 2, 2))),
      qk_norm=config.get("qk_norm", "rms_norm_across_heads") is not None,
      cross_attn_norm=bool(config.get("cross_attn_norm", True)),
      epsilon=float(config.get("eps", 1e-6)),
    )
    fields.update(overrides)
    return cls(**fields)

  def diffusers_config(self) -> dict:
    """The diffusers `WanTransformer3DModel` config (constructor arguments) of this transformer."""
    return {
      "patch_size": list(self.patch_size),
      "num_attention_heads": self.num_heads,
      "attention_head_dim": self.hidden_size // self.num_heads,
      "in_channels": self.in_channels,
      "out_channels": self.in_channels,
      "text_dim": self.text_dim,
      "freq_dim": TIME_FREQUENCIES,
      "ffn_dim": self.mlp_dim,
      "num_layers": self.depth,
      "cross_attn_norm": self.cross_attn_norm,
      "qk_norm": "rms_norm_across_heads" if self.qk_norm else None,
      "eps": self.epsilon,
      "image_dim": None,
      "added_kv_proj_dim": None,
      "rope_max_seq_len": 1024,
      "pos_embed_seq_len": None,
    }

  @property
  def out_channels(self) -> int:
    return self.in_channels

  @property
  def resolved_mlp_dim(self) -> int:
    return self.mlp_dim

  def check_settings(self) -> None:
    """Raises ValueError naming the wrong setting and the allowed values."""
    choices = {"attention_impl": ATTENTION_IMPLS, "remat_policy": tuple(REMAT_POLICIES), "dtype": DTYPE_NAMES}
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"dit.{field}={getattr(self, field)!r} is not one of {', '.join(allowed)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"dit.hidden_size={self.hidden_size} must be divisible by dit.num_heads={self.num_heads}")
    rope_lib.band_sizes(self.hidden_size // self.num_heads)  # raises for head dims RoPE cannot split
    if self.mlp_dim <= 0:
      raise ValueError(f"dit.mlp_dim={self.mlp_dim} must be set for the Wan architecture (1.3B: 8960, 14B: 13824)")
    if self.text_dim <= 0:
      raise ValueError("the Wan transformer needs text_dim > 0 (the text encoder width; umT5-XXL: 4096)")
    if self.attention_impl == "cudnn" and resolve_name(self.dtype, "dit.dtype") != "bfloat16":
      raise ValueError("dit.attention_impl='cudnn' runs in bfloat16: also set dit.dtype='bfloat16'")

  def _check_inputs(self, x, t, cond) -> None:
    if x.ndim != 5 or x.shape[-1] != self.in_channels:
      raise ValueError(f"x must be latents [B, T, H, W, {self.in_channels}], got shape {x.shape}")
    if t.shape != (x.shape[0],):
      raise ValueError(f"t must be timesteps [B] = [{x.shape[0]}], got shape {t.shape}")
    if "text" not in cond:
      raise ValueError(f"the Wan transformer needs cond['text'] [B, L, {self.text_dim}]; got keys {sorted(cond)}")
    text = cond["text"]
    if text.ndim != 3 or text.shape[0] != x.shape[0] or text.shape[-1] != self.text_dim:
      raise ValueError(f"cond['text'] must be [B={x.shape[0]}, L, text_dim={self.text_dim}], got {text.shape}")

  def _block_settings(self, dtype) -> dict:
    return dict(
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      qk_norm=self.qk_norm,
      cross_attn_norm=self.cross_attn_norm,
      epsilon=self.epsilon,
      dtype=dtype,
      attention_impl=self.attention_impl,
      query_chunk_size=self.query_chunk_size,
      fused=self.fused_ops,
    )

  def _blocks(self, dtype):
    """The block stack as a callable (x, proj, rope, text) -> x."""
    return block_stack(self, WanBlock, self._block_settings(dtype), num_args=3)

  @nn.compact
  def __call__(
    self, x: jax.Array, t: jax.Array, cond: Mapping[str, jax.Array], deterministic: bool = True, block_cache=None
  ) -> jax.Array:
    """-> [B, T, H, W, C]; with `block_cache` (the samplers' cache, as `DiT`): (prediction, new CacheState)."""
    del deterministic  # no dropout
    self.check_settings()
    self._check_inputs(x, t, cond)
    dtype = compute_dtype(self.dtype, "dit.dtype")
    width = self.hidden_size

    tokens, grid = patchify_lib.patchify(x, self.patch_size)
    tokens = nn.with_logical_constraint(tokens, ("activation_batch", "activation_length", None))
    patch_values = tokens.shape[-1]
    h = linear(
      (patch_values, width),
      "bnp,pd->bnd",
      ("patch", "embed"),
      ("embed",),
      dtype=dtype,
      kernel_init=xavier(0, 1),
      name="patch_embed",
    )(tokens)
    h = nn.with_logical_constraint(h, TOKEN_AXES)
    rope = rope_lib.rope_tables(grid, width // self.num_heads)

    temb = embeddings.TimestepEmbedder(width, dtype, name="time_embedder")(t)
    proj = linear(
      (width, 6, width),
      "bc,csd->bsd",
      ("cond", None, "embed"),
      (None, "embed"),
      dtype=dtype,
      kernel_init=nn.initializers.zeros_init(),
      name="time_projection",
    )(nn.silu(temb))
    text = embeddings.TextProjection(width, dtype, name="text_embedder")(cond["text"])

    new_cache = None
    if block_cache is not None and not self.is_initializing():
      block = WanBlock(**self._block_settings(dtype))
      h, new_cache = cached_block_stack(self, block, h, (proj, rope, text), block_cache)
    else:
      h = self._blocks(dtype)(h, proj, rope, text)

    table = self.param(
      "scale_shift_table",
      nn.with_logical_partitioning(nn.initializers.normal(width**-0.5), (None, "embed")),
      (2, width),
      jnp.float32,
    )
    shift, scale = ((table[None, i] + temb)[:, None, :] for i in range(2))
    h = norm_modulate(h, shift, scale, self.fused_ops, self.epsilon)
    out = linear(
      (width, patch_values // self.in_channels * self.out_channels),
      "bnd,dp->bnp",
      ("embed", "patch"),
      ("patch",),
      dtype=dtype,
      kernel_init=nn.initializers.zeros_init(),
      name="proj_out",
      fused=self.fused_ops,
    )(h)
    out = patchify_lib.unpatchify(out, grid, self.patch_size).astype(jnp.float32)
    return out if block_cache is None else (out, new_cache)


def num_params(model: WanTransformer) -> int:
  """Parameters of `model`, from the shapes of its init (nothing is allocated)."""
  x = jax.ShapeDtypeStruct(
    (1, model.patch_size[0], 2 * model.patch_size[1], 2 * model.patch_size[2], model.in_channels), jnp.float32
  )
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  cond = {"text": jax.ShapeDtypeStruct((1, 1, model.text_dim), jnp.float32)}
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, cond)
  return sum(int(a.size) for a in jax.tree.leaves(nn.meta.unbox(shapes["params"])))
