"""What this machine can do, read at run time: CPU model and flags, load, and the compute dtype "auto" picks.

    from sora_jax import hardware
    hardware.cpu_info()          # {'model': 'AMD EPYC ...', 'flags': {'avx512_bf16': True, 'amx_bf16': False}}
    hardware.auto_compute_dtype() # "bfloat16" where dot products are native in bf16, else "float32"
    hardware.record()            # the dict every benchmark number is stored with (CPU, flags, load, JAX backend)

`dit.dtype="auto"` / `vae.dtype="auto"` (models/dtypes.py) resolve through `auto_compute_dtype`:
bfloat16 matmul inputs with float32 accumulation only where the hardware multiplies bf16 natively,
float32 elsewhere. On x86 CPUs that is AVX512-BF16 (`avx512_bf16`, VDPBF16PS) or AMX-BF16
(`amx_bf16`, tile matmuls); without either, a bf16 dot is emulated (converted to float32 and back)
and is slower than float32. GPUs and TPUs multiply bf16 natively. The environment variable
SORA_JAX_AUTO_DTYPE=float32|bfloat16 overrides the choice (for A/B measurements).

Import-light: no JAX import at module level (tools read the record before JAX starts).
"""

from __future__ import annotations

import functools
import os
import platform

# The /proc/cpuinfo flags that decide bf16 speed (and that benchmarks record), in one place.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
RECORDED_FLAGS = (
  "avx2",
  "fma",
  "avx512f",
  "avx512_vnni",
  "avx512_bf16",
  "avx512_fp16",
  "amx_tile",
  "amx_bf16",
  "amx_int8",
)
AUTO_DTYPE_ENV = "SORA_JAX_AUTO_DTYPE"
AUTO_CHOICES = ("float32", "bfloat16")


def parse_cpuinfo(text: str) -> dict:
  """{'model': str, 'flags': set[str]} from the text of /proc/cpuinfo (the first processor's entries)."""
  model, flags = "", set()
  for line in text.splitlines():
    key, _, value = line.partition(":")
    key = key.strip().lower()
    if key in ("model name", "hardware", "cpu model") and not model:
      model = value.strip()
    elif key in ("flags", "features") and not flags:  # x86 "flags", aarch64 "Features"
      flags = set(value.split())
  return {"model": model, "flags": flags}


@functools.cache
def _read_cpuinfo(path: str = "/proc/cpuinfo") -> dict:
  try:
    with open(path) as f:
      return parse_cpuinfo(f.read())
  except OSError:  # not Linux: no flags known
    return {"model": "", "flags": set()}


def cpu_info() -> dict:
  """CPU model, the RECORDED_FLAGS present (name -> bool), architecture, CPU count and the CPUs we may use."""
  info = _read_cpuinfo()
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:  # macOS
    usable = os.cpu_count()
  return {
    "model": info["model"] or platform.processor() or "unknown",
    "arch": platform.machine(),
    "flags": {name: name in info["flags"] for name in RECORDED_FLAGS},
    "cpu_count": os.cpu_count(),
    "cpus_usable": usable,
  }


def cpu_has_native_bf16(flags: set[str] | dict | None = None) -> bool:
  """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16); `flags` defaults to this machine's."""
  if flags is None:
    flags = _read_cpuinfo()["flags"]
  elif isinstance(flags, dict):
    flags = {name for name, present in flags.items() if present}
  return any(name in flags for name in BF16_FLAGS)


def auto_compute_dtype(backend: str | None = None, flags: set[str] | None = None) -> str:
  """The dtype name "auto" stands for: "bfloat16" on GPU/TPU and on CPUs with native bf16 dot products,
  else "float32". `backend` defaults to JAX's default backend; SORA_JAX_AUTO_DTYPE overrides."""
  forced = os.environ.get(AUTO_DTYPE_ENV, "")
  if forced:
    if forced not in AUTO_CHOICES:
      raise ValueError(f"{AUTO_DTYPE_ENV}={forced!r} is not one of {', '.join(AUTO_CHOICES)} (or unset)")
    return forced
  if backend is None:
    import jax

    backend = jax.default_backend()
  if backend != "cpu":
    return "bfloat16"
  return "bfloat16" if cpu_has_native_bf16(flags) else "float32"


def load_average() -> dict:
  """1-, 5- and 15-minute load averages (None where the OS has none)."""
  try:
    one, five, fifteen = os.getloadavg()
  except OSError:
    return {"1min": None, "5min": None, "15min": None}
  return {"1min": one, "5min": five, "15min": fifteen}


def record(with_jax: bool = True) -> dict:
  """The hardware record stored with every benchmark number: CPU model + flags, CPUs, load, XLA_FLAGS,
  and (with_jax) JAX's backend, device kind and what dtype "auto" resolves to here."""
  out = {
    "cpu": cpu_info(),
    "native_bf16_dot": cpu_has_native_bf16(),
    "load_average": load_average(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "python": platform.python_version(),
  }
  if with_jax:
    import jax

    out.update(
      jax_version=jax.__version__,
      backend=jax.default_backend(),
      device_kind=jax.devices()[0].device_kind,
      device_count=jax.device_count(),
      auto_dtype=auto_compute_dtype(),
    )
  return out


def describe(rec: dict) -> str:
  """One line for tables and docs: 'CPU model (arch), N CPUs, avx512_bf16 yes, amx_bf16 no, load 0.12'."""
  cpu, flags = rec["cpu"], rec["cpu"]["flags"]
  load = rec["load_average"]["1min"]
  marks = ", ".join(f"{name} {'yes' if flags.get(name) else 'no'}" for name in BF16_FLAGS)
  load_text = f"load {load:.2f}" if load is not None else "load n/a"
  return f"{cpu['model']} ({cpu['arch']}), {cpu['cpus_usable']}/{cpu['cpu_count']} CPUs, {marks}, {load_text}"


def xla_flags_with_device_count(n: int, flags: str | None = None) -> str:
  """XLA_FLAGS for a child process with `n` virtual CPU devices: `flags` (default: this environment's XLA_FLAGS)
  with any device count replaced, so the child keeps the other flags its parent runs with."""
  flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
  kept = [f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join([*kept, f"--xla_force_host_platform_device_count={n}"])
