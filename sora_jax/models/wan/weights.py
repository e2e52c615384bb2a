"""The Wan 2.1 family's weight tables: our Flax params <-> the diffusers / transformers safetensors keys.

One table per module of a diffusers Wan 2.1 folder, each built from the module it describes
(so shapes follow the config): `transformer_table` (`WanTransformer3DModel` in `transformer/`),
`vae_table` (`AutoencoderKLWan` in `vae/`) and `umt5_table` (transformers' `UMT5EncoderModel`
in `text_encoder/`). `sora_jax.models.weight_mapping` loads along them onto a mesh and exports
back. A rule reads `ours <- theirs`:

    blocks/self_attention/query/kernel [L, D, H, K]  <-  blocks.{i}.attn1.to_q.weight [D, D]   (linear)
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models.weight_mapping import Rule, Table, linear_rules


def _mlp2(ours: str, theirs: str, in_dim: int, width: int) -> list[Rule]:
  """linear_1 (in -> width) and linear_2 (width -> width) of an embedding MLP."""
  return linear_rules((ours, "linear_1"), f"{theirs}.linear_1", (in_dim,), (width,)) + linear_rules(
    (ours, "linear_2"), f"{theirs}.linear_2", (width,), (width,)
  )


def _wan_attention(ours: str, theirs: str, width: int, heads: int, qk_norm: bool) -> list[Rule]:
  head_dim = width // heads
  rules = []
  for name, key in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
    rules += linear_rules((ours, name), f"{theirs}.{key}", (width,), (heads, head_dim))
  rules += linear_rules((ours, "out"), f"{theirs}.to_out.0", (heads, head_dim), (width,))
  if qk_norm:
    for name, key in (("query_norm", "norm_q"), ("key_norm", "norm_k")):
      rules.append(Rule((ours, name, "scale"), f"{theirs}.{key}.weight", "reshape", (heads, head_dim), (width,)))
  return rules


def transformer_table(model) -> Table:
  """The table of a `WanTransformer` (its scan_layers decides stacked or per-layer blocks)."""
  d, heads, ffn = model.hidden_size, model.num_heads, model.mlp_dim
  pt, ph, pw = model.patch_size
  c = model.in_channels
  rules = [
    Rule(("patch_embed", "kernel"), "patch_embedding.weight", "conv", (pt * ph * pw * c, d), (d, c, pt, ph, pw)),
    Rule(("patch_embed", "bias"), "patch_embedding.bias", "reshape", (d,), (d,)),
    *_mlp2("time_embedder", "condition_embedder.time_embedder", 256, d),
    *linear_rules(("time_projection",), "condition_embedder.time_proj", (d,), (6, d)),
    *_mlp2("text_embedder", "condition_embedder.text_embedder", model.text_dim, d),
    Rule(("scale_shift_table",), "scale_shift_table", "reshape", (2, d), (1, 2, d)),
    *linear_rules(("proj_out",), "proj_out", (d,), (pt * ph * pw * c,)),
    # one block ("{i}"): modulation table, self-attention, cross-attention (+ its norm), FFN
    Rule(("modulation", "offset"), "blocks.{i}.scale_shift_table", "reshape", (6, d), (1, 6, d)),
    *_wan_attention("self_attention", "blocks.{i}.attn1", d, heads, model.qk_norm),
    *_wan_attention("cross_attention", "blocks.{i}.attn2", d, heads, model.qk_norm),
    *linear_rules(("mlp", "fc1"), "blocks.{i}.ffn.net.0.proj", (d,), (ffn,)),
    *linear_rules(("mlp", "fc2"), "blocks.{i}.ffn.net.2", (ffn,), (d,)),
  ]
  if model.cross_attn_norm:
    rules += [
      Rule(("cross_norm", "scale"), "blocks.{i}.norm2.weight", "reshape", (d,), (d,)),
      Rule(("cross_norm", "bias"), "blocks.{i}.norm2.bias", "reshape", (d,), (d,)),
    ]
  return Table("transformer", tuple(rules), num_layers=model.depth, layer_prefix="blocks", stacked=model.scan_layers)


# 2D convs of the VAE (torch Conv2d [O, I, kh, kw]; ours [1, kh, kw, I, O]); the others are Conv3d.
_VAE_CONV2D = ("resample", "to_qkv", "proj")


def _vae_key(path: tuple[str, ...]) -> str:
  """Our VAE param path -> the diffusers key: "down_blocks_3" -> "down_blocks.3", "resample" -> "resample.1"
  (the conv inside diffusers' Sequential), "kernel" -> "weight"."""
  parts = []
  for part in path:
    match = re.fullmatch(r"(.+)_(\d+)", part)
    if match and match.group(1) in ("down_blocks", "up_blocks", "resnets", "attentions", "upsamplers"):
      parts += [match.group(1), match.group(2)]
    elif part == "resample":
      parts += ["resample", "1"]
    else:
      parts.append({"kernel": "weight"}.get(part, part))
  return ".".join(parts)


def vae_table(module) -> Table:
  """The table of a `WanVAE` (one rule per parameter of its init, keys derived by `_vae_key`)."""
  size = 2 * module.config.spatial_factor  # any valid clip: the params do not depend on its size
  video = jax.ShapeDtypeStruct((1, 1 + module.config.temporal_factor, size, size, 3), jnp.float32)
  shapes = nn.meta.unbox(jax.eval_shape(lambda rng, v: module.init(rng, v, False), jax.random.key(0), video)["params"])
  rules = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    path = tuple(str(p.key) for p in path)
    ours_shape = tuple(leaf.shape)
    if path[-1] == "kernel":
      kt, kh, kw, cin, cout = ours_shape
      theirs = (cout, cin, kh, kw) if path[-2] in _VAE_CONV2D else (cout, cin, kt, kh, kw)
      rules.append(Rule(path, _vae_key(path), "conv", ours_shape, theirs))
    elif path[-1] == "gamma":
      extra = (1, 1) if path[-2] == "norm" and path[-3].startswith("attentions") else (1, 1, 1)
      rules.append(Rule(path, _vae_key(path), "reshape", ours_shape, ours_shape + extra))
    else:
      rules.append(Rule(path, _vae_key(path), "reshape", ours_shape, ours_shape))
  return Table("vae", tuple(rules))


def umt5_table(module) -> Table:
  """The table of a `UMT5Encoder` (transformers' `UMT5EncoderModel` keys; the token table may be saved as
  "shared.weight" or, tied, as "encoder.embed_tokens.weight")."""
  d, heads, head_dim, ff = module.width, module.num_heads, module.head_dim, module.mlp_dim
  block = "encoder.block.{i}.layer"
  rules = [
    Rule(
      ("embedding",),
      "shared.weight",
      "reshape",
      (module.vocab_size, d),
      (module.vocab_size, d),
      aliases=("encoder.embed_tokens.weight",),
    ),
    Rule(("final_norm", "weight"), "encoder.final_layer_norm.weight", "reshape", (d,), (d,)),
    Rule(("attention_norm", "weight"), f"{block}.0.layer_norm.weight", "reshape", (d,), (d,)),
    Rule(("mlp_norm", "weight"), f"{block}.1.layer_norm.weight", "reshape", (d,), (d,)),
    Rule(
      ("relative_attention_bias",),
      f"{block}.0.SelfAttention.relative_attention_bias.weight",
      "reshape",
      (module.num_buckets, heads),
      (module.num_buckets, heads),
    ),
    *linear_rules(("query",), f"{block}.0.SelfAttention.q", (d,), (heads, head_dim), bias=False),
    *linear_rules(("key",), f"{block}.0.SelfAttention.k", (d,), (heads, head_dim), bias=False),
    *linear_rules(("value",), f"{block}.0.SelfAttention.v", (d,), (heads, head_dim), bias=False),
    *linear_rules(("out",), f"{block}.0.SelfAttention.o", (heads, head_dim), (d,), bias=False),
  ]
  if module.gated:
    rules += linear_rules(("wi_0",), f"{block}.1.DenseReluDense.wi_0", (d,), (ff,), bias=False)
    rules += linear_rules(("wi_1",), f"{block}.1.DenseReluDense.wi_1", (d,), (ff,), bias=False)
  else:
    rules += linear_rules(("wi",), f"{block}.1.DenseReluDense.wi", (d,), (ff,), bias=False)
  rules += linear_rules(("wo",), f"{block}.1.DenseReluDense.wo", (ff,), (d,), bias=False)
  return Table("text encoder (umT5)", tuple(rules), num_layers=module.depth, layer_prefix="layer", stacked=False)
