"""sora_jax/hardware.py: CPU flags read at run time decide what dtype "auto" is; models accept "auto"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax import hardware
from sora_jax.models import dtypes
from sora_jax.models.dit import DiT

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16
processor\t: 1
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16
"""
SPR = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n"
OLD = "model name\t: Intel(R) Xeon(R) CPU E5-2690 v4\nflags\t\t: avx2 fma\n"


def test_parse_cpuinfo_reads_model_and_flags():
  info = hardware.parse_cpuinfo(ZEN5)
  assert info["model"] == "AMD EPYC 9B45"
  assert {"avx512_bf16", "avx512f"} <= info["flags"] and "amx_bf16" not in info["flags"]
  arm = hardware.parse_cpuinfo("processor : 0\nFeatures : fp asimd bf16\nCPU part : 0xd40\n")
  assert arm["flags"] == {"fp", "asimd", "bf16"}


@pytest.mark.parametrize("text, native", [(ZEN5, True), (SPR, True), (OLD, False)])
def test_auto_dtype_is_bf16_only_with_native_bf16_dots(text, native, monkeypatch):
  monkeypatch.delenv(hardware.AUTO_DTYPE_ENV, raising=False)
  flags = hardware.parse_cpuinfo(text)["flags"]
  assert hardware.cpu_has_native_bf16(flags) is native
  assert hardware.auto_compute_dtype("cpu", flags) == ("bfloat16" if native else "float32")
  assert hardware.auto_compute_dtype("gpu", flags) == "bfloat16"  # GPUs and TPUs multiply bf16 natively
  assert hardware.auto_compute_dtype("tpu", flags) == "bfloat16"


def test_auto_dtype_env_override(monkeypatch):
  monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, "float32")
  assert hardware.auto_compute_dtype("cpu", {"amx_bf16"}) == "float32"
  monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, "float16")
  with pytest.raises(ValueError, match="float32, bfloat16"):
    hardware.auto_compute_dtype("cpu", set())


def test_record_has_cpu_flags_and_load():
  rec = hardware.record()
  assert set(hardware.BF16_FLAGS) <= set(rec["cpu"]["flags"])
  assert rec["cpu"]["cpu_count"] >= 1 and rec["backend"] == jax.default_backend()
  assert rec["auto_dtype"] in hardware.AUTO_CHOICES and "1min" in rec["load_average"]
  line = hardware.describe(rec)
  assert "avx512_bf16" in line and "amx_bf16" in line and "load" in line


def test_compute_dtype_names(monkeypatch):
  assert dtypes.compute_dtype("float32", "dit.dtype") == jnp.float32
  monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, "bfloat16")
  assert dtypes.compute_dtype("auto", "dit.dtype") == jnp.bfloat16
  with pytest.raises(ValueError, match="vae.dtype='half' is not one of float32, bfloat16, auto"):
    dtypes.compute_dtype("half", "vae.dtype")


@pytest.mark.parametrize("forced", ["float32", "bfloat16"])
def test_dit_with_auto_dtype_computes_in_the_resolved_dtype(forced, monkeypatch):
  monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, forced)
  kw = dict(in_channels=4, text_dim=8, hidden_size=32, depth=1, num_heads=2, mlp_dim=64, scan_layers=False)
  x = jax.random.normal(jax.random.key(0), (1, 2, 4, 4, 4))
  t = jnp.array([500.0])
  cond = {"text": jnp.ones((1, 3, 8)), "text_mask": jnp.ones((1, 3), bool), "pooled": jnp.ones((1, 8))}
  params = DiT(**kw).init(jax.random.key(1), x, t, cond)
  # Random weights everywhere (adaLN-Zero would make the output 0 whatever the dtype).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = tree.unflatten([0.2 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)])
  auto = DiT(**kw, dtype="auto").apply(params, x, t, cond)
  explicit = DiT(**kw, dtype=forced).apply(params, x, t, cond)
  other = DiT(**kw, dtype="float32" if forced == "bfloat16" else "bfloat16").apply(params, x, t, cond)
  np.testing.assert_array_equal(np.asarray(auto), np.asarray(explicit))  # same dtype -> the same program
  assert not np.array_equal(np.asarray(auto), np.asarray(other))  # and the dtype does change the numbers
