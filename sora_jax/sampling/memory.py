r"""Per-device memory to sample a clip: the denoiser's guided step, the text encoder and the VAE decode.

    result = estimate_sample_memory(config, frames=81, height=720, width=1280, mesh_shape=(1, 8, 1, 1))
    result["dit_params_bytes"], result["step_temp_bytes"], result["peak_bytes"]

Nothing is allocated. The denoiser (`dit.architecture`: ours or Wan 2.1's) is built from the
config, its parameters get the shardings of the logical axis rules on the mesh in the sampling
dtype (`dit.dtype`: weights are cast to it when a pretrained folder is loaded for sampling), and
one guided evaluation (conditional and unconditional branches as one forward over 2B) is
compiled on abstract inputs; XLA's `memory_analysis()` gives the activations ("temp"). The
scan sampler runs that evaluation once per step with the same buffers, so this is the
sampler's working set. The frozen text encoder runs once before sampling and the VAE once
after; their weights are counted whole on every device (how `Pipeline` keeps frozen parts),
the VAE decode's activations by compiling the chunked decode of one clip on one device
(`vae_decode=False` skips that compile).

Meshes larger than this machine compile in a child process with that many virtual CPU devices
(as `tools/estimate.py --mesh` does for training): the sharding (who holds what) is exact, the
temp figure is XLA:CPU's schedule, an estimate within tens of percent of a GPU/TPU compiler's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import hardware
from sora_jax.models.dtypes import compute_dtype

ANALYSIS_ONLY_CPU_OPTIONS = {"xla_backend_optimization_level": 0}


def _umt5(config):
  """The umT5 module of config.text.pretrained when its config.json is at hand, else umT5-XXL's (Wan 2.1)."""
  from sora_jax.models.text import umt5  # pylint: disable=g-import-not-at-top

  if config.text.pretrained:
    return umt5.UMT5Encoder.from_hf_config(umt5.read_config(umt5.model_dirs(config.text.pretrained)[0]))
  return umt5.UMT5Encoder()


def _shard_bytes(tree: Any) -> int:
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return int(total)


def _param_bytes(init_fn, dtype) -> int:
  """Bytes of the params of init_fn(rng)['params'] in `dtype` (floating leaves), whole."""
  from sora_jax.sharding import partitioning  # pylint: disable=g-import-not-at-top

  shapes = partitioning.unbox(jax.eval_shape(lambda r: init_fn(r)["params"], jax.random.key(0)))
  return sum(math.prod(s.shape) * np.dtype(dtype).itemsize for s in jax.tree.leaves(shapes))


