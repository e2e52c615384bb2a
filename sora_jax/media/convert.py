"""Converting between model-space float videos and displayable uint8 frames.

Models work on float videos in [-1, 1] ([B, T, H, W, 3] from the data pipeline);
files and contact sheets need uint8 in [0, 255]. Works on numpy or jax arrays
(the result is always numpy, on the host).
"""

from __future__ import annotations

import numpy as np


def to_uint8(video, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Maps floats in `value_range` to uint8 [0, 255] (clipped, rounded); any shape.

  uint8 input is returned unchanged, so callers can pass either.
  """
  video = np.asarray(video)
  if video.dtype == np.uint8:
    return video
  low, high = value_range
  if not high > low:
    raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
  scaled = (video.astype(np.float32) - low) * (255.0 / (high - low))
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_float(video, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Maps uint8 [0, 255] to float32 in `value_range`; any shape. Inverse of `to_uint8`."""
  video = np.asarray(video)
  if video.dtype != np.uint8:
    raise ValueError(f"to_float expects uint8 frames, got {video.dtype}")
  low, high = value_range
  return (video.astype(np.float32) * ((high - low) / 255.0) + low).astype(np.float32)
