"""LoRA files in the PEFT / diffusers format: our adapter trees <-> `transformer.blocks.N.attn1.to_q.lora_A.weight`.

    save_lora("my_lora", adapters, rank=16, alpha=16)      # my_lora/pytorch_lora_weights.safetensors
    adapters, info = load_lora("my_lora", base_params)    # onto our tree; info: ranks, alphas, file

The key names and layouts are diffusers' (`WanPipeline.save_lora_weights` / `load_lora_weights`):
one pair per adapted torch Linear, lora_A.weight [rank, in] and lora_B.weight [out, rank], keys
prefixed "transformer." (files written by PEFT's `save_pretrained` ("base_model.model.") or by
`transformer.save_lora_adapter` (no prefix) load too). Our modules map one to one:

    blocks/self_attention/{query,key,value,out}  <->  blocks.N.attn1.{to_q,to_k,to_v,to_out.0}
    blocks/cross_attention/...                   <->  blocks.N.attn2....
    blocks/mlp/{fc1,fc2}                         <->  blocks.N.ffn.net.{0.proj,2}

which is the Wan 2.1 transformer's naming; our DiT's blocks have the same parts and use it too.
lora_A [*in_dims, rank] is lora_A.weight transposed and reshaped (in = D, or heads x head_dim for
`out`), lora_B [rank, *out_dims] likewise.

alpha is stored as diffusers stores it: the LoraConfig fields (r, lora_alpha, target_modules,
rank_pattern, alpha_pattern, ...) as JSON under the safetensors metadata key
"lora_adapter_metadata" (prefixed "transformer." in a pipeline file). When reading, a PEFT
adapter_config.json beside the file or per-module ".alpha" tensors are used when there is no
such metadata, and without any of them alpha = rank (as diffusers does). `load_lora` folds each
module's alpha / rank into its lora_B, so a loaded LoRA runs with LoraModel(scale=1.0).

Anything that does not fit the model is an error before anything is placed: keys that are not a
LoRA of a block projection, layers the model does not have, shapes or ranks that do not match
the base kernels are listed together.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from sora_jax.models import lora as lora_lib
from sora_jax.models.safetensors_io import SafetensorsFile, describe_keys

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
PREFIX = "transformer"
ACCEPTED_PREFIXES = ("transformer.", "base_model.model.", "")

# our (parent, name) -> diffusers module name inside a block; in-dims of our kernel.
MODULES = {
  ("self_attention", "query"): "attn1.to_q",
  ("self_attention", "key"): "attn1.to_k",
  ("self_attention", "value"): "attn1.to_v",
  ("self_attention", "out"): "attn1.to_out.0",
  ("cross_attention", "query"): "attn2.to_q",
  ("cross_attention", "key"): "attn2.to_k",
  ("cross_attention", "value"): "attn2.to_v",
  ("cross_attention", "out"): "attn2.to_out.0",
  ("mlp", "fc1"): "ffn.net.0.proj",
  ("mlp", "fc2"): "ffn.net.2",
}
THEIRS = {v: k for k, v in MODULES.items()}
IN_DIMS = {"query": 1, "key": 1, "value": 1, "out": 2, "fc1": 1, "fc2": 1}
_KEY = re.compile(r"blocks\.(\d+)\.(" + "|".join(re.escape(m) for m in THEIRS) + r")\.(lora_A|lora_B|alpha)(\.weight)?")


def _file_of(path: str) -> str:
  path = os.fspath(path)
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if WEIGHT_NAME in names:
      return os.path.join(path, WEIGHT_NAME)
    if len(names) != 1:
      raise FileNotFoundError(
        f"{path}: expected {WEIGHT_NAME} (or one .safetensors file), found {names or 'no .safetensors file'}"
      )
    return os.path.join(path, names[0])
  if not os.path.isfile(path):
    raise FileNotFoundError(f"LoRA file {path} does not exist (give a .safetensors file or the folder holding it)")
  return path


def _layers(base: Mapping[str, Any]) -> tuple[bool, int]:
  """(stacked, depth) of a base params tree ("blocks" stacked by nn.scan, or "blocks_0", "blocks_1", ...)."""
  if "blocks" in base:
    return True, int(base["blocks"]["mlp"]["fc1"]["kernel"].shape[0])
  depth = sum(1 for k in base if re.fullmatch(r"blocks_\d+", k))
  if not depth:
    raise ValueError(f"these params hold no transformer blocks (keys {sorted(base)[:12]}): not a DiT's params")
  return False, depth


def _kernel(base, stacked: bool, layer: int, parent: str, name: str):
  block = base["blocks"] if stacked else base.get(f"blocks_{layer}", {})
  return block.get(parent, {}).get(name, {}).get("kernel")


def _metadata(path: str, file: SafetensorsFile) -> dict:
  """The LoraConfig fields stored with the file (diffusers metadata, else a PEFT adapter_config.json), or {}."""
  raw = file.metadata.get(METADATA_KEY)
  if raw:
    meta = json.loads(raw)
    if any(k.startswith(PREFIX + ".") for k in meta):
      meta = {k[len(PREFIX) + 1 :]: v for k, v in meta.items() if k.startswith(PREFIX + ".")}
    return meta
  config = os.path.join(os.path.dirname(path), "adapter_config.json")
  if os.path.isfile(config):
    with open(config) as f:
      return json.load(f)
  return {}


def _pattern_value(patterns: Mapping[str, Any], module: str, default):
  """PEFT's rank_pattern / alpha_pattern lookup: the first pattern matching the end of the module name."""
  for pattern, value in (patterns or {}).items():
    if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
      return value
  return default