def _text_encoder_bytes(config, text_dim: int) -> int:
  dtype = compute_dtype(config.text.dtype, "text.dtype")
  if config.text.encoder == "umt5":
    module = _umt5(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    return _param_bytes(lambda r: module.init(r, ids, jnp.ones((1, 2), bool)), dtype)
  if config.text.encoder == "minilm":
    return 22_713_216 * np.dtype(dtype).itemsize  # all-MiniLM-L6-v2 without its pooler
  return 0  # a trainable encoder's params are part of the DiT run's params


def _vae(config):
  if config.vae.architecture == "wan2.1":
    from sora_jax.models.wan.vae import WanVAE  # pylint: disable=g-import-not-at-top

    return WanVAE(config.vae)
  from sora_jax.models.vae import CausalVAE  # pylint: disable=g-import-not-at-top

  return CausalVAE(config.vae)


def _vae_estimate(config, latent_shape, decode: bool) -> dict:
  module = _vae(config)
  size = 2 * config.vae.spatial_factor
  video = jnp.zeros((1, 1 + config.vae.temporal_factor, size, size, 3), jnp.float32)
  vae_dtype = compute_dtype(config.vae.dtype, "vae.dtype")
  out = {"vae_params_bytes": _param_bytes(lambda r: module.init(r, video, False), vae_dtype)}
  if decode:
    from sora_jax.models import vae as vae_lib  # pylint: disable=g-import-not-at-top
    from sora_jax.sharding import partitioning  # pylint: disable=g-import-not-at-top

    params = partitioning.unbox(jax.eval_shape(lambda r: module.init(r, video, False)["params"], jax.random.key(0)))
    chunk = config.vae.encode_chunk_frames or 1
    z = jax.ShapeDtypeStruct((1, *latent_shape), jnp.float32)
    lowered = vae_lib._decode_streamed.lower(module, params, z, chunk)  # pylint: disable=protected-access
    stats = lowered.compile(ANALYSIS_ONLY_CPU_OPTIONS if jax.default_backend() == "cpu" else None).memory_analysis()
    out["vae_decode_temp_bytes"] = int(stats.temp_size_in_bytes)
    out["vae_decode_output_bytes"] = int(stats.output_size_in_bytes)
  return out


def _estimate_in_process(config, frames, height, width, mesh_shape, batch_size, vae_decode) -> dict:
  from sora_jax.diffusion import guidance  # pylint: disable=g-import-not-at-top
  from sora_jax.models import factory  # pylint: disable=g-import-not-at-top
  from sora_jax.models import vae as vae_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.sharding import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.sharding import partitioning  # pylint: disable=g-import-not-at-top

  latent = tuple(vae_lib.latent_shape(config.vae, frames, height, width))
  denoiser = factory.build_denoiser(config, latent)
  dit, text_dim, length = denoiser.dit, denoiser.text_encoder.output_dim, config.text.max_length
  devices = jax.devices()[: math.prod(mesh_shape)]
  mesh = mesh_lib.make_mesh(mesh_shape, devices=devices)
  rules = partitioning.logical_rules(config)
  cond = {
    "text": jnp.zeros((1, length, text_dim)),
    "text_mask": jnp.ones((1, length), bool),
    "pooled": jnp.zeros((1, text_dim)),
  }
  x1, t1 = jnp.zeros((1, *latent)), jnp.zeros((1,))
  boxed = jax.eval_shape(lambda r: dit.init(r, x1, t1, cond)["params"], jax.random.key(0))
  shardings = partitioning.state_shardings(boxed, mesh, rules)
  dtype = compute_dtype(config.dit.dtype, "dit.dtype")
  params = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype, sharding=sh), partitioning.unbox(boxed), shardings
  )
  b = batch_size
  replicated = partitioning.replicated(mesh)
  inputs = {
    "x": jax.ShapeDtypeStruct((b, *latent), jnp.float32, sharding=replicated),
    "t": jax.ShapeDtypeStruct((b,), jnp.float32, sharding=replicated),
    "cond": {k: jax.ShapeDtypeStruct((b, *v.shape[1:]), v.dtype, sharding=replicated) for k, v in cond.items()},
    "uncond": {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated) for k, v in cond.items()},
  }

  def guided_step(params, x, t, c, u):
    network = lambda x, t, c: dit.apply({"params": params}, x, t, c)  # noqa: E731
    return guidance.cfg_model_fn(network, c, u, 5.0)(x, t)

  options = ANALYSIS_ONLY_CPU_OPTIONS if devices[0].platform == "cpu" else None
  with partitioning.use_mesh(mesh, rules):
    lowered = jax.jit(guided_step).lower(params, inputs["x"], inputs["t"], inputs["cond"], inputs["uncond"])
    stats = lowered.compile(options).memory_analysis()
  result = {
    "dit_params_bytes": _shard_bytes(params),
    "step_temp_bytes": int(stats.temp_size_in_bytes),
    "step_argument_bytes": int(stats.argument_size_in_bytes),
    "step_output_bytes": int(stats.output_size_in_bytes),
    "text_encoder_params_bytes": _text_encoder_bytes(config, text_dim),
  }
  result.update(_vae_estimate(config, latent, vae_decode))
  resident = result["dit_params_bytes"] + result["text_encoder_params_bytes"] + result["vae_params_bytes"]
  step_peak = result["step_argument_bytes"] - result["dit_params_bytes"] + result["step_output_bytes"]
  step_peak += result["step_temp_bytes"]
  decode_peak = result.get("vae_decode_temp_bytes", 0) + result.get("vae_decode_output_bytes", 0)
  result["peak_bytes"] = int(resident + max(step_peak, decode_peak))
  result.update(
    method="compiled",
    platform=devices[0].platform,
    mesh_shape=list(mesh_shape),
    num_devices=len(devices),
    batch_size=b,
    latent_shape=list(latent),
    tokens=int(np.prod(latent[:3]) // np.prod(dit.patch_size)),
    text_length=length,
    frames=frames,
    height=height,
    width=width,
    dtype=config.dit.dtype,
  )
  return result


def _estimate_in_child(config, *args) -> dict:
  from sora_jax.configuration import to_json  # pylint: disable=g-import-not-at-top

  frames, height, width, mesh_shape, batch_size, vae_decode = args
  n = math.prod(mesh_shape)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=hardware.xla_flags_with_device_count(n))
  request = dict(
    config=json.loads(to_json(config)),
    frames=frames,
    height=height,
    width=width,
    mesh_shape=list(mesh_shape),
    batch_size=batch_size,
    vae_decode=vae_decode,
  )
  proc = subprocess.run(
    [sys.executable, "-m", "sora_jax.sampling.memory"],
    input=json.dumps(request),
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  if proc.returncode != 0:
    raise RuntimeError(f"sampling memory estimate on {n} virtual CPU devices failed:\n{proc.stderr[-4000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result["method"] = "compiled_virtual_cpu"
  return result


def estimate_sample_memory(
  config,
  *,
  frames: int | None = None,
  height: int | None = None,
  width: int | None = None,
  mesh_shape: Sequence[int] = (1, 1, 1, 1),
  batch_size: int = 1,
  vae_decode: bool = True,
) -> dict:
  """Per-device memory to sample `batch_size` clips of frames x height x width with `config`.

  Returns a JSON-ready dict of per-device bytes: dit_params_bytes (sharded, dit.dtype),
  step_temp_bytes (activations of one guided evaluation over 2B), text_encoder_params_bytes and
  vae_params_bytes (whole on every device), vae_decode_temp_bytes (with vae_decode), peak_bytes
  (resident weights + the larger of the step and the decode); plus the settings.
  """
  mesh_shape = tuple(int(s) for s in mesh_shape)
  if len(mesh_shape) != 4 or any(s < 1 for s in mesh_shape):
    raise ValueError(f"mesh_shape {mesh_shape} must be four positive sizes (data, fsdp, context, tensor)")
  args = (
    frames or config.data.num_frames,
    height or config.data.height,
    width or config.data.width,
    mesh_shape,
    int(batch_size),
    bool(vae_decode),
  )
  if math.prod(mesh_shape) <= jax.device_count():
    return _estimate_in_process(config, *args)
  return _estimate_in_child(config, *args)


def summary_lines(result: dict) -> list[str]:
  """Human-readable lines (GiB per device) of an `estimate_sample_memory` result."""
  gib = lambda n: n / 2**30  # noqa: E731
  lines = [
    f"memory to sample {result['batch_size']} x {result['frames']}x{result['height']}x{result['width']} "
    f"({result['tokens']} tokens, CFG, {result['dtype']} weights), mesh (data, fsdp, context, tensor) = "
    f"{tuple(result['mesh_shape'])}, {result['method']} ({result['platform']}), per device:"
  ]
  for key in ("dit_params_bytes", "step_temp_bytes", "text_encoder_params_bytes", "vae_params_bytes"):
    lines.append(f"  {key.removesuffix('_bytes'):<26s} {gib(result[key]):>9.2f} GiB")
  if "vae_decode_temp_bytes" in result:
    lines.append(f"  {'vae_decode_temp':<26s} {gib(result['vae_decode_temp_bytes']):>9.2f} GiB")
  lines.append(f"  {'peak':<26s} {gib(result['peak_bytes']):>9.2f} GiB")
  return lines


def _child_main() -> None:
  from sora_jax.configuration import from_dict  # pylint: disable=g-import-not-at-top

  request = json.loads(sys.stdin.read())
  config = from_dict(request.pop("config"))
  result = _estimate_in_process(
    config,
    request["frames"],
    request["height"],
    request["width"],
    tuple(request["mesh_shape"]),
    request["batch_size"],
    request["vae_decode"],
  )
  print(json.dumps(result))


if __name__ == "__main__":
  _child_main()
