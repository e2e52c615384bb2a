"""Weights of diffusers' `DiTTransformer2DModel` (the DiT paper's image model) -> our DiT params.

    model = dit_from_diffusers_config(torch_model.config)
    params = params_from_diffusers_state_dict(torch_model.state_dict(), model)
    out = model.apply({"params": params}, x, t, {"label": y})      # x [B, 1, H, W, C]

Used by tests/test_dit_diffusers_parity.py to show the class-conditional image
DiT is the same network as diffusers' (and hence the paper's); it also loads
the released facebook/DiT-XL-2-* checkpoints if you have them locally.

Two differences of diffusers' port from the paper are matched here rather than
in the config: its timestep features use frequencies 10000^(-i/(half-1))
(`timestep_frequency_shift=1`, the paper divides by half), and it stores a copy
of the timestep/class embedders in every block (we keep one; the copies must be
equal). diffusers' MLP pre-norm uses `norm_eps` (1e-5 by default) where the
paper and we use 1e-6; the difference is ~1e-5 relative. diffusers also
rescales positions when the input differs from `sample_size`; we do not.

torch is only needed to produce the state dict; this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sora_jax.models.dit import DiT, stack_layers


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def dit_from_diffusers_config(config: Mapping[str, Any], *, scan_layers: bool = True, **overrides) -> DiT:
  """Our DiT with the architecture of a diffusers `DiTTransformer2DModel` config (a dict or its FrozenDict)."""
  config = dict(config)
  if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
    raise ValueError(f"only norm_type='ada_norm_zero' DiTs convert, got {config['norm_type']!r}")
  if config.get("activation_fn", "gelu-approximate") != "gelu-approximate":
    raise ValueError(f"only activation_fn='gelu-approximate' converts, got {config['activation_fn']!r}")
  heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
  in_channels = config["in_channels"]
  out_channels = config.get("out_channels") or in_channels
  if out_channels not in (in_channels, 2 * in_channels):
    raise ValueError(f"out_channels must be in_channels or 2*in_channels (learned sigma), got {out_channels}")
  p = config["patch_size"]
  fields = dict(
    in_channels=in_channels,
    hidden_size=heads * head_dim,
    depth=config["num_layers"],
    num_heads=heads,
    mlp_dim=4 * heads * head_dim,
    patch_size=(1, p, p),
    conditioning="class",
    num_classes=config["num_embeds_ada_norm"],
    pos_embedding="sincos2d",
    qk_norm=False,
    learn_sigma=out_channels == 2 * in_channels,
    modulation="per_block",
    scan_layers=scan_layers,
    timestep_frequency_shift=1.0,
  )
  fields.update(overrides)
  return DiT(**fields)


def _linear(sd, prefix):
  """torch Linear (weight [out, in]) -> (kernel [in, out], bias [out])."""
  return _to_numpy(sd[prefix + ".weight"]).T, _to_numpy(sd[prefix + ".bias"])


def _attention(sd, prefix, width, heads):
  head_dim = width // heads
  params = {}
  for ours, theirs in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
    kernel, bias = _linear(sd, f"{prefix}.{theirs}")
    params[ours] = {"kernel": kernel.reshape(width, heads, head_dim), "bias": bias.reshape(heads, head_dim)}
  kernel, bias = _linear(sd, f"{prefix}.to_out.0")
  params["out"] = {"kernel": kernel.reshape(heads, head_dim, width), "bias": bias}
  return params


def _block(sd, i, width, heads):
  prefix = f"transformer_blocks.{i}"
  ada_kernel, ada_bias = _linear(sd, f"{prefix}.norm1.linear")
  fc1 = _linear(sd, f"{prefix}.ff.net.0.proj")
  fc2 = _linear(sd, f"{prefix}.ff.net.2")
  return {
    "modulation": {"adaln": {"kernel": ada_kernel.reshape(width, 6, width), "bias": ada_bias.reshape(6, width)}},
    "self_attention": _attention(sd, f"{prefix}.attn1", width, heads),
    "mlp": {"fc1": {"kernel": fc1[0], "bias": fc1[1]}, "fc2": {"kernel": fc2[0], "bias": fc2[1]}},
  }


def _shared_embedders(sd, depth):
  """Timestep + label embedders; diffusers keeps one copy per block, which must all be equal."""
  names = (
    "timestep_embedder.linear_1.weight",
    "timestep_embedder.linear_1.bias",
    "timestep_embedder.linear_2.weight",
    "timestep_embedder.linear_2.bias",
    "class_embedder.embedding_table.weight",
  )
  for name in names:
    first = _to_numpy(sd[f"transformer_blocks.0.norm1.emb.{name}"])
    for i in range(1, depth):
      if not np.array_equal(first, _to_numpy(sd[f"transformer_blocks.{i}.norm1.emb.{name}"])):
        raise ValueError(
          f"transformer_blocks.{i}.norm1.emb.{name} differs from block 0; the DiT paper's network "
          f"has one timestep/class embedder shared by all blocks, so this model cannot be converted"
        )
  emb = "transformer_blocks.0.norm1.emb"
  t1, t2 = _linear(sd, f"{emb}.timestep_embedder.linear_1"), _linear(sd, f"{emb}.timestep_embedder.linear_2")
  return (
    {"linear_1": {"kernel": t1[0], "bias": t1[1]}, "linear_2": {"kernel": t2[0], "bias": t2[1]}},
    {"embedding": _to_numpy(sd[f"{emb}.class_embedder.embedding_table.weight"])},
  )


def params_from_diffusers_state_dict(state_dict: Mapping[str, Any], model: DiT) -> dict:
  """The 'params' collection of `model` (from `dit_from_diffusers_config`) holding diffusers' weights.

  Args:
    state_dict: `DiTTransformer2DModel.state_dict()` (torch tensors or numpy arrays).
    model: the matching DiT; its `scan_layers` decides the block layout.
  Returns:
    A nested dict of float32 arrays, for `model.apply({"params": params}, ...)`.
  """
  width, heads, depth = model.hidden_size, model.num_heads, model.depth
  patch_weight = _to_numpy(state_dict["pos_embed.proj.weight"])  # [D, C, p, p]
  if patch_weight.shape[0] != width or patch_weight.shape[1] != model.in_channels:
    raise ValueError(
      f"state dict has patch embedding {patch_weight.shape}, model expects width {width} and "
      f"{model.in_channels} channels"
    )
  timestep, label = _shared_embedders(state_dict, depth)
  final_ada = _linear(state_dict, "proj_out_1")
  final_out = _linear(state_dict, "proj_out_2")
  params = {
    # Patch values are ordered (ph, pw, C) in our tokens: [D, C, p, p] -> [p, p, C, D].
    "patch_embed": {
      "kernel": patch_weight.transpose(2, 3, 1, 0).reshape(-1, width),
      "bias": _to_numpy(state_dict["pos_embed.proj.bias"]),
    },
    "timestep_embedder": timestep,
    "label_embedder": label,
    "final_layer": {
      "adaln": {"kernel": final_ada[0].reshape(width, 2, width), "bias": final_ada[1].reshape(2, width)},
      "linear": {"kernel": final_out[0], "bias": final_out[1]},
    },
  }
  blocks = [_block(state_dict, i, width, heads) for i in range(depth)]
  if model.scan_layers:
    params["blocks"] = stack_layers(blocks)
  else:
    params.update({f"blocks_{i}": block for i, block in enumerate(blocks)})
  return params
