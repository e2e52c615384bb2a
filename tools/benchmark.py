r"""Speed of a config: compile time, step time, tokens/s, achieved TFLOP/s and MFU, as a table or JSON.

  python tools/benchmark.py --config=configs/dit/video.py:wan-small --what=train --frames=13 \
      --height=128 --width=128 --batch=2 --config.dit.dtype=bfloat16 --json
  python tools/benchmark.py --config=configs/dit/demo.py --what=sample --config.sample.num_steps=10
  python tools/benchmark.py --config=configs/dit/demo.py --what=vae --batch=2
  python tools/benchmark.py --config=configs/vae/demo.py --what=vae_train --json

What is timed (inputs are synthetic; no dataset, VAE checkpoint or pretrained weights):

* train:  the real DiT train step (`sora_jax.training.dit_step`: flow-matching loss, CFG
          dropout, AdamW, EMA), jitted with the state/batch shardings of the mesh in
          `config.mesh` and the state donated, exactly as tools/train_dit.py runs it.
* sample: the scan sampler (`config.sample.sampler`, `num_steps`, classifier-free guidance when
          `guidance_scale` != 1) as one compiled function; also one compiled guided model call
          (one forward over 2B examples with CFG), so `scan_overhead` = time per sampler model call
          / time of one standalone call (1.00 = the scan adds nothing).
* vae:    encode + decode of a clip with `config.vae` (`encode_video` / `decode_latents`).
* vae_train: the real VAE train step (`sora_jax.training.vae_step`: losses from `config.vae_loss`,
          AdamW from `config.train`), jitted with the state donated as tools/train_vae.py runs it,
          on one device.

With --buckets (--what=train; 'config' = config.data.buckets, or SIZE=PROBABILITY[:BATCH],...) the train
step is timed at every bucket's size and batch (one compile each, as in training): a section per bucket
with tokens, step time, tokens/s and the compiled step's memory, and the probability-weighted step time:

  python tools/benchmark.py --config=configs/dit/demo_sizes.py --what=train --buckets=config --json

Each timed step is run `--warmup` times, then `--steps` times; the median, p10 and p90 are
reported. FLOPs: the DiT's analytic count (`sora_jax.models.counting`, 2 per multiply-add;
a train step = 3x forward, recomputation from remat is not counted: this is *model* FLOPs
utilisation); the VAE's from XLA's cost analysis of the compiled function. MFU = achieved
FLOP/s / peak, with the peak from PEAK_TFLOPS (dense bf16 per chip x devices) by
`jax.devices()[0].device_kind`, or on CPU the measured rate of a large matmul on this machine
(bf16 with f32 accumulation, or float32 where that is faster: CPUs without AMX-BF16), or
`--cpu_peak_tflops`.
"""

import json
import math
import platform
import time

from absl import app, flags
from ml_collections import config_flags

from sora_jax.configuration import run_tool

