"""The Diffusion Transformer (DiT) over spacetime latent patches.

    latents [B, T, H, W, C] --patchify--> tokens [B, N, pt*ph*pw*C] --linear--> [B, N, D]
    (+ fixed 2D sin-cos positions in image mode; 3D RoPE inside attention in video mode,
     optionally plus fixed 3D sin-cos absolute positions: abs_pos_embedding="sincos3d")
    conditioning c = timestep embedding + (pooled text projection | class embedding)
    depth x DiTBlock(x, c, text)  (under nn.scan: one compiled block, params stacked on "layers")
    final adaLN + linear -> patch values -> unpatchify -> [B, T, H, W, C_out]

A block is pre-norm self-attention over all spacetime tokens (QK RMSNorm, 3D
RoPE), cross-attention to the text tokens (padding-masked), and a GELU-tanh
MLP, each modulated by adaLN-Zero: shift/scale/gate vectors regressed from c,
zero-initialised so every block is the identity at initialisation (the
cross-attention output projection is zero-initialised for the same reason).

With `pos_embedding="sincos2d"`, `conditioning="class"`, `qk_norm=False`,
patch (1, p, p) and one latent frame this is exactly the DiT paper's network
(Peebles & Xie 2023), which `convert_diffusers.py` checks against diffusers.

Activations in the residual stream stay float32; matmul inputs are cast to
`dtype` (e.g. bfloat16) with float32 accumulation; params are float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sora_jax.diffusion import block_cache as block_cache_lib
from sora_jax.models import embeddings, variants
from sora_jax.models import fused as fused_lib
from sora_jax.models import patchify as patchify_lib
from sora_jax.models import rope as rope_lib
from sora_jax.models.attention import ATTENTION_IMPLS, Attention, linear, xavier
from sora_jax.models.dtypes import DTYPE_NAMES, compute_dtype, resolve_name

REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots_saveable": jax.checkpoint_policies.dots_saveable,
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
CONDITIONINGS = ("text", "class")
POS_EMBEDDINGS = ("rope3d", "sincos2d")
ABS_POS_EMBEDDINGS = ("none", "sincos3d")
MODULATIONS = ("per_block", "shared")
NORM_EPS = 1e-6

TOKEN_AXES = ("activation_batch", "activation_length", "activation_embed")


def layer_norm(x: jax.Array, epsilon: float = NORM_EPS) -> jax.Array:
  """LayerNorm without learned affine over the last axis, in float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + epsilon)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN: x [B, N, D] * (1 + scale) + shift, shift/scale [B, 1, D] (one per example) or [B, N, D] (per token)."""
  return x * (1.0 + scale) + shift


def expand_to_tokens(mods: jax.Array, num_tokens: int) -> jax.Array:
  """Modulation [B, S, ...] of S groups of consecutive tokens -> [B, 1 or N, ...].

  S = 1 (one timestep per example) stays as is (broadcasts); S groups (e.g. one per token frame,
  tokens being frame-major) are repeated over the N / S tokens of each group.
  """
  groups = mods.shape[1]
  if groups in (1, num_tokens):
    return mods
  if num_tokens % groups:
    raise ValueError(f"{groups} timestep groups do not divide the {num_tokens} tokens")
  return jnp.repeat(mods, num_tokens // groups, axis=1)


def per_token(v: jax.Array) -> jax.Array:
  """A modulation vector [B, D] (per example) -> [B, 1, D]; [B, N, D] (per token) unchanged."""
  return v[:, None, :] if v.ndim == 2 else v


def norm_modulate(x: jax.Array, shift: jax.Array, scale: jax.Array, fused: bool, epsilon: float = NORM_EPS):
  """LN(x) * (1 + scale) + shift with shift / scale [B, D] or [B, N, D]; `fused`: `fused.layer_norm_modulate`
  (one pass backwards, fewer saved tensors), else the op-by-op form (equal to float32 rounding)."""
  shift, scale = per_token(shift), per_token(scale)
  if fused:
    return fused_lib.layer_norm_modulate(x, shift, scale, epsilon)
  return layer_norm(x, epsilon) * (1.0 + scale) + shift


def gelu(x: jax.Array, fused: bool) -> jax.Array:
  """GELU (tanh); `fused`: with the hand-written backward of `fused.gelu_tanh`."""
  return fused_lib.gelu_tanh(x) if fused else nn.gelu(x, approximate=True)


class Mlp(nn.Module):
  """[B, N, D] -> Linear(D, mlp_dim) -> GELU(tanh) -> Linear(mlp_dim, D)."""

  mlp_dim: int
  dtype: Any = jnp.float32
  fused: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = linear(
      (width, self.mlp_dim),
      "bnd,dm->bnm",
      ("embed", "mlp"),
      ("mlp",),
      dtype=self.dtype,
      kernel_init=xavier(0, 1),
      name="fc1",
      fused=self.fused,
    )(x)
    h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
    h = gelu(h, self.fused)
    return linear(
      (self.mlp_dim, width),
      "bnm,md->bnd",
      ("mlp", "embed"),
      ("embed",),
      dtype=self.dtype,
      kernel_init=xavier(0, 1),
      name="fc2",
      fused=self.fused,
    )(h)


class Modulation(nn.Module):
  """adaLN parameters [B, S, count, D] from the conditioning [B, S, D] (S timestep groups, 1 = per example).

  "per_block" (DiT): Linear(SiLU(c)) of this block, zero-initialised.
  "shared" (Wan 2.1): the model-level projection passed in (already [B, S, count, D])
  plus a learned per-block offset, zero-initialised.
  """

  count: int
  width: int
  mode: str = "per_block"
  dtype: Any = jnp.float32
  fused: bool = False

  @nn.compact
  def __call__(self, cond: jax.Array) -> jax.Array:
    if self.mode == "shared":
      offset = self.param(
        "offset",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, "embed")),
        (self.count, self.width),
        jnp.float32,
      )
      return cond + offset
    return linear(
      (cond.shape[-1], self.count, self.width),
      "bgc,csd->bgsd",
      ("cond", None, "embed"),
      (None, "embed"),
      dtype=self.dtype,
      kernel_init=nn.initializers.zeros_init(),
      name="adaln",
      fused=self.fused,
    )(cond)


class DiTBlock(nn.Module):
  """One transformer block: adaLN-Zero self-attention, cross-attention (text mode), adaLN-Zero MLP.

  Call: x [B, N, D] (float32), cond: SiLU(c) [B, S, D] ("per_block") or the shared
  projection [B, S, 6, D] ("shared") ([B, D] / [B, 6, D]: S = 1), S timestep groups (1 = one per example, else groups
  of N / S consecutive tokens, e.g. one per token frame: `expand_to_tokens`), rope (cos, sin) [N, head_dim/2] or None,
  text [B, L, D] or None, text_mask [B, L] bool or None -> x [B, N, D]
  (or (x, None) when `scanned`, the carry form nn.scan needs).
  """

  num_heads: int
  mlp_dim: int
  qk_norm: bool
  cross_attention: bool
  modulation: str = "per_block"
  dtype: Any = jnp.float32
  attention_impl: str = "xla"
  query_chunk_size: int = 1024
  scanned: bool = False
  fused: bool = False

  @nn.compact
  def __call__(self, x, cond, rope, text, text_mask):
    width = x.shape[-1]
    attention = dict(
      num_heads=self.num_heads,
      qk_norm=self.qk_norm,
      dtype=self.dtype,
      impl=self.attention_impl,
      query_chunk_size=self.query_chunk_size,
      fused=self.fused,
    )
    if cond.ndim == (2 if self.modulation == "per_block" else 3):  # one timestep per example: [B, D] / [B, 6, D]
      cond = cond[:, None]
    mods = Modulation(6, width, self.modulation, self.dtype, self.fused, name="modulation")(cond)
    mods = expand_to_tokens(mods, x.shape[1])
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mods[:, :, i] for i in range(6))

    h = norm_modulate(x, shift_msa, scale_msa, self.fused)
    h = Attention(**attention, name="self_attention")(h, rope=rope)
    x = nn.with_logical_constraint(x + per_token(gate_msa) * h, TOKEN_AXES)

    if self.cross_attention:
      h = nn.LayerNorm(
        epsilon=NORM_EPS,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name="cross_norm",
      )(x)
      h = Attention(**attention, zero_init_output=True, name="cross_attention")(h, context=text, context_mask=text_mask)
      x = nn.with_logical_constraint(x + h, TOKEN_AXES)

    h = norm_modulate(x, shift_mlp, scale_mlp, self.fused)
    h = Mlp(self.mlp_dim, self.dtype, self.fused, name="mlp")(h)
    x = nn.with_logical_constraint(x + per_token(gate_mlp) * h, TOKEN_AXES)
    return (x, None) if self.scanned else x


class FinalLayer(nn.Module):
  """adaLN (shift, scale from SiLU(c) [B, S, D]) + linear to patch values; both zero-initialised as in DiT."""

  out_features: int
  dtype: Any = jnp.float32
  fused: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    width = x.shape[-1]
    mods = linear(
      (cond.shape[-1], 2, width),
      "bgc,csd->bgsd",
      ("cond", None, "embed"),
      (None, "embed"),
      dtype=self.dtype,
      kernel_init=nn.initializers.zeros_init(),
      name="adaln",
      fused=self.fused,
    )(cond)
    mods = expand_to_tokens(mods, x.shape[1])
    x = norm_modulate(x, mods[:, :, 0], mods[:, :, 1], self.fused)
    return linear(
      (width, self.out_features),
      "bnd,dp->bnp",
      ("embed", "patch"),
      ("patch",),
      dtype=self.dtype,
      kernel_init=nn.initializers.zeros_init(),
      name="linear",
      fused=self.fused,
    )(x)


def stack_layers(layer_params: Sequence[Mapping[str, Any]]) -> Any:
  """Per-layer param trees [blocks_0, blocks_1, ...] -> one tree with a leading "layers" axis (nn.scan layout)."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *layer_params)


