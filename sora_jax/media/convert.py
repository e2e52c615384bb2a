"""Converting between model-space float videos and displayable uint8 frames.

Models work on float videos in [-1, 1] ([B, T, H, W, 3] from the data pipeline);
files and contact sheets need uint8 in [0, 255]. `to_uint8` is the one conversion of the
package: numpy in, numpy out (on the host); a jax array (or a tracer, inside jit: the
sampler's and the VAE evaluation's compiled functions use it) in, a jax array out.
"""

from __future__ import annotations

import sys

import numpy as np


def _array_module(video):
  """jax.numpy for jax arrays and tracers, numpy for anything else (jax is not imported here)."""
  jax = sys.modules.get("jax")  # a jax array implies jax is already imported
  if jax is not None and isinstance(video, jax.Array):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    return jnp
  return np


def to_uint8(video, value_range: tuple[float, float] = (-1.0, 1.0)):
  """Maps floats in `value_range` to uint8 [0, 255] (in float32, rounded half to even, clipped); any shape.

  uint8 input is returned unchanged, so callers can pass either. numpy (or array-like) input
  gives a numpy array; a jax array or tracer gives a jax array (usable under jit).
  """
  xp = _array_module(video)
  video = xp.asarray(video)
  if video.dtype == np.uint8:
    return video
  low, high = value_range
  if not high > low:
    raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
  scaled = (video.astype(np.float32) - low) * (255.0 / (high - low))
  return xp.clip(xp.rint(scaled), 0, 255).astype(np.uint8)


def to_float(video, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Maps uint8 [0, 255] to float32 in `value_range`; any shape. Inverse of `to_uint8`."""
  video = np.asarray(video)
  if video.dtype != np.uint8:
    raise ValueError(f"to_float expects uint8 frames, got {video.dtype}")
  low, high = value_range
  return (video.astype(np.float32) * ((high - low) / 255.0) + low).astype(np.float32)