# Dense bf16 peak TFLOP/s per chip (vendor datasheets, without sparsity). Matched as the longest
# key contained in `device_kind` (so "TPU v5 lite" wins over "TPU v5", "H100 PCIe" over "H100").
PEAK_TFLOPS = {
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,  # v5e reports "TPU v5 lite"
  "TPU v5e": 197.0,
  "TPU v5": 459.0,  # v5p reports "TPU v5"
  "TPU v5p": 459.0,
  "TPU v6 lite": 918.0,  # v6e (Trillium) reports "TPU v6 lite"
  "TPU v6e": 918.0,
  "A100": 312.0,
  "H100 PCIe": 756.0,
  "H100": 989.0,  # SXM
  "H200": 989.0,
}
WHATS = ("train", "sample", "vae", "vae_train")


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so tests can import this module)."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/dit/video.py:wan-small or configs/dit/demo.py; override any field "
    "with --config.KEY=VALUE (e.g. --config.dit.dtype=bfloat16 --config.mesh.shape='(1,-1,1,1)').",
  )
  flags.DEFINE_enum(
    "what",
    "train",
    WHATS,
    "train: DiT train step; sample: scan sampler; vae: encode+decode; vae_train: VAE train step.",
  )
  flags.DEFINE_integer("steps", 10, "Timed repetitions (after warm-up); the median is reported.")
  flags.DEFINE_integer("warmup", 2, "Untimed repetitions after compiling (caches, allocator, threads).")
  flags.DEFINE_integer("batch", 0, "Global batch size (default config.data.batch_size).")
  flags.DEFINE_integer("frames", 0, "Clip length in pixel frames, 1+4k (default config.data.num_frames).")
  flags.DEFINE_integer("height", 0, "Clip height in pixels (default config.data.height).")
  flags.DEFINE_integer("width", 0, "Clip width in pixels (default config.data.width).")
  flags.DEFINE_string(
    "buckets",
    "",
    "--what=train: time every bucket of a table, 'config' (config.data.buckets) or '17x32x32=0.5:32,1x32x32=0.5' "
    "(batch 0 or left out = data.batch_size scaled by tokens).",
  )
  flags.DEFINE_bool("json", False, "Print one JSON object (every number, device, versions) instead of a table.")
  flags.DEFINE_float(
    "cpu_peak_tflops",
    0.0,
    "CPU only: peak TFLOP/s for MFU; 0 = measure a large matmul (bf16 "
    "with f32 accumulation and float32; the faster counts) on this machine now.",
  )
  flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device, overriding the table (e.g. an unlisted chip).")
  flags.mark_flag_as_required("config")


# ------------------------------------------------------------------------------------------ arithmetic


def lookup_peak_tflops(device_kind: str) -> tuple[str, float] | None:
  """(table key, dense bf16 peak TFLOP/s per chip) of the longest PEAK_TFLOPS key in `device_kind`, or None."""
  kind = device_kind.lower()
  matches = [key for key in PEAK_TFLOPS if key.lower() in kind]
  if not matches:
    return None
  key = max(matches, key=len)
  return key, PEAK_TFLOPS[key]


def achieved_tflops(flops: float, seconds: float) -> float:
  """FLOPs done in `seconds` -> TFLOP/s."""
  if seconds <= 0:
    raise ValueError(f"a step time must be positive, got {seconds}")
  return flops / seconds / 1e12


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
  """Model FLOPs utilisation: achieved TFLOP/s / peak TFLOP/s (all devices together), in [0, 1] normally."""
  if peak_tflops <= 0:
    raise ValueError(f"peak TFLOP/s must be positive, got {peak_tflops}")
  return achieved_tflops(flops, seconds) / peak_tflops


def summarize(times: list[float]) -> dict[str, float]:
  """Median, p10, p90, mean and min of a list of durations (seconds)."""
  import numpy as np

  if not times:
    raise ValueError("no timings: --steps must be >= 1")
  t = np.asarray(times, np.float64)
  return {
    "median_s": float(np.median(t)),
    "p10_s": float(np.percentile(t, 10)),
    "p90_s": float(np.percentile(t, 90)),
    "mean_s": float(t.mean()),
    "min_s": float(t.min()),
  }


def time_calls(fn, steps: int, warmup: int) -> list[float]:
  """Runs `fn()` warmup + steps times, blocking on its result; returns the timed durations."""
  import jax

  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def time_train_steps(compiled, state, batch, rng, steps: int, warmup: int, frozen=()) -> tuple[list[float], float]:
  """Times a compiled (state, batch, rng[, frozen]) -> (state, metrics) step that donates its state.

  Each call feeds the previous call's state back in (the donated input is gone). Returns the
  timed durations and the last step's loss. `frozen`: a LoRA step's base params, as (params,).
  """
  losses = []

  def step():
    nonlocal state
    state, metrics = compiled(state, batch, rng, *frozen)
    losses.append(metrics["loss"])
    return state, metrics

  times = time_calls(step, steps, warmup)
  return times, float(losses[-1])