def unstack_layers(stacked: Any, depth: int) -> list[Any]:
  """Inverse of `stack_layers`."""
  return [jax.tree.map(lambda leaf, i=i: leaf[i], stacked) for i in range(depth)]


def block_stack(module: nn.Module, block_cls: type[nn.Module], settings: dict, num_args: int) -> Callable:
  """`module`'s stack of `module.depth` blocks `block_cls(**settings)` as a callable (x, *args) -> x, where args
  are the `num_args` inputs every block shares; call it inside `module`'s compact method.

  Rematerialised by `module.remat_policy` (REMAT_POLICIES). With `module.scan_layers`: one `nn.scan`ned
  module "blocks" whose params are stacked on a leading "layers" axis (one compiled block); else
  unrolled modules "blocks_{i}".
  """
  if module.remat_policy != "none":
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[module.remat_policy], prevent_cse=not module.scan_layers)
  if module.scan_layers:
    scanned = nn.scan(
      block_cls,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(nn.broadcast,) * num_args,
      length=module.depth,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    stack = scanned(**settings, scanned=True, name="blocks")
    return lambda *args: stack(*args)[0]
  layers = [block_cls(**settings, name=f"blocks_{i}") for i in range(module.depth)]

  def run(x, *args):
    for layer in layers:
      x = layer(x, *args)
    return x

  return run


def cached_block_stack(module: nn.Module, block: nn.Module, h: jax.Array, args: tuple, block_cache) -> tuple:
  """Runs `module`'s block stack on h through the sampler's block cache (diffusion/block_cache.py).

  The blocks run as pure functions of their own params (`block.apply` on block i's slice of the
  unrolled `blocks_{i}` or scanned `blocks` params), so the first block and the rest can sit on
  either side of the cache's `lax.cond`. block: the unscanned block module with the stack's settings;
  args: what follows x in its call; block_cache: (CacheConfig, CacheState). Returns (h, new state).
  """
  config, state = block_cache
  depth = module.depth
  params = nn.meta.unbox(module.variables["params"])
  if module.scan_layers:
    stacked = params["blocks"]
    layer = lambda i: jax.tree.map(lambda a: a[i], stacked)  # noqa: E731
  else:
    stacked = None
    layer = lambda i: params[f"blocks_{i}"]  # noqa: E731

  def first(x):
    return block.apply({"params": layer(0)}, x, *args)

  def rest(x):
    if depth == 1:
      return x
    if stacked is not None:
      tail = jax.tree.map(lambda a: a[1:], stacked)
      return jax.lax.scan(lambda y, p: (block.apply({"params": p}, y, *args), None), x, tail)[0]
    for i in range(1, depth):
      x = block.apply({"params": layer(i)}, x, *args)
    return x

  return block_cache_lib.cached_blocks(first, rest, h, state, config, first_fraction=1.0 / depth)


class DiT(nn.Module):
  """Text- or class-conditional DiT; build from a config with `DiT.from_config`.

  Call: x [B, T, H, W, C] latents, t float timesteps on the 0..1000 scale: [B] (one per example),
  [B, T] (one per latent frame: conditioning frames ride in the sequence at t = 0, see
  `sora_jax.diffusion.conditioning`) or [B, N] (one per token); each token's adaLN
  modulation comes from its own timestep (with pt > 1 a token takes its frames' largest t),
  cond: {'text' [B, L, text_dim], 'text_mask' [B, L] bool, 'pooled' [B, text_dim]}
  (text mode) or {'label' [B] int32, num_classes = null class} (class mode)
  -> [B, T, H, W, C_out] float32, C_out = 2C when learn_sigma else C.

  Attributes mirror configs/base.py `dit.*` (see there); `in_channels` is the
  latent channel count, `text_dim` the text encoder width (text mode).
  `timestep_frequency_shift` is 0 for the DiT paper and 1 for diffusers' port.
  `fused_ops` (config `dit.fused_ops`): LayerNorm + modulation, GELU and the projections through
  models/fused.py (hand-written backward passes; equal to the op-by-op form to float32 rounding).
  """

  in_channels: int
  text_dim: int = 0
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_dim: int = 0
  patch_size: tuple[int, int, int] = (1, 2, 2)
  conditioning: str = "text"
  num_classes: int = 1000
  pos_embedding: str = "rope3d"
  abs_pos_embedding: str = "none"
  qk_norm: bool = True
  learn_sigma: bool = False
  modulation: str = "per_block"
  attention_impl: str = "xla"
  query_chunk_size: int = 1024
  scan_layers: bool = True
  remat_policy: str = "none"
  dtype: str = "float32"
  timestep_frequency_shift: float = 0.0
  fused_ops: bool = True

  @classmethod
  def from_config(cls, dit_cfg: ml_collections.ConfigDict, in_channels: int, text_dim: int = 0, **overrides) -> DiT:
    """The DiT described by `config.dit` (sizes as given; see variants.apply_variant)."""
    variants.warn_if_variant_mismatch(dit_cfg)
    fields = dict(
      hidden_size=dit_cfg.hidden_size,
      depth=dit_cfg.depth,
      num_heads=dit_cfg.num_heads,
      mlp_dim=dit_cfg.mlp_dim,
      patch_size=tuple(dit_cfg.patch_size),
      conditioning=dit_cfg.conditioning,
      num_classes=dit_cfg.num_classes,
      pos_embedding=dit_cfg.pos_embedding,
      abs_pos_embedding=dit_cfg.abs_pos_embedding,
      qk_norm=dit_cfg.qk_norm,
      learn_sigma=dit_cfg.learn_sigma,
      modulation=dit_cfg.modulation,
      attention_impl=dit_cfg.attention_impl,
      query_chunk_size=dit_cfg.query_chunk_size,
      scan_layers=dit_cfg.scan_layers,
      remat_policy=dit_cfg.remat_policy,
      dtype=dit_cfg.dtype,
      fused_ops=dit_cfg.get("fused_ops", True),
    )
    fields.update(overrides)
    return cls(in_channels=in_channels, text_dim=text_dim, **fields)

  @property
  def out_channels(self) -> int:
    return 2 * self.in_channels if self.learn_sigma else self.in_channels

  @property
  def resolved_mlp_dim(self) -> int:
    return self.mlp_dim or 4 * self.hidden_size

  def check_settings(self) -> None:
    """Raises ValueError naming the wrong setting and the allowed values."""
    choices = {
      "conditioning": CONDITIONINGS,
      "pos_embedding": POS_EMBEDDINGS,
      "abs_pos_embedding": ABS_POS_EMBEDDINGS,
      "modulation": MODULATIONS,
      "attention_impl": ATTENTION_IMPLS,
      "remat_policy": tuple(REMAT_POLICIES),
      "dtype": DTYPE_NAMES,
    }
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"dit.{field}={getattr(self, field)!r} is not one of {', '.join(allowed)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"dit.hidden_size={self.hidden_size} must be divisible by dit.num_heads={self.num_heads}")
    if self.attention_impl == "cudnn" and resolve_name(self.dtype, "dit.dtype") != "bfloat16":
      raise ValueError(
        "dit.attention_impl='cudnn' runs in bfloat16: also set dit.dtype='bfloat16' (or use attention_impl='xla')"
      )
    if self.conditioning == "text" and self.text_dim <= 0:
      raise ValueError("text conditioning needs text_dim > 0 (the text encoder width)")

  def _check_inputs(self, x, t, cond) -> None:
    if x.ndim != 5 or x.shape[-1] != self.in_channels:
      raise ValueError(f"x must be latents [B, T, H, W, {self.in_channels}], got shape {x.shape}")
    b, frames = x.shape[0], x.shape[1]
    tokens = patchify_lib.num_tokens(x.shape, self.patch_size)
    if t.shape not in ((b,), (b, frames), (b, tokens)):
      raise ValueError(
        f"t must be timesteps [B] = [{b}], per latent frame [B, T] = [{b}, {frames}] or per token "
        f"[B, N] = [{b}, {tokens}]; got shape {t.shape}"
      )
    needed = ("text", "text_mask", "pooled") if self.conditioning == "text" else ("label",)
    missing = [k for k in needed if k not in cond]
    if missing:
      raise ValueError(f"{self.conditioning}-conditional DiT needs cond keys {needed}; missing {missing}")
    if self.conditioning == "text":
      b, text = x.shape[0], cond["text"]
      if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != self.text_dim:
        raise ValueError(f"cond['text'] must be [B={b}, L, text_dim={self.text_dim}], got {text.shape}")
      if cond["text_mask"].shape != text.shape[:2] or cond["text_mask"].dtype != jnp.bool_:
        raise ValueError(
          f"cond['text_mask'] must be bool [B, L] = {text.shape[:2]}, got "
          f"{cond['text_mask'].dtype} {cond['text_mask'].shape}"
        )
      if cond["pooled"].shape != (b, self.text_dim):
        raise ValueError(f"cond['pooled'] must be [B, text_dim] = {(b, self.text_dim)}, got {cond['pooled'].shape}")
    elif cond["label"].shape != (x.shape[0],):
      raise ValueError(f"cond['label'] must be [B] = [{x.shape[0]}], got {cond['label'].shape}")

  def _token_groups(self, t: jax.Array, frames: int, tokens: int) -> jax.Array:
    """Timesteps [B] / [B, T] / [B, N] -> [B, S] with S = 1, T / pt (token frames) or N (tokens)."""
    if t.ndim == 1:
      return t[:, None]
    if t.shape[1] == frames and frames != tokens:
      pt = self.patch_size[0]
      return jnp.max(t.reshape(t.shape[0], frames // pt, pt), axis=-1)  # a token is as noisy as its noisiest frame
    return t

  def _conditioning(self, t, cond, dtype):
    """Conditioning vectors c [B, S, D] (S timestep groups) and projected text tokens [B, L, D] (or None)."""
    b, groups = t.shape
    shift = self.timestep_frequency_shift
    embedder = embeddings.TimestepEmbedder(self.hidden_size, dtype, shift, name="timestep_embedder")
    c = embedder(t.reshape(-1)).reshape(b, groups, self.hidden_size)
    if self.conditioning == "class":
      labels = embeddings.LabelEmbedder(self.num_classes, self.hidden_size, name="label_embedder")(cond["label"])
      return c + labels[:, None], None
    pooled = embeddings.PooledTextProjection(self.hidden_size, dtype, name="pooled_text_projection")(cond["pooled"])
    text = embeddings.TextProjection(self.hidden_size, dtype, name="text_projection")(cond["text"])
    return c + pooled[:, None], text

  def _block_settings(self, dtype) -> dict:
    return dict(
      num_heads=self.num_heads,
      mlp_dim=self.resolved_mlp_dim,
      qk_norm=self.qk_norm,
      cross_attention=self.conditioning == "text",
      modulation=self.modulation,
      dtype=dtype,
      attention_impl=self.attention_impl,
      query_chunk_size=self.query_chunk_size,
      fused=self.fused_ops,
    )

  def _blocks(self, dtype):
    """The block stack as a callable (x, cond, rope, text, mask) -> x."""
    return block_stack(self, DiTBlock, self._block_settings(dtype), num_args=4)

  @nn.compact
  def __call__(
    self, x: jax.Array, t: jax.Array, cond: Mapping[str, jax.Array], deterministic: bool = True, block_cache=None
  ) -> jax.Array:
    """-> [B, T, H, W, C_out]; with `block_cache` = (CacheConfig, CacheState) (the samplers' cache, see
    diffusion/block_cache.py): (prediction, new CacheState)."""
    del deterministic  # no dropout; CFG dropout is done by the caller (null label / null text)
    self.check_settings()
    self._check_inputs(x, t, cond)
    dtype = compute_dtype(self.dtype, "dit.dtype")  # "auto": bf16 only with native bf16 dot products
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
    rope = None
    if self.pos_embedding == "sincos2d":
      if grid[0] != 1:
        raise ValueError(
          f"pos_embedding='sincos2d' is the DiT-paper image mode and needs one latent frame per "
          f"clip (T/pt = 1), got {grid[0]}; use pos_embedding='rope3d' for video"
        )
      h = h + jnp.asarray(embeddings.sincos_2d_embedding(width, grid[1], grid[2]))[None]
    else:
      rope = rope_lib.rope_tables(grid, width // self.num_heads)
      if self.abs_pos_embedding == "sincos3d":
        h = h + jnp.asarray(embeddings.sincos_3d_embedding(width, *grid))[None]
    h = nn.with_logical_constraint(h, TOKEN_AXES)

    c, text = self._conditioning(self._token_groups(t, x.shape[1], h.shape[1]), cond, dtype)
    c_act = nn.silu(c)
    if self.modulation == "shared":
      block_cond = linear(
        (width, 6, width),
        "bgc,csd->bgsd",
        ("cond", None, "embed"),
        (None, "embed"),
        dtype=dtype,
        kernel_init=nn.initializers.zeros_init(),
        name="shared_modulation",
      )(c_act)
    else:
      block_cond = c_act
    text_mask = cond["text_mask"] if text is not None else None
    new_cache = None
    if block_cache is not None and not self.is_initializing():
      block = DiTBlock(**self._block_settings(dtype))
      h, new_cache = cached_block_stack(self, block, h, (block_cond, rope, text, text_mask), block_cache)
    else:
      h = self._blocks(dtype)(h, block_cond, rope, text, text_mask)

    out = FinalLayer(patch_values // self.in_channels * self.out_channels, dtype, self.fused_ops, name="final_layer")(
      h, c_act
    )
    out = patchify_lib.unpatchify(out, grid, self.patch_size).astype(jnp.float32)
    return out if block_cache is None else (out, new_cache)