def load_lora(path: str, base_params: Mapping[str, Any]) -> tuple[dict, dict]:
  """Reads a PEFT/diffusers LoRA file into an adapter tree for the model of `base_params`.

  Args:
    path: a .safetensors file, or a folder holding pytorch_lora_weights.safetensors (or one
      .safetensors file, e.g. PEFT's adapter_model.safetensors with its adapter_config.json).
    base_params: the DiT's params (arrays or ShapeDtypeStructs): shapes and layer layout come from them.
  Returns:
    (adapters, info): adapters {path: {lora_A, lora_B}} as float32 numpy with alpha / rank folded
    into lora_B (run with LoraModel(scale=1.0)); info {"file", "rank", "alpha", "modules"}.
  Raises:
    ValueError: listing every key that does not fit (unknown module, missing layer, wrong shape/rank).
  """
  file_path = _file_of(path)
  file = SafetensorsFile(file_path)
  meta = _metadata(file_path, file)
  stacked, depth = _layers(base_params)
  pairs: dict[tuple[int, str], dict[str, str]] = {}
  unknown, bad_shape = [], []
  for key in file.keys():
    prefix = next(p for p in ACCEPTED_PREFIXES if key.startswith(p))
    match = _KEY.fullmatch(key[len(prefix) :])
    if match is None:
      unknown.append(key)
      continue
    layer, module, kind = int(match.group(1)), match.group(2), match.group(3)
    if layer >= depth:
      bad_shape.append(f"{key} (layer {layer}: the model has {depth} blocks)")
      continue
    pairs.setdefault((layer, module), {})[kind] = key
  ranks: dict[tuple[int, str], int] = {}
  for (layer, module), keys in sorted(pairs.items()):
    parent, name = THEIRS[module]
    kernel = _kernel(base_params, stacked, layer, parent, name)
    if kernel is None:
      bad_shape.append(f"blocks.{layer}.{module} (the model has no {parent}/{name})")
      continue
    if "lora_A" not in keys or "lora_B" not in keys:
      missing = "lora_A" if "lora_A" not in keys else "lora_B"
      bad_shape.append(f"blocks.{layer}.{module}.{missing}.weight is missing (its pair is in the file)")
      continue
    kshape = tuple(kernel.shape[1:] if stacked else kernel.shape)
    n_in = IN_DIMS[name]
    fan_in, fan_out = int(np.prod(kshape[:n_in])), int(np.prod(kshape[n_in:]))
    a_shape, b_shape = file.shape(keys["lora_A"]), file.shape(keys["lora_B"])
    rank = a_shape[0] if len(a_shape) == 2 else -1
    if len(a_shape) != 2 or a_shape[1] != fan_in:
      bad_shape.append(f"{keys['lora_A']} {a_shape} (expected [rank, {fan_in}])")
    elif len(b_shape) != 2 or b_shape != (fan_out, rank):
      bad_shape.append(f"{keys['lora_B']} {b_shape} (expected [{fan_out}, {rank}]: out features, lora_A's rank)")
    else:
      ranks[(layer, module)] = rank
  if unknown or bad_shape:
    parts = []
    if unknown:
      parts.append(
        f"{len(unknown)} keys are not a LoRA of a block projection ({', '.join(sorted(THEIRS))}): "
        f"{describe_keys(unknown)}"
      )
    if bad_shape:
      parts.append(f"{len(bad_shape)} do not fit this model: {'; '.join(bad_shape[:12])}")
    raise ValueError(f"LoRA {file_path} does not fit the model: " + ". ".join(parts))
  if not ranks:
    raise ValueError(f"LoRA {file_path} holds no lora_A / lora_B weights")

  common_rank = int(np.bincount(list(ranks.values())).argmax())  # diffusers' r when no metadata
  default_alpha = float(meta.get("lora_alpha", common_rank))
  adapters: dict = {}
  alphas = {}
  by_module: dict[str, list[int]] = {}
  for layer, module in ranks:
    by_module.setdefault(module, []).append(layer)
  for module, layers in by_module.items():
    parent, name = THEIRS[module]
    kshape = tuple(_kernel(base_params, stacked, layers[0], parent, name).shape[1 if stacked else 0 :])
    n_in = IN_DIMS[name]
    width = max(ranks[(i, module)] for i in layers)  # stacked layers share one rank: pad with zeros
    a_all, b_all = [], []
    for layer in range(depth) if stacked else layers:
      a = np.zeros((width, int(np.prod(kshape[:n_in]))), np.float32)
      b = np.zeros((int(np.prod(kshape[n_in:])), width), np.float32)
      keys = pairs.get((layer, module))
      if keys is not None and (layer, module) in ranks:
        r = ranks[(layer, module)]
        full = f"blocks.{layer}.{module}"
        alpha_key = next((k for k in (keys.get("alpha"),) if k), None)
        alpha = float(file.read(alpha_key)) if alpha_key else _pattern_value(meta.get("alpha_pattern"), full, None)
        alpha = default_alpha if alpha is None else float(alpha)
        alphas[full] = alpha
        a[:r] = np.asarray(file.read(keys["lora_A"]), np.float32)
        b[:, :r] = np.asarray(file.read(keys["lora_B"]), np.float32) * (alpha / r)
      a_ours = a.T.reshape(*kshape[:n_in], width)
      b_ours = b.T.reshape(width, *kshape[n_in:])
      if stacked:
        a_all.append(a_ours)
        b_all.append(b_ours)
      else:
        adapters.setdefault(f"blocks_{layer}", {}).setdefault(parent, {})[name] = {"lora_A": a_ours, "lora_B": b_ours}
    if stacked:
      adapters.setdefault("blocks", {}).setdefault(parent, {})[name] = {
        "lora_A": np.stack(a_all),
        "lora_B": np.stack(b_all),
      }
  info = {
    "file": file_path,
    "rank": common_rank,
    "alpha": default_alpha,
    "modules": sorted(by_module),
    "num_params": int(sum(np.prod(file.shape(k)) for v in pairs.values() for k in v.values())),
  }
  return adapters, info


