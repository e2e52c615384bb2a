"""Compute dtypes by config name ("float32", "bfloat16"), one table for every model.

Parameters are always float32; these name what matmuls and convolutions compute in.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, field: str) -> Any:
  """The jnp dtype named `name`; `field` (e.g. "vae.dtype") names the config key in the error."""
  if name not in DTYPES:
    raise ValueError(f"{field}={name!r} is not one of {sorted(DTYPES)}")
  return DTYPES[name]
