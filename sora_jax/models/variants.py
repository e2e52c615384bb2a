"""Named DiT sizes: the DiT paper's twelve image models and our video models.

`VARIANTS[name]` holds the `config.dit` fields a variant sets. Config files
call `apply_variant(c.dit)` inside `get_config()`, so the saved config holds
the real sizes and `--config.dit.*` overrides on the command line still win.

Paper models (Peebles & Xie 2023, Table 4): DiT-{S,B,L,XL}/{2,4,8}, class-
conditional on ImageNet's 1000 classes, fixed 2D sin-cos positions, no QK
norm, learned sigma, on the SD image VAE latent (8x spatial, 4 channels).

Video models: text-conditional, 3D RoPE, QK RMSNorm, patch (1, 2, 2):
"video-tiny" (CPU demo), "video-S", "wan-small" (the Wan-like shape of the
diffusers benchmark), "wan-1.3b" and "wan-14b" (Wan 2.1 shapes).
`REFERENCE_INPUTS` gives the latent/text setting each family is meant for
(used by tools/estimate.py when only a model name is given).
"""

from __future__ import annotations

import logging

import ml_collections

_PAPER = dict(
  conditioning="class",
  num_classes=1000,
  pos_embedding="sincos2d",
  qk_norm=False,
  learn_sigma=True,
  mlp_dim=0,
  modulation="per_block",
)
_PAPER_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
_VIDEO = dict(conditioning="text", pos_embedding="rope3d", qk_norm=True, learn_sigma=False, patch_size=(1, 2, 2))

VARIANTS: dict[str, dict] = {
  f"DiT-{size}/{p}": dict(depth=depth, hidden_size=width, num_heads=heads, patch_size=(1, p, p), **_PAPER)
  for size, (depth, width, heads) in _PAPER_SIZES.items()
  for p in (2, 4, 8)
}
VARIANTS.update(
  {
    "video-tiny": dict(depth=4, hidden_size=128, num_heads=4, mlp_dim=512, modulation="per_block", **_VIDEO),
    "video-S": dict(depth=12, hidden_size=384, num_heads=6, mlp_dim=1536, modulation="per_block", **_VIDEO),
    "wan-small": dict(depth=8, hidden_size=384, num_heads=6, mlp_dim=1536, modulation="shared", **_VIDEO),
    "wan-1.3b": dict(depth=30, hidden_size=1536, num_heads=12, mlp_dim=8960, modulation="shared", **_VIDEO),
    "wan-14b": dict(depth=40, hidden_size=5120, num_heads=40, mlp_dim=13824, modulation="shared", **_VIDEO),
  }
)

# The inputs each variant family is sized for: latent channels, VAE compression, text encoder width/length.
_SD_IMAGE_VAE = dict(latent_channels=4, spatial_factor=8, temporal_factor=1, text_dim=0, text_length=0)
_OUR_VAE = dict(latent_channels=16, spatial_factor=8, temporal_factor=4)
REFERENCE_INPUTS: dict[str, dict] = {name: _SD_IMAGE_VAE for name in VARIANTS if name.startswith("DiT-")}
REFERENCE_INPUTS.update(
  {
    "video-tiny": dict(_OUR_VAE, text_dim=128, text_length=32),  # small trainable text encoder
    "video-S": dict(_OUR_VAE, text_dim=384, text_length=32),  # all-MiniLM-L6-v2
    "wan-small": dict(_OUR_VAE, text_dim=384, text_length=32),
    "wan-1.3b": dict(_OUR_VAE, text_dim=4096, text_length=512),  # umT5-XXL, as Wan 2.1
    "wan-14b": dict(_OUR_VAE, text_dim=4096, text_length=512),
  }
)


def variant_fields(name: str) -> dict:
  """The `config.dit` fields of variant `name`; unknown names raise ValueError listing the known ones."""
  if name not in VARIANTS:
    raise ValueError(f"unknown DiT variant {name!r}; known variants: {', '.join(VARIANTS)}")
  return dict(VARIANTS[name])


def apply_variant(dit_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `dit_cfg` with the sizes of `dit_cfg.variant` filled in ("" = unchanged copy)."""
  out = ml_collections.ConfigDict(dit_cfg.to_dict())
  if dit_cfg.variant:
    for key, value in variant_fields(dit_cfg.variant).items():
      out[key] = value
  return out


def variant_mismatches(dit_cfg: ml_collections.ConfigDict) -> dict:
  """{field: (config value, variant value)} where the config departs from its named variant."""
  if not dit_cfg.get("variant"):
    return {}
  diffs = {}
  for key, value in variant_fields(dit_cfg.variant).items():
    current = dit_cfg.get(key)
    current = tuple(current) if isinstance(current, (list, tuple)) else current
    if current != value:
      diffs[key] = (current, value)
  return diffs


def warn_if_variant_mismatch(dit_cfg: ml_collections.ConfigDict) -> None:
  """Logs a warning when `dit.variant` is set but the size fields say otherwise (fields win)."""
  diffs = variant_mismatches(dit_cfg)
  if diffs:
    listed = ", ".join(f"{k}={v[0]!r} (variant: {v[1]!r})" for k, v in diffs.items())
    logging.warning(
      "dit.variant=%r but %s; using the fields as given. Call variants.apply_variant in the "
      "config file to take the variant's sizes, or set dit.variant='' for custom sizes.",
      dit_cfg.variant,
      listed,
    )
