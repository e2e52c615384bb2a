r"""Per-device memory of a DiT training step, before renting the hardware.

    result = estimate_train_memory(config, frames=81, height=480, width=832, mesh_shape=(1, 64, 1, 1))
    result["params_bytes"], result["optimizer_bytes"], result["temp_bytes"], result["peak_bytes"]

Nothing is allocated. The real train step (`sora_jax.training.dit_step.make_train_step`:
flow-matching loss, CFG dropout, AdamW, EMA) is `jax.jit`-ed with the state / batch
shardings that `sora_jax.sharding.partitioning` derives from the logical axis rules,
lowered on abstract inputs (`jax.ShapeDtypeStruct`s) and compiled; then

* params / optimizer / EMA bytes per device are exact: each array's shard shape under
  its `NamedSharding` (what one device holds), summed;
* activations + gradients + workspace ("temp") come from the compiled executable's
  `memory_analysis()` (the per-device SPMD program), as does the peak estimate
  arguments + outputs - donated aliases + temp.

Meshes larger than this machine: XLA can only compile for devices it has. When the mesh
needs more devices than `jax.device_count()`, the compile runs in a child process that
starts JAX with that many *virtual CPU devices*
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`, `method="compiled_virtual_cpu"`).
The sharding (who holds what) is then exact; the temp figure is the XLA:CPU compiler's,
which fuses and schedules differently from the TPU / GPU compilers (and may upcast bf16
elementwise work), so treat it as an estimate within tens of percent. On the target
platform itself (`method="compiled"`) the figure is that compiler's own.

The same step builder (`build_dit_train_setup`) drives `tools/benchmark.py`: a training
step on synthetic inputs of the right shapes, no dataset, VAE or pretrained weights needed.
The DiT and its text encoder come from `sora_jax.models.factory` (what training builds);
the batch layout from `sora_jax.models.text.fields`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from sora_jax import hardware
from sora_jax.configuration import from_dict, to_json
from sora_jax.diffusion import build_diffusion
from sora_jax.models import factory
from sora_jax.models import lora as lora_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models.text import fields
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning
from sora_jax.training import dit_step
from sora_jax.training.optimizer import make_optimizer

# Per-device peak memory (GiB) of common accelerators, for the "fits" verdict of `fits_on`.
DEVICE_MEMORY_GIB = {
  "TPU v4": 32,
  "TPU v5e": 16,
  "TPU v5p": 95,
  "TPU v6e": 32,
  "A100-40GB": 40,
  "A100-80GB": 80,
  "H100": 80,
  "H200": 141,
}


@dataclasses.dataclass(frozen=True)
class DiTTrainSetup:
  """Everything to build, shard and run a DiT train step on synthetic inputs.

  Attributes:
    denoiser: the DiT and its text encoder (`sora_jax.models.factory.build_denoiser`).
    init_fn: rng -> TrainState with logically boxed params (`dit_step.make_init_fn`).
    train_step: (state, batch, rng) -> (state, metrics) (`dit_step.make_train_step`).
    batch_size: global batch B.
    frozen_init_fn: a LoRA run's (config.lora.rank > 0): rng -> the frozen base params (boxed, in
      config.lora.base_dtype); the step is then (state, batch, rng, frozen) and the state holds adapters.
  """

  denoiser: factory.Denoiser
  init_fn: Callable
  train_step: Callable
  batch_size: int
  frozen_init_fn: Callable | None = None

  @property
  def dit(self) -> Any:
    return self.denoiser.dit

  @property
  def text_encoder(self) -> Any:
    return self.denoiser.text_encoder

  @property
  def latent_shape(self) -> tuple[int, int, int, int]:
    return self.denoiser.latent_shape

  @property
  def num_tokens(self) -> int:
    """Spacetime tokens N of one example."""
    return self.denoiser.num_tokens

  def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{field: (global shape, dtype)} of a latent-cache batch: latents + the encoder's text fields."""
    b = self.batch_size
    shapes = {
      "latent_mean": ((b, *self.latent_shape), np.float32),
      "latent_logvar": ((b, *self.latent_shape), np.float32),
    }
    shapes.update({k: ((b, *shape), dtype) for k, (shape, dtype) in fields.field_specs(self.text_encoder).items()})
    return shapes

  def synthetic_batch(self, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch of the right shapes (numpy): unit-normal latents, 3/4 of the text unmasked."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, _) in self.batch_shapes().items():
      if name == "text_mask":
        out[name] = np.arange(shape[1])[None, :].repeat(shape[0], 0) < max(1, (3 * shape[1]) // 4)
      elif name == "text_ids":
        out[name] = rng.integers(3, 200, size=shape).astype(np.int32)
      elif name == "latent_logvar":
        out[name] = np.full(shape, -4.0, np.float32)
      else:
        out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def latent_shape_of(config, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
  """(T', H', W', C) of a clip of frames x height x width pixels under config.vae's compression."""
  return tuple(vae_lib.latent_shape(config.vae, frames, height, width))


def build_dit_train_setup(
  config,
  *,
  frames: int | None = None,
  height: int | None = None,
  width: int | None = None,
  batch_size: int | None = None,
) -> DiTTrainSetup:
  """The config's DiT train step with synthetic inputs (clip size / batch default to config.data).

  Latent statistics are (0, 1) and the null text is zeros: values do not change the cost.
  """
  if config.dit.conditioning != "text":
    raise ValueError(
      f"dit.conditioning={config.dit.conditioning!r}: the train-step benchmark and memory estimate "
      "cover text-conditional DiTs (configs/dit/*.py); class-conditional image configs are not "
      "supported yet (use tools/estimate.py for their params and FLOPs)"
    )
  frames = frames or config.data.num_frames
  height = height or config.data.height
  width = width or config.data.width
  batch_size = batch_size or config.data.batch_size
  denoiser = factory.build_denoiser(config, latent_shape_of(config, frames, height, width))
  tx = make_optimizer(config.train)
  init_fn = dit_step.make_init_fn(denoiser, tx, ema=config.train.ema_decay > 0)
  frozen_init_fn = None
  if lora_lib.enabled(config):  # adapters train; the base is a frozen argument of the step
    frozen_init_fn = lora_base_init_fn(denoiser, config.lora.base_dtype)
    denoiser = dataclasses.replace(
      denoiser, dit=lora_lib.LoraModel(denoiser.dit, lora_lib.LoraSpec.from_config(config.lora))
    )
    init_fn = dit_step.make_lora_init_fn(denoiser, tx, ema=config.train.ema_decay > 0)
  channels = denoiser.latent_shape[-1]
  latent_stats = {"mean": np.zeros((channels,), np.float32), "std": np.ones((channels,), np.float32)}
  null_fields = {
    k: np.ones(shape, dtype) if k == "text_mask" else np.zeros(shape, dtype)
    for k, (shape, dtype) in fields.field_specs(denoiser.text_encoder).items()
  }
  step_args = dict(
    denoiser=denoiser,
    diffusion=build_diffusion(config.diffusion),
    latent_stats=latent_stats,
    null_fields=null_fields,
    cfg_dropout=config.diffusion.cfg_dropout,
    tx=tx,
    ema_decay=config.train.ema_decay,
    conditioning=config.train.conditioning,
  )
  if frozen_init_fn is not None:
    train_step = dit_step.make_lora_train_step(**step_args)
  else:
    train_step, _ = dit_step.make_train_step(**step_args)
  return DiTTrainSetup(
    denoiser=denoiser, init_fn=init_fn, train_step=train_step, batch_size=batch_size, frozen_init_fn=frozen_init_fn
  )


def lora_base_init_fn(denoiser: factory.Denoiser, dtype: str) -> Callable:
  """rng -> the (boxed) params of `denoiser` cast to `dtype`: the shapes of a LoRA run's frozen base."""

  def init(rng):
    return jax.tree.map(
      lambda x: x.replace_boxed(x.value.astype(dtype)) if isinstance(x, nn.Partitioned) else x.astype(dtype),
      denoiser.init(rng),
      is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )

  return init


def _shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest shard of each)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return int(total)


def _check_mesh_shape(mesh_shape: Sequence[int]) -> tuple[int, ...]:
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != len(mesh_lib.MESH_AXES) or any(s < 1 for s in shape):
    raise ValueError(
      f"mesh_shape {tuple(mesh_shape)} must give a positive size for each axis {mesh_lib.MESH_AXES}, "
      f"e.g. (1, 64, 1, 1) for 64-way FSDP; -1 is not allowed here (no device count to fill)"
    )
  return shape


# XLA:CPU compiles used only for their memory analysis: skip LLVM optimisation (about 2x faster
# to compile; buffer assignment, hence every byte count, is decided before it and unchanged).
ANALYSIS_ONLY_CPU_OPTIONS = {"xla_backend_optimization_level": 0}


def compile_train_step(
  setup: DiTTrainSetup, config, mesh, compiler_options: dict | None = None
) -> tuple[Any, dict[str, Any]]:
  """(compiled step, abstract inputs {'state', 'batch'}) for `mesh`; allocates nothing.

  The step is jitted as `sora_jax.training.loop.train` does (`partitioning.jit_sharded_step`):
  state sharded by the logical rules and donated, batch split over ('data', 'fsdp'), metrics
  replicated. `compiler_options` are XLA debug options for this compile only.
  """
  mesh_lib.check_divisibility(
    mesh, batch_size=setup.batch_size, num_heads=setup.dit.num_heads, num_tokens=setup.num_tokens
  )
  rules = partitioning.logical_rules(config)
  rng = jax.random.key(0)
  abstract_state, shardings = partitioning.abstract_state(setup.init_fn, mesh, rules, rng)
  batch_sharding = partitioning.batch_sharding(mesh)
  abstract_batch = {
    k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding) for k, (shape, dtype) in setup.batch_shapes().items()
  }
  frozen, frozen_shardings = (), None
  if setup.frozen_init_fn is not None:
    abstract_frozen, frozen_shardings = partitioning.abstract_state(setup.frozen_init_fn, mesh, rules, rng)
    frozen = (abstract_frozen,)
  with partitioning.use_mesh(mesh, rules):
    jitted = partitioning.jit_sharded_step(setup.train_step, shardings, mesh, frozen_shardings)
    compiled = jitted.lower(abstract_state, abstract_batch, rng, *frozen).compile(compiler_options=compiler_options)
  return compiled, {"state": abstract_state, "batch": abstract_batch, "frozen": frozen[0] if frozen else None}


def _estimate_in_process(config, frames, height, width, mesh_shape, batch_size) -> dict:
  setup = build_dit_train_setup(config, frames=frames, height=height, width=width, batch_size=batch_size)
  devices = jax.devices()[: math.prod(mesh_shape)]
  mesh = mesh_lib.make_mesh(mesh_shape, devices=devices)
  options = ANALYSIS_ONLY_CPU_OPTIONS if devices[0].platform == "cpu" else None
  compiled, abstract = compile_train_step(setup, config, mesh, compiler_options=options)
  stats = compiled.memory_analysis()
  state = abstract["state"]
  result = {
    "params_bytes": _shard_bytes(state.params),
    "optimizer_bytes": _shard_bytes(state.opt_state),
    "ema_bytes": _shard_bytes(state.ema_params) if state.ema_params is not None else 0,
    "batch_bytes": _shard_bytes(abstract["batch"]),
    "frozen_bytes": _shard_bytes(abstract["frozen"]) if abstract["frozen"] is not None else 0,
    "temp_bytes": int(stats.temp_size_in_bytes),
    "argument_bytes": int(stats.argument_size_in_bytes),
    "output_bytes": int(stats.output_size_in_bytes),
    "alias_bytes": int(stats.alias_size_in_bytes),
  }
  result["state_bytes"] = result["params_bytes"] + result["optimizer_bytes"] + result["ema_bytes"]
  result["lora_rank"] = int(config.lora.rank) if lora_lib.enabled(config) else 0
  result["peak_bytes"] = (
    result["argument_bytes"] + result["output_bytes"] - result["alias_bytes"] + result["temp_bytes"]
  )
  result.update(
    method="compiled",
    platform=devices[0].platform,
    device_kind=devices[0].device_kind,
    mesh_shape=list(mesh_shape),
    num_devices=len(devices),
    batch_size=setup.batch_size,
    latent_shape=list(setup.latent_shape),
    tokens=setup.num_tokens,
    frames=frames,
    height=height,
    width=width,
    dtype=config.dit.dtype,
    remat_policy=config.dit.remat_policy,
  )
  return result


def _estimate_in_child(config, frames, height, width, mesh_shape, batch_size) -> dict:
  """Runs the estimate in a child Python whose JAX has prod(mesh_shape) virtual CPU devices."""
  n = math.prod(mesh_shape)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=hardware.xla_flags_with_device_count(n))
  request = json.dumps(
    {
      "config": json.loads(to_json(config)),
      "frames": frames,
      "height": height,
      "width": width,
      "mesh_shape": list(mesh_shape),
      "batch_size": batch_size,
    }
  )
  proc = subprocess.run(
    [sys.executable, "-m", "sora_jax.training.memory"],
    input=request,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  if proc.returncode != 0:
    raise RuntimeError(f"memory estimate on {n} virtual CPU devices failed:\n{proc.stderr[-4000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result["method"] = "compiled_virtual_cpu"
  return result


def estimate_train_memory(
  config,
  *,
  frames: int | None = None,
  height: int | None = None,
  width: int | None = None,
  mesh_shape: Sequence[int] = (1, 1, 1, 1),
  batch_size: int | None = None,
) -> dict:
  """Per-device memory of one DiT train step of `config` on a (data, fsdp, context, tensor) mesh.

  Args:
    config: a full DiT config (configs/dit/*.py); its dit, text, vae, train, diffusion sections count.
    frames, height, width: clip size in pixels (default config.data.*).
    mesh_shape: explicit sizes of (data, fsdp, context, tensor); their product is the device count.
    batch_size: global batch (default config.data.batch_size); must divide over data x fsdp.
  With config.lora.rank > 0 it is a LoRA step: params / optimizer / EMA are the adapters', and
  frozen_bytes the frozen base (in config.lora.base_dtype), an argument of the step.

  Returns:
    A JSON-ready dict of per-device bytes: params_bytes, optimizer_bytes, ema_bytes, state_bytes, frozen_bytes,
    batch_bytes, temp_bytes (activations, gradients, workspace), peak_bytes; plus method
    ("compiled" on this machine's devices, or "compiled_virtual_cpu"), platform, mesh_shape,
    num_devices, batch_size, latent_shape, tokens, frames, height, width, dtype, remat_policy.
  Raises:
    ValueError: bad mesh shape, or a size that does not divide over its mesh axes.
  """
  mesh_shape = _check_mesh_shape(mesh_shape)
  args = (
    config,
    frames or config.data.num_frames,
    height or config.data.height,
    width or config.data.width,
    mesh_shape,
    batch_size or config.data.batch_size,
  )
  if math.prod(mesh_shape) <= jax.device_count():
    return _estimate_in_process(*args)
  return _estimate_in_child(*args)


def gib(n_bytes: float) -> float:
  """Bytes -> GiB, rounded for tables."""
  return round(n_bytes / 2**30, 3)


def fits_on(result: dict, device: str, headroom: float = 0.9) -> bool:
  """Whether `peak_bytes` fits in `headroom` x the memory of one `device` (a DEVICE_MEMORY_GIB key)."""
  if device not in DEVICE_MEMORY_GIB:
    raise ValueError(f"unknown device {device!r}; known: {', '.join(DEVICE_MEMORY_GIB)}")
  return result["peak_bytes"] <= headroom * DEVICE_MEMORY_GIB[device] * 2**30


def summary_lines(result: dict) -> list[str]:
  """Human-readable lines of an `estimate_train_memory` result (GiB per device)."""
  lines = [
    f"per-device memory, mesh (data, fsdp, context, tensor) = {tuple(result['mesh_shape'])}, "
    f"batch {result['batch_size']}, {result['tokens']} tokens/example, {result['method']} "
    f"({result['platform']})"
  ]
  keys = ("params_bytes", "optimizer_bytes", "ema_bytes", "batch_bytes", "temp_bytes", "peak_bytes")
  if result.get("lora_rank"):  # params = the adapters; the frozen base is counted apart
    lines[0] += f", LoRA rank {result['lora_rank']}"
    keys = ("frozen_bytes",) + keys
  for key in keys:
    lines.append(f"  {key.removesuffix('_bytes'):<10s} {gib(result[key]):>10.3f} GiB")
  return lines


def _child_main() -> None:
  """`python -m sora_jax.training.memory` < request JSON: the child side of `_estimate_in_child`."""
  request = json.loads(sys.stdin.read())
  config = from_dict(request.pop("config"))
  result = _estimate_in_process(
    config, request["frames"], request["height"], request["width"], tuple(request["mesh_shape"]), request["batch_size"]
  )
  print(json.dumps(result))


if __name__ == "__main__":
  _child_main()