def measure_cpu_matmul_tflops(size: int = 2048, repeats: int = 5) -> dict[str, float]:
  """This machine's TFLOP/s (best of `repeats`) for a [size, size] x [size, size] matmul, by input dtype.

  "bfloat16" has f32 accumulation (`preferred_element_type`), as our models use it. It is the
  fast path only on CPUs with AMX-BF16; elsewhere float32 is faster, so both are measured.
  """
  import jax
  import jax.numpy as jnp

  rates = {}
  for name, dtype in (("bfloat16", jnp.bfloat16), ("float32", jnp.float32)):
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    rates[name] = achieved_tflops(2.0 * size**3, min(time_calls(lambda f=matmul, a=a, b=b: f(a, b), repeats, warmup=1)))
  return rates


def peak_info(num_devices: int, cpu_peak: float = 0.0, peak_override: float = 0.0) -> dict:
  """{'peak_tflops' (all devices), 'peak_source', 'device_kind', 'platform'} for this machine.

  On CPU the peak is the faster of the measured bf16 (f32-accumulating) and f32 matmul rates
  of the whole machine: virtual CPU devices share its cores, so it does not scale with them.
  """
  import jax

  device = jax.devices()[0]
  info = {"device_kind": device.device_kind, "platform": device.platform}
  if peak_override > 0:
    return dict(info, peak_tflops=peak_override * num_devices, peak_source="--peak_tflops")
  if device.platform == "cpu":
    if cpu_peak > 0:
      return dict(info, peak_tflops=cpu_peak, peak_source="--cpu_peak_tflops")
    rates = measure_cpu_matmul_tflops()
    best = max(rates, key=rates.get)
    return dict(
      info,
      peak_tflops=rates[best],
      cpu_matmul_tflops=rates,
      peak_source=f"measured 2048^3 matmul on this machine ({best} was faster)",
    )
  found = lookup_peak_tflops(device.device_kind)
  if found is None:
    return dict(info, peak_tflops=None, peak_source=f"unknown device kind {device.device_kind!r}: pass --peak_tflops")
  key, peak = found
  return dict(info, peak_tflops=peak * num_devices, peak_source=f"table: {key} x {num_devices}")


def add_rates(result: dict, flops_per_step: float | None, seconds: float, peak: dict) -> dict:
  """Adds achieved_tflops and mfu (None where unknown) to `result`."""
  result["flops_per_step"] = flops_per_step
  result["achieved_tflops"] = achieved_tflops(flops_per_step, seconds) if flops_per_step else None
  result["mfu"] = (
    mfu(flops_per_step, seconds, peak["peak_tflops"]) if flops_per_step and peak.get("peak_tflops") else None
  )
  return result


# ------------------------------------------------------------------------------------------ benchmarks


def _dit_forward_flops(setup) -> float:
  """Forward FLOPs (2 per multiply-add) of one example."""
  from sora_jax.models import counting, lora

  dit = lora.unwrap(setup.dit)
  flops = counting.count_flops(dit, setup.latent_shape[:3], text_length=setup.text_encoder.max_length)
  return flops["forward_flops"]


def _xla_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled function (per device program), or None if unavailable."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _shapes(setup) -> dict:
  return {
    "batch": setup.batch_size,
    "latent_shape": list(setup.latent_shape),
    "tokens": setup.num_tokens,
    "text_length": setup.text_encoder.max_length,
    "text_dim": setup.text_encoder.output_dim,
  }


def _random_clip(config, batch: int, frames: int, height: int, width: int):
  """A uniform [-1, 1] clip [B, T, H, W, 3] for the VAE benchmarks; 0 = the config's data size."""
  import jax

  b = batch or config.data.batch_size
  frames, height, width = frames or config.data.num_frames, height or config.data.height, width or config.data.width
  return jax.random.uniform(jax.random.key(config.seed), (b, frames, height, width, 3), minval=-1.0, maxval=1.0)


def _vae_shapes(config, video) -> dict:
  """The VAE benchmarks' shape fields for a clip [B, T, H, W, 3]."""
  from sora_jax.models import vae as vae_lib

  b, frames, height, width = video.shape[:4]
  return {
    "batch": b,
    "pixels": [frames, height, width],
    "latent_shape": list(vae_lib.latent_shape(config.vae, frames, height, width)),
    "num_devices": 1,
    "vae_dtype": config.vae.dtype,
  }


