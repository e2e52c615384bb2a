r"""Parameters and FLOPs of a DiT for a given clip size, without allocating the model.

Either a named model (sizes from sora_jax/models/variants.py; DiT-paper models
assume the SD image VAE: 8x spatial, 4 latent channels, one frame):

  python tools/estimate.py --model=DiT-XL/2 --height=256 --width=256 --json
  python tools/estimate.py --model=wan-1.3b --frames=81 --height=480 --width=832

or a config file (latent channels and compression from config.vae, text width
and length from config.text, clip size from config.data unless given):

  python tools/estimate.py --config=configs/image/dit_paper.py:DiT-B/4 --height=256 --width=256
  python tools/estimate.py --config=configs/image/dit_paper.py:DiT-S/2 --config.dit.depth=6
  python tools/estimate.py --config=configs/dit/<file>.py --frames=81 --height=480 --width=832 --mesh=1,8,1,1
  python tools/estimate.py --config=configs/dit/wan21.py:14b --frames=81 --height=720 --width=1280 \
      --mesh=1,8,1,1 --memory=sample

A bucket table (--buckets=config for config.data.buckets, or SIZE=PROBABILITY[:BATCH],...) gives a
section per bucket (tokens, batch size scaled by tokens, FLOPs per step; memory with --mesh):

  python tools/estimate.py --config=configs/dit/demo_sizes.py --buckets=config --json

With --mesh, --memory says which per-device memory: "train" (a train step, the default),
"sample" (sampling the clip: one guided denoiser step, text encoder and VAE decode) or "both".

"gflops" follows the DiT paper: multiply-adds of one forward pass of one sample
(DiT-XL/2 at 256x256 = 118.6). "forward_flops" counts 2 per multiply-add;
"train_flops_per_step" = 3 x forward_flops x batch (4x with remat_policy=full).
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from sora_jax.configuration import run_tool
from sora_jax.models import counting, factory, variants
from sora_jax.models.dit import DiT

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file (e.g. configs/image/dit_paper.py:DiT-XL/2); its dit/vae/text/data sections "
  "define the model and inputs. Override fields with --config.KEY=VALUE. Use --model instead for a named size.",
)
_MODEL = flags.DEFINE_string(
  "model", "", f"A named DiT size instead of --config; one of: {', '.join(variants.VARIANTS)}."
)
_FRAMES = flags.DEFINE_integer(
  "frames",
  0,
  "Clip length in pixel frames (default: config.data.num_frames; 1 for DiT-paper models, 17 for video models).",
)
_HEIGHT = flags.DEFINE_integer("height", 0, "Clip height in pixels (default: config.data.height, or 256).")
_WIDTH = flags.DEFINE_integer("width", 0, "Clip width in pixels (default: config.data.width, or 256).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Samples per training step (default: config.data.batch_size, or 1).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
_MESH = flags.DEFINE_string(
  "mesh",
  "",
  "With --config: per-device memory of the train step on a mesh "
  "'data,fsdp,context,tensor' (e.g. 1,64,1,1), compiled on abstract inputs.",
)
_BUCKETS = flags.DEFINE_string(
  "buckets",
  "",
  "With --config: also estimate every bucket of a table, 'config' (config.data.buckets) or "
  "'17x32x32=0.5:32,1x32x32=0.5' (batch 0 or left out = data.batch_size scaled by tokens).",
)
_MEMORY = flags.DEFINE_enum(
  "memory",
  "train",
  ["train", "sample", "both"],
  "With --mesh: the memory of a train step, of sampling the clip (batch 1 unless --batch_size), or both.",
)


def _latent_size(pixels: int, factor: int, what: str) -> int:
  if pixels % factor:
    raise ValueError(
      f"{what} {pixels} is not a multiple of the VAE's {factor}x compression; "
      f"try {pixels // factor * factor} or {(pixels // factor + 1) * factor}"
    )
  return pixels // factor


def _latent_frames(frames: int, factor: int) -> int:
  """Causal VAE: 1 + factor*k frames -> 1 + k latent frames."""
  if factor == 1:
    return frames
  if (frames - 1) % factor:
    raise ValueError(
      f"frames={frames} must be 1 + {factor}*k for a causal VAE with {factor}x time compression; "
      f"try {1 + (frames - 1) // factor * factor} or {1 + ((frames - 1) // factor + 1) * factor}"
    )
  return 1 + (frames - 1) // factor


def _setting_from_model(name: str) -> dict:
  """Model and input description of a named variant (REFERENCE_INPUTS)."""
  ref = variants.REFERENCE_INPUTS[name]
  fields = variants.variant_fields(name)
  model = DiT(in_channels=ref["latent_channels"], text_dim=ref["text_dim"], **fields)
  video = ref["temporal_factor"] > 1
  return dict(
    name=name,
    model=model,
    spatial_factor=ref["spatial_factor"],
    temporal_factor=ref["temporal_factor"],
    text_length=ref["text_length"],
    frames=17 if video else 1,
    height=256,
    width=256,
    batch_size=1,
    remat_policy="none",
  )


def _setting_from_config(config) -> dict:
  """Model and input description of a full config: the DiT (and text width) training would build."""
  # Only the latent channels shape the DiT's parameters; the clip size is applied per estimate.
  model = factory.build_denoiser(config, (1, 1, 1, config.vae.latent_channels)).dit
  image = config.dit.pos_embedding == "sincos2d"
  return dict(
    name=config.dit.variant or ("custom" if config.dit.architecture == "dit" else config.dit.architecture),
    model=model,
    spatial_factor=config.vae.spatial_factor,
    temporal_factor=1 if image else config.vae.temporal_factor,
    text_length=config.text.max_length,
    frames=1 if image else config.data.num_frames,
    height=config.data.height,
    width=config.data.width,
    batch_size=config.data.batch_size,
    remat_policy=config.dit.remat_policy,
  )


def estimate(setting: dict, frames: int = 0, height: int = 0, width: int = 0, batch_size: int = 0) -> dict:
  """The JSON-ready estimate for a setting (see `_setting_from_*`), clip size overrides applied."""
  frames = frames or setting["frames"]
  height = height or setting["height"]
  width = width or setting["width"]
  batch = batch_size or setting["batch_size"]
  model = setting["model"]
  latent = (
    _latent_frames(frames, setting["temporal_factor"]),
    _latent_size(height, setting["spatial_factor"], "height"),
    _latent_size(width, setting["spatial_factor"], "width"),
  )
  params = counting.count_params(model)
  flops = counting.count_flops(model, latent, text_length=setting["text_length"])
  train_factor = 4 if setting["remat_policy"] == "full" else 3
  return {
    "model": setting["name"],
    "params": params["total"],
    "params_millions": round(params["total"] / 1e6, 2),
    "gflops": round(flops["gflops"], 3),
    "forward_flops": flops["forward_flops"],
    "train_flops_per_step": train_factor * flops["forward_flops"] * batch,
    "tokens": int(flops["tokens"]),
    "pixels": [frames, height, width],
    "latent": [*latent, model.in_channels],
    "text_length": setting["text_length"] if model.conditioning == "text" else 0,
    "batch_size": batch,
    "params_by_part": params,
    "macs_by_part": {k: v for k, v in flops.items() if k not in ("macs", "gflops", "forward_flops", "tokens")},
  }


def memory_estimate(config, mesh: str, frames: int, height: int, width: int, batch_size: int) -> dict:
  """Per-device memory (--mesh) of the sharded train step compiled on abstract inputs (sora_jax.training.memory)."""
  from sora_jax.training import memory

  mesh_shape = _mesh_shape(mesh)
  result = memory.estimate_train_memory(
    config,
    frames=frames or None,
    height=height or None,
    width=width or None,
    mesh_shape=mesh_shape,
    batch_size=batch_size or None,
  )
  result["summary"] = memory.summary_lines(result)
  return result


def sample_memory_estimate(config, mesh: str, frames: int, height: int, width: int, batch_size: int) -> dict:
  """Per-device memory (--mesh --memory=sample) to sample the clip (sora_jax.sampling.memory)."""
  from sora_jax.sampling import memory

  result = memory.estimate_sample_memory(
    config,
    frames=frames or None,
    height=height or None,
    width=width or None,
    mesh_shape=_mesh_shape(mesh),
    batch_size=batch_size or 1,
  )
  result["summary"] = memory.summary_lines(result)
  return result


def bucket_estimates(setting: dict, config, table: str, mesh: str = "") -> dict:
  """{bucket: {probability, tokens, batch_size, train_flops_per_step (+ memory with --mesh)}} of a bucket table."""
  from sora_jax.recipes import dit_data

  out = {}
  for bucket in dit_data.buckets_for_tool(config, table):
    frames, height, width = bucket.size
    one = estimate(setting, frames, height, width, bucket.batch_size)
    out[bucket.name] = {
      "probability": bucket.probability,
      "tokens": one["tokens"],
      "batch_size": bucket.batch_size,
      "tokens_per_step": one["tokens"] * bucket.batch_size,
      "train_flops_per_step": one["train_flops_per_step"],
    }
    if mesh:
      out[bucket.name]["memory"] = memory_estimate(config, mesh, frames, height, width, bucket.batch_size)
  return out


def _mesh_shape(mesh: str) -> tuple[int, ...]:
  try:
    return tuple(int(s) for s in mesh.split(","))
  except ValueError:
    raise ValueError(f"--mesh={mesh!r} must be four integers data,fsdp,context,tensor, e.g. 1,8,1,1") from None


def _print_table(result: dict) -> None:
  print(f"model            {result['model']}")
  print(
    f"clip (T,H,W)     {tuple(result['pixels'])} pixels -> latent {tuple(result['latent'])}, {result['tokens']} tokens"
  )
  print(f"params           {result['params']:,} ({result['params_millions']} M)")
  print(f"Gflops (MACs)    {result['gflops']:.2f} per sample forward (DiT-paper convention)")
  print(f"train FLOPs      {result['train_flops_per_step']:.3e} per step (batch {result['batch_size']})")
  for name, value in result["params_by_part"].items():
    if name != "total" and value:
      print(f"  params  {name:<40s} {value:>16,}")
  for name, value in result["macs_by_part"].items():
    if value:
      print(f"  MACs    {name:<40s} {value:>16,.0f}")
  for name, b in result.get("buckets", {}).items():
    print(
      f"bucket {name:>10}  p={b['probability']:.2f}  {b['tokens']} tokens x batch {b['batch_size']} = "
      f"{b['tokens_per_step']} tokens/step, {b['train_flops_per_step']:.3e} train FLOPs/step"
    )
    for line in b.get("memory", {}).get("summary", []):
      print("  " + line)
  for key in ("memory", "sample_memory"):
    for line in result.get(key, {}).get("summary", []):
      print(line)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(_MODEL.value) == bool(_CONFIG.value):
    raise app.UsageError("give exactly one of --model=NAME or --config=FILE")
  try:
    setting = _setting_from_model(_MODEL.value) if _MODEL.value else _setting_from_config(_CONFIG.value)
    result = estimate(setting, _FRAMES.value, _HEIGHT.value, _WIDTH.value, _BATCH.value)
    if _MESH.value:
      if not _CONFIG.value:
        raise ValueError("--mesh needs --config (the train step depends on the text encoder, optimizer, ...)")
      clip = (_CONFIG.value, _MESH.value, _FRAMES.value, _HEIGHT.value, _WIDTH.value, _BATCH.value)
      if _MEMORY.value in ("train", "both"):
        result["memory"] = memory_estimate(*clip)
      if _MEMORY.value in ("sample", "both"):
        result["sample_memory"] = sample_memory_estimate(*clip)
    if _BUCKETS.value:
      if not _CONFIG.value:
        raise ValueError("--buckets needs --config (the table's batch sizes scale data.batch_size)")
      result["buckets"] = bucket_estimates(setting, _CONFIG.value, _BUCKETS.value, _MESH.value)
  except (ValueError, NotImplementedError) as e:
    sys.exit(f"error: {e}")
  if _JSON.value:
    print(json.dumps(result))
  else:
    _print_table(result)


if __name__ == "__main__":
  run_tool(main)
