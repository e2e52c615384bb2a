"""Parameters and forward FLOPs of a DiT (ours or Wan 2.1's), analytically (nothing is allocated).

Conventions:
* FLOPs are counted as multiply-adds (MACs) of matmuls, as the DiT paper does
  ("Gflops": DiT-XL/2 at 256x256, latent 32x32x4, is 118.6): linear layers,
  the patch embedding, attention scores (QK^T) and the attention-weighted sum
  (AV). Norms, activations, RoPE and softmax are not counted.
* `forward_flops` = 2 x MACs (real floating-point operations); a training step
  costs about 3x the forward (4x with full rematerialisation).

`count_params` is checked against `jax.eval_shape` of the real init in
tests/test_counting.py; `count_flops` against XLA's cost analysis.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from sora_jax.models.dit import DiT
from sora_jax.models.embeddings import TIMESTEP_FEATURES
from sora_jax.models.patchify import patch_grid
from sora_jax.models.wan.transformer import WanTransformer

ModelSpec = DiT | WanTransformer | ml_collections.ConfigDict


def _as_model(spec: ModelSpec, in_channels: int | None, text_dim: int) -> DiT | WanTransformer:
  """A DiT or WanTransformer (unbound; only its attributes are read) from a module or a `config.dit` section."""
  if isinstance(spec, DiT | WanTransformer):
    return spec
  if in_channels is None:
    raise ValueError("counting from a config needs in_channels (the latent channels, e.g. config.vae.latent_channels)")
  build = {"dit": DiT.from_config, "wan2.1": WanTransformer.from_config}[spec.get("architecture", "dit")]
  return build(spec, in_channels=in_channels, text_dim=text_dim)


def _linear_params(fan_in: int, fan_out: int) -> int:
  return fan_in * fan_out + fan_out


def count_params(spec: ModelSpec, in_channels: int | None = None, text_dim: int = 0) -> dict[str, int]:
  """Trainable parameters by part, plus 'total'.

  Args:
    spec: a `DiT` or a `config.dit` ConfigDict (sizes as given).
    in_channels: latent channels (needed with a ConfigDict).
    text_dim: text encoder width (text conditioning).
  """
  m = _as_model(spec, in_channels, text_dim)
  if isinstance(m, WanTransformer):
    return _wan_params(m)
  d, mlp, heads = m.hidden_size, m.resolved_mlp_dim, m.num_heads
  head_dim = d // heads
  patch = m.patch_size[0] * m.patch_size[1] * m.patch_size[2]
  text = m.conditioning == "text"

  attention = 4 * _linear_params(d, d) + (2 * head_dim if m.qk_norm else 0)
  block = {
    "modulation": _linear_params(d, 6 * d) if m.modulation == "per_block" else 6 * d,
    "self_attention": attention,
    "cross_attention": (attention + 2 * d) if text else 0,  # + affine LayerNorm
    "mlp": _linear_params(d, mlp) + _linear_params(mlp, d),
  }
  parts = {
    "patch_embed": _linear_params(patch * m.in_channels, d),
    "timestep_embedder": _linear_params(TIMESTEP_FEATURES, d) + _linear_params(d, d),
    "label_embedder": 0 if text else (m.num_classes + 1) * d,
    "text_projection": _linear_params(m.text_dim, d) + _linear_params(d, d) if text else 0,
    "pooled_text_projection": _linear_params(m.text_dim, d) + _linear_params(d, d) if text else 0,
    "shared_modulation": _linear_params(d, 6 * d) if m.modulation == "shared" else 0,
    "blocks": m.depth * sum(block.values()),
    "final_layer": _linear_params(d, 2 * d) + _linear_params(d, patch * m.out_channels),
  }
  parts["total"] = sum(parts.values())
  return parts


def count_flops(
  spec: ModelSpec, latent_shape: Sequence[int], in_channels: int | None = None, text_dim: int = 0, text_length: int = 0
) -> dict[str, float]:
  """Forward multiply-adds of one sample by part, plus totals.

  Args:
    spec: a `DiT` or a `config.dit` ConfigDict.
    latent_shape: latent (T, H, W) of one sample (e.g. (1, 32, 32) for 256x256 with the SD VAE).
    in_channels / text_dim: as in `count_params`.
    text_length: text tokens L (text conditioning).
  Returns:
    MACs per part, 'macs' (total), 'gflops' (= macs / 1e9, the DiT paper's unit),
    'forward_flops' (2 x macs) and 'tokens' (N).
  """
  m = _as_model(spec, in_channels, text_dim)
  if isinstance(m, WanTransformer):
    return _totals(_wan_macs(m, latent_shape, text_length), m, latent_shape)
  d, mlp = m.hidden_size, m.resolved_mlp_dim
  grid = patch_grid(tuple(latent_shape), m.patch_size)
  n = grid[0] * grid[1] * grid[2]
  patch = m.patch_size[0] * m.patch_size[1] * m.patch_size[2]
  text = m.conditioning == "text"
  length = text_length if text else 0

  block = {
    "modulation": 6 * d * d if m.modulation == "per_block" else 0,
    "self_attention_projections": 4 * n * d * d,
    "self_attention_scores": 2 * n * n * d,  # QK^T and AV over all heads
    "cross_attention_projections": (2 * n * d * d + 2 * length * d * d) if text else 0,
    "cross_attention_scores": 2 * n * length * d if text else 0,
    "mlp": 2 * n * d * mlp,
  }
  parts = {
    "patch_embed": n * patch * m.in_channels * d,
    "conditioning": (
      TIMESTEP_FEATURES * d
      + d * d
      + ((m.text_dim * d + d * d) if text else 0)
      + (6 * d * d if m.modulation == "shared" else 0)
    ),
    "text_projection": length * (m.text_dim * d + d * d) if text else 0,
    "final_layer": 2 * d * d + n * d * patch * m.out_channels,
  }
  parts.update({f"blocks.{name}": m.depth * value for name, value in block.items()})
  return _totals(parts, m, latent_shape)


def _totals(parts: dict, m, latent_shape) -> dict[str, float]:
  grid = patch_grid(tuple(latent_shape), m.patch_size)
  macs = sum(parts.values())
  out = {k: float(v) for k, v in parts.items()}
  out.update(macs=float(macs), gflops=macs / 1e9, forward_flops=2.0 * macs, tokens=float(grid[0] * grid[1] * grid[2]))
  return out


def _wan_params(m: WanTransformer) -> dict[str, int]:
  """Parameters of Wan 2.1's transformer by part (diffusers' module names in brackets)."""
  d, mlp, patch = m.hidden_size, m.mlp_dim, m.patch_size[0] * m.patch_size[1] * m.patch_size[2]
  attention = 4 * _linear_params(d, d) + (2 * d if m.qk_norm else 0)  # q/k norms span all heads
  block = {
    "modulation": 6 * d,  # [scale_shift_table]
    "self_attention": attention,  # [attn1]
    "cross_attention": attention + (2 * d if m.cross_attn_norm else 0),  # [attn2, norm2]
    "mlp": _linear_params(d, mlp) + _linear_params(mlp, d),  # [ffn]
  }
  parts = {
    "patch_embed": _linear_params(patch * m.in_channels, d),  # [patch_embedding]
    "timestep_embedder": _linear_params(TIMESTEP_FEATURES, d) + _linear_params(d, d),  # [time_embedder]
    "shared_modulation": _linear_params(d, 6 * d),  # [time_proj]
    "text_projection": _linear_params(m.text_dim, d) + _linear_params(d, d),  # [text_embedder]
    "blocks": m.depth * sum(block.values()),
    "final_layer": 2 * d + _linear_params(d, patch * m.out_channels),  # [scale_shift_table, proj_out]
  }
  parts["total"] = sum(parts.values())
  return parts


def _wan_macs(m: WanTransformer, latent_shape, text_length: int) -> dict[str, float]:
  """Forward multiply-adds of Wan 2.1's transformer by part (same conventions as our DiT's)."""
  d, mlp, length = m.hidden_size, m.mlp_dim, text_length
  grid = patch_grid(tuple(latent_shape), m.patch_size)
  n = grid[0] * grid[1] * grid[2]
  patch = m.patch_size[0] * m.patch_size[1] * m.patch_size[2]
  block = {
    "self_attention_projections": 4 * n * d * d,
    "self_attention_scores": 2 * n * n * d,
    "cross_attention_projections": 2 * n * d * d + 2 * length * d * d,
    "cross_attention_scores": 2 * n * length * d,
    "mlp": 2 * n * d * mlp,
  }
  parts = {
    "patch_embed": n * patch * m.in_channels * d,
    "conditioning": TIMESTEP_FEATURES * d + d * d + 6 * d * d,
    "text_projection": length * (m.text_dim * d + d * d),
    "final_layer": n * d * patch * m.out_channels,
  }
  parts.update({f"blocks.{name}": m.depth * value for name, value in block.items()})
  return parts