def _timed(fn):
  """(fn(), seconds it took): how each benchmark times its compile."""
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _result(what: str, compile_s: float, times: list[float], steps: int, warmup: int) -> dict:
  """The fields every benchmark's result starts with: what, compile time, timing summary, repetitions."""
  return {"what": what, "compile_s": compile_s, **summarize(times), "steps": steps, "warmup": warmup}


def benchmark_train(
  config,
  *,
  steps: int,
  warmup: int,
  batch: int = 0,
  frames: int = 0,
  height: int = 0,
  width: int = 0,
  peak: dict | None = None,
) -> dict:
  """Times the sharded DiT train step; returns the JSON-ready result (see the module docstring)."""
  import jax

  from sora_jax.sharding import mesh as mesh_lib
  from sora_jax.sharding import partitioning
  from sora_jax.training import memory

  setup = memory.build_dit_train_setup(config, frames=frames, height=height, width=width, batch_size=batch)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = partitioning.logical_rules(config)
  (compiled, _), compile_s = _timed(lambda: memory.compile_train_step(setup, config, mesh))
  state, _ = partitioning.init_sharded_state(setup.init_fn, mesh, rules, jax.random.key(config.seed))
  frozen = ()
  if setup.frozen_init_fn is not None:  # a LoRA step (config.lora.rank > 0): random base weights, frozen
    frozen = (partitioning.init_sharded_state(setup.frozen_init_fn, mesh, rules, jax.random.key(config.seed))[0],)
  batch_arrays = partitioning.shard_batch(setup.synthetic_batch(config.seed), mesh)
  rng = jax.random.key(config.seed + 1)
  with partitioning.use_mesh(mesh, rules):
    times, last_loss = time_train_steps(compiled, state, batch_arrays, rng, steps, warmup, frozen)
  stats = _result("train", compile_s, times, steps, warmup)
  peak = peak or peak_info(mesh.devices.size)
  forward = _dit_forward_flops(setup)
  result = {
    **stats,
    **_shapes(setup),
    "mesh_shape": [int(s) for s in mesh.devices.shape],
    "num_devices": int(mesh.devices.size),
    "tokens_per_s": setup.batch_size * setup.num_tokens / stats["median_s"],
    "forward_flops_per_example": forward,
    "flops_source": "sora_jax.models.counting (train = 3 x forward)",
    "xla_flops_per_device_step": _xla_flops(compiled),
    "loss": last_loss,
  }
  memory_stats = compiled.memory_analysis()
  if memory_stats is not None:
    result["temp_bytes"] = int(memory_stats.temp_size_in_bytes)
    result["argument_bytes"] = int(memory_stats.argument_size_in_bytes)
  return add_rates(result, 3.0 * forward * setup.batch_size, stats["median_s"], peak)


def benchmark_buckets(config, table: str, *, steps: int, warmup: int, peak: dict | None = None) -> dict:
  """The train step timed at every bucket of a table: {"buckets": {name: {...}}, "mean_step_s", "mean_tokens_per_s"}."""

  from sora_jax.recipes import dit_data

  sections = {}
  for bucket in dit_data.buckets_for_tool(config, table, multiple=dit_data.batch_multiple(config)):
    frames, height, width = bucket.size
    one = benchmark_train(
      config, steps=steps, warmup=warmup, batch=bucket.batch_size, frames=frames, height=height, width=width, peak=peak
    )
    keep = ("compile_s", "median_s", "p10_s", "p90_s", "tokens_per_s", "achieved_tflops", "mfu", "temp_bytes")
    sections[bucket.name] = {
      "probability": bucket.probability,
      "batch": bucket.batch_size,
      "tokens": bucket.tokens,
      "tokens_per_step": bucket.tokens * bucket.batch_size,
      **{k: one[k] for k in keep if k in one},
    }
  mean_step = sum(b["probability"] * b["median_s"] for b in sections.values())
  mean_tokens = sum(b["probability"] * b["tokens_per_step"] for b in sections.values())
  return {
    "what": "train_buckets",
    "buckets": sections,
    "mean_step_s": mean_step,
    "mean_tokens_per_s": mean_tokens / mean_step,
  }


