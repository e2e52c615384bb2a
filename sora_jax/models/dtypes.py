"""Compute dtypes by config name ("float32", "bfloat16", "auto"), one table for every model.

Parameters are always float32; these name what matmuls and convolutions compute in
(float32 accumulation either way). "auto" is resolved when the model is traced, by
`sora_jax.hardware.auto_compute_dtype`: bfloat16 where the hardware has native bf16 dot
products (GPU, TPU, x86 with AVX512-BF16 or AMX-BF16), float32 elsewhere.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from sora_jax import hardware

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPE_NAMES = (*DTYPES, "auto")  # what a config's *.dtype may say


def resolve_name(name: str, field: str) -> str:
  """ "float32" / "bfloat16" as given; "auto" -> the choice for this machine; anything else raises naming `field`."""
  if name not in DTYPE_NAMES:
    raise ValueError(f"{field}={name!r} is not one of {', '.join(DTYPE_NAMES)}")
  return hardware.auto_compute_dtype() if name == "auto" else name


def compute_dtype(name: str, field: str) -> Any:
  """The jnp dtype named `name` ("auto" resolved for this machine); `field` (e.g. "vae.dtype") names the config key."""
  return DTYPES[resolve_name(name, field)]