def to_state_dict(adapters: Mapping[str, Any], prefix: str = PREFIX) -> dict[str, np.ndarray]:
  """Our adapter tree -> {"transformer.blocks.N.attn1.to_q.lora_A.weight": [rank, in], ...} (float32 numpy)."""
  out = {}
  for path in lora_lib.adapter_paths(adapters):
    block, parent, name = path
    pair = lora_lib._get(adapters, path)
    a, b = (np.asarray(jax.device_get(pair[k]), np.float32) for k in lora_lib.ADAPTER_LEAVES)
    if block == "blocks":  # stacked: one pair per layer
      layers = [(i, a[i], b[i]) for i in range(a.shape[0])]
    else:
      layers = [(int(block.split("_")[1]), a, b)]
    for i, a_i, b_i in layers:
      rank = a_i.shape[-1]
      key = f"{prefix}.blocks.{i}.{MODULES[(parent, name)]}" if prefix else f"blocks.{i}.{MODULES[(parent, name)]}"
      out[f"{key}.lora_A.weight"] = np.ascontiguousarray(a_i.reshape(-1, rank).T)
      out[f"{key}.lora_B.weight"] = np.ascontiguousarray(b_i.reshape(rank, -1).T)
  return out


def save_lora(path: str, adapters: Mapping[str, Any], *, rank: int, alpha: float, dropout: float = 0.0) -> str:
  """Writes `adapters` as a diffusers LoRA: <path>/pytorch_lora_weights.safetensors (or `path` itself
  when it ends in .safetensors), with the LoraConfig (r, lora_alpha, target_modules) in its metadata.

  `diffusers.WanPipeline.load_lora_weights(path)` and `Pipeline.load_lora(path)` read it. Returns the file.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  tensors = to_state_dict(adapters)
  if not tensors:
    raise ValueError("no adapters to save (the tree holds no lora_A / lora_B)")
  targets = sorted({MODULES[p[1:]] for p in lora_lib.adapter_paths(adapters)})
  config = {
    "r": int(rank),
    "lora_alpha": float(alpha),
    "lora_dropout": float(dropout),
    "target_modules": targets,
    "bias": "none",
    "use_dora": False,
    "init_lora_weights": True,
  }
  meta = {f"{PREFIX}.{k}": v for k, v in config.items()}
  file_path = os.fspath(path)
  if not file_path.endswith(".safetensors"):
    os.makedirs(file_path, exist_ok=True)
    file_path = os.path.join(file_path, WEIGHT_NAME)
  save_file(
    tensors, file_path + ".tmp", metadata={"format": "pt", METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True)}
  )
  os.replace(file_path + ".tmp", file_path)
  return file_path