def benchmark_sample(
  config,
  *,
  steps: int,
  warmup: int,
  batch: int = 0,
  frames: int = 0,
  height: int = 0,
  width: int = 0,
  peak: dict | None = None,
) -> dict:
  """Times the compiled scan sampler and one standalone guided model call (single device)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from sora_jax.diffusion import build_diffusion, guidance, samplers
  from sora_jax.diffusion.sampler_names import SAMPLERS
  from sora_jax.training import memory

  setup = memory.build_dit_train_setup(config, frames=frames, height=height, width=width, batch_size=batch)
  dit, b, n = setup.dit, setup.batch_size, setup.num_tokens
  length, text_dim = setup.text_encoder.max_length, setup.text_encoder.output_dim
  keys = jax.random.split(jax.random.key(config.seed), 4)
  cond = {
    "text": jax.random.normal(keys[0], (b, length, text_dim)),
    "text_mask": jnp.ones((b, length), bool),
    "pooled": jax.random.normal(keys[1], (b, text_dim)),
  }
  uncond = {
    "text": jnp.zeros((1, length, text_dim)),
    "text_mask": jnp.ones((1, length), bool),
    "pooled": jnp.zeros((1, text_dim)),
  }
  noise = jax.random.normal(keys[2], (b, *setup.latent_shape))
  params = jax.jit(lambda r: nn.meta.unbox(dit.init(r, noise, jnp.zeros((b,)), cond)["params"]))(keys[3])
  process = build_diffusion(config.diffusion)
  scale = float(config.sample.guidance_scale)
  use_cfg = scale != 1.0
  sampler, num_steps = config.sample.sampler, int(config.sample.num_steps)

  def guided_fn(p):
    model_fn = lambda x, t, c: dit.apply({"params": p}, x, t, c)
    if use_cfg:
      return guidance.cfg_model_fn(model_fn, cond, uncond, scale)
    return guidance.conditional_model_fn(model_fn, cond)

  run_sampler = jax.jit(
    lambda p, x: samplers.sample(guided_fn(p), x, process=process, sampler=sampler, num_steps=num_steps, num_tokens=n)
  )
  one_call = jax.jit(lambda p, x, t: guided_fn(p)(x, t))
  t_model = jnp.full((b,), 500.0)
  run_sampler_c, compile_s = _timed(lambda: run_sampler.lower(params, noise).compile())
  one_call_c = one_call.lower(params, noise, t_model).compile()
  # Alternate the two measurements so machine noise hits both alike.
  sample_times, call_times = [], []
  for _ in range(warmup):
    jax.block_until_ready(run_sampler_c(params, noise))
    jax.block_until_ready(one_call_c(params, noise, t_model))
  evals = SAMPLERS[sampler].model_evals_per_step
  for _ in range(steps):
    sample_times += time_calls(lambda: run_sampler_c(params, noise), 1, 0)
    call_times += time_calls(lambda: one_call_c(params, noise, t_model), evals * num_steps, 0)
  stats, call = _result("sample", compile_s, sample_times, steps, warmup), summarize(call_times)
  per_call = stats["median_s"] / (num_steps * evals)
  forward = _dit_forward_flops(setup)
  examples_per_call = 2 * b if use_cfg else b
  result = {
    **stats,
    **_shapes(setup),
    "num_devices": 1,
    "sampler": sampler,
    "num_steps": num_steps,
    "guidance_scale": scale,
    "cfg": use_cfg,
    "model_calls_per_step": evals,
    "time_per_sampler_step_s": stats["median_s"] / num_steps,
    "model_call_s": call["median_s"],
    "model_call_p10_s": call["p10_s"],
    "model_call_p90_s": call["p90_s"],
    "examples_per_model_call": examples_per_call,
    "scan_overhead": per_call / call["median_s"],
    "tokens_per_s": b * n * num_steps / stats["median_s"],
    "forward_flops_per_example": forward,
    "flops_source": "sora_jax.models.counting",
  }
  flops = forward * examples_per_call * evals * num_steps
  return add_rates(result, flops, stats["median_s"], peak or peak_info(1))


def random_params_like(abstract_params, seed: int = 0):
  """Random float32 params shaped like `abstract_params` (ShapeDtypeStructs), fast (numpy, no compile).

  Kernels get N(0, 1/fan_in) (fan_in = product of all but the last dimension), "scale" leaves
  ones, other vectors zeros: activations stay O(1), and a benchmark's cost does not depend on
  the values. (The VAE's own initialisers take ~14 s to compile even at toy sizes.)
  """
  import jax
  import numpy as np

  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    shape = tuple(leaf.shape)
    if len(shape) >= 2:
      scale = 1.0 / np.sqrt(max(1, math.prod(shape[:-1])))
      return (rng.standard_normal(shape) * scale).astype(leaf.dtype)
    name = str(getattr(path[-1], "key", path[-1]))
    return np.ones(shape, leaf.dtype) if name == "scale" else np.zeros(shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_params)


def benchmark_vae(
  config,
  *,
  steps: int,
  warmup: int,
  batch: int = 0,
  frames: int = 0,
  height: int = 0,
  width: int = 0,
  peak: dict | None = None,
) -> dict:
  """Times VAE encode (posterior mean) + decode of a random clip (single device, `random_params_like` weights)."""
  import flax.linen as nn
  import jax

  from sora_jax.models import vae as vae_lib

  module = vae_lib.CausalVAE(config.vae)
  video = _random_clip(config, batch, frames, height, width)
  abstract = jax.eval_shape(
    lambda r: nn.meta.unbox(module.init({"params": r}, video[:1], sample=False)["params"]),
    jax.random.key(config.seed + 1),
  )
  params = jax.device_put(random_params_like(abstract, config.seed))

  def roundtrip(p, v):
    mean, _ = vae_lib.encode_video(module, p, v)
    return vae_lib.decode_latents(module, p, mean)

  compiled, compile_s = _timed(lambda: jax.jit(roundtrip).lower(params, video).compile())
  stats = _result("vae", compile_s, time_calls(lambda: compiled(params, video), steps, warmup), steps, warmup)
  shapes = _vae_shapes(config, video)
  b, latent = shapes["batch"], shapes["latent_shape"]
  result = {
    **stats,
    **shapes,
    "tokens_per_s": b * latent[0] * latent[1] * latent[2] / stats["median_s"],
    "frames_per_s": b * shapes["pixels"][0] / stats["median_s"],
    "flops_source": "XLA cost analysis of the compiled encode+decode",
  }
  return add_rates(result, _xla_flops(compiled), stats["median_s"], peak or peak_info(1))


def benchmark_vae_train(
  config,
  *,
  steps: int,
  warmup: int,
  batch: int = 0,
  frames: int = 0,
  height: int = 0,
  width: int = 0,
  peak: dict | None = None,
) -> dict:
  """Times one VAE train step (forward, losses, backward, AdamW; the GAN too when configured) on one device."""
  import flax.linen as nn
  import jax

  from sora_jax.models import vae as vae_lib
  from sora_jax.training import vae_step
  from sora_jax.training.optimizer import make_optimizer

  video = _random_clip(config, batch, frames, height, width)
  vae_lib.check_video_shape(video.shape, config.vae)
  module, tx = vae_lib.CausalVAE(config.vae), make_optimizer(config.train)
  discriminator = vae_step.make_discriminator(config)
  ema_decay = config.train.ema_decay
  init_fn = vae_step.make_init_fn(module, tx, (1, *video.shape[1:]), discriminator, ema=ema_decay > 0)
  state = nn.meta.unbox(jax.jit(init_fn)(jax.random.key(config.seed + 1)))
  train_step = jax.jit(
    vae_step.make_train_step(module, tx, config.vae_loss, discriminator, ema_decay), donate_argnums=0
  )
  batch_arrays, rng = {"video": video}, jax.random.key(config.seed + 2)
  compiled, compile_s = _timed(lambda: train_step.lower(state, batch_arrays, rng).compile())
  times, last_loss = time_train_steps(compiled, state, batch_arrays, rng, steps, warmup)
  stats = _result("vae_train", compile_s, times, steps, warmup)
  shapes = _vae_shapes(config, video)
  b, latent = shapes["batch"], shapes["latent_shape"]
  result = {
    **stats,
    **shapes,
    "gan": discriminator is not None,
    "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
    "tokens_per_s": b * latent[0] * latent[1] * latent[2] / stats["median_s"],
    "examples_per_s": b / stats["median_s"],
    "steps_per_s": 1.0 / stats["median_s"],
    "flops_source": "XLA cost analysis of the compiled train step",
    "loss": last_loss,
  }
  return add_rates(result, _xla_flops(compiled), stats["median_s"], peak or peak_info(1))


BENCHMARKS = {
  "train": benchmark_train,
  "sample": benchmark_sample,
  "vae": benchmark_vae,
  "vae_train": benchmark_vae_train,
}


def environment() -> dict:
  """Device, library versions and the hardware record (CPU model, avx512_bf16 / amx_bf16, load) for the JSON."""
  import flax
  import jax

  from sora_jax import hardware

  return {
    "hardware": hardware.record(),
    "device_kind": jax.devices()[0].device_kind,
    "platform": jax.devices()[0].platform,
    "device_count": jax.device_count(),
    "jax_version": jax.__version__,
    "flax_version": flax.__version__,
    "python": platform.python_version(),
    "host": platform.machine(),
  }


def run(
  config,
  what: str,
  *,
  steps: int,
  warmup: int,
  batch: int = 0,
  frames: int = 0,
  height: int = 0,
  width: int = 0,
  cpu_peak_tflops: float = 0.0,
  peak_tflops: float = 0.0,
  config_name: str = "",
  buckets: str = "",
) -> dict:
  """One benchmark as a JSON-ready dict: the timings, rates, shapes, settings and environment."""
  if what not in BENCHMARKS:
    raise ValueError(f"--what={what!r} is not one of {', '.join(BENCHMARKS)}")
  if steps < 1 or warmup < 0:
    raise ValueError(f"--steps ({steps}) must be >= 1 and --warmup ({warmup}) >= 0")
  import jax

  from sora_jax.sharding import mesh as mesh_lib

  num_devices = math.prod(mesh_lib.resolve_mesh_shape(config.mesh.shape, jax.device_count())) if what == "train" else 1
  peak = peak_info(num_devices, cpu_peak_tflops, peak_tflops)
  if buckets:
    if what != "train":
      raise ValueError(f"--buckets times the train step: use it with --what=train, not --what={what}")
    result = benchmark_buckets(config, buckets, steps=steps, warmup=warmup, peak=peak)
  else:
    result = BENCHMARKS[what](
      config, steps=steps, warmup=warmup, batch=batch, frames=frames, height=height, width=width, peak=peak
    )
  result.update({k: v for k, v in peak.items() if k not in result})
  result.update(
    config=config_name,
    dit_dtype=config.dit.dtype,
    scan_layers=config.dit.scan_layers,
    attention_impl=config.dit.attention_impl,
    remat_policy=config.dit.remat_policy,
    variant=config.dit.variant,
    environment=environment(),
  )
  return result


def hardware_line(rec: dict) -> str:
  from sora_jax import hardware

  return f"{hardware.describe(rec)}; dtype 'auto' = {rec['auto_dtype']}"


def _print_table(result: dict) -> None:
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.4g}"
    return str(v)

  skip = ("environment",)
  for key, value in result.items():
    if key not in skip:
      print(f"{key:<28s} {fmt(value)}")
  env = result["environment"]
  print(f"{'environment':<28s} jax {env['jax_version']}, {env['device_count']} x {env['device_kind']}")
  print(f"{'hardware':<28s} {hardware_line(env['hardware'])}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  result = run(
    f.config,
    f.what,
    steps=f.steps,
    warmup=f.warmup,
    batch=f.batch,
    frames=f.frames,
    height=f.height,
    width=f.width,
    cpu_peak_tflops=f.cpu_peak_tflops,
    peak_tflops=f.peak_tflops,
    config_name=config_flags.get_config_filename(f["config"]),
    buckets=f.buckets,
  )
  result["overrides"] = config_flags.get_override_values(f["config"])
  if f.json:
    print(json.dumps(result, default=str))
  else:
    _print_table(result)


if __name__ == "__main__":
  define_flags()
  run_tool(main)
