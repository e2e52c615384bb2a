"""Image/video quality metrics in jnp: PSNR and SSIM (Wang et al. 2004), jittable, per image.

Both take two arrays of the same shape [..., H, W, C] (any leading batch/time
axes, e.g. [B, T, H, W, 3] video batches) and return one value per image,
shape [...]; average them as the evaluation needs (e.g. `psnr(...).mean()` is
the mean per-frame PSNR). `max_value` is the dynamic range: 255 for uint8, 1.0
for [0, 1], 2.0 for [-1, 1] videos.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _check_pair(a, b, name: str) -> tuple[jnp.ndarray, jnp.ndarray]:
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"{name}: the two inputs must have the same shape, got {a.shape} and {b.shape}")
  if a.ndim < 3:
    raise ValueError(
      f"{name}: inputs must be [..., H, W, C], got shape {a.shape}; "
      "add a channel axis with x[..., None] for gray images"
    )
  return a.astype(jnp.float32), b.astype(jnp.float32)


def mse(a, b) -> jnp.ndarray:
  """Mean squared error per image: [..., H, W, C] x 2 -> [...]."""
  a, b = _check_pair(a, b, "mse")
  return jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))


def psnr(a, b, max_value: float = 1.0) -> jnp.ndarray:
  """Peak signal-to-noise ratio in dB per image: 10 log10(max_value^2 / MSE).

  Args:
    a, b: [..., H, W, C] arrays of the same shape (any dtype; computed in float32).
    max_value: the dynamic range of the data (255 for uint8, 2.0 for [-1, 1]).
  Returns:
    float32 [...]; +inf for identical images.
  """
  error = mse(a, b)
  return 10.0 * jnp.log10(jnp.float32(max_value) ** 2 / error)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """Normalised 1-D Gaussian of `size` taps (the SSIM paper's 11 taps, sigma 1.5)."""
  offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  window = np.exp(-0.5 * (offsets / sigma) ** 2)
  return (window / window.sum()).astype(np.float32)


def _valid_filter_matrix(length: int, window: np.ndarray) -> np.ndarray:
  """[length - k + 1, length] matrix M so that M @ x is the 'valid' correlation of x with `window`."""
  k = len(window)
  out = np.zeros((length - k + 1, length), dtype=np.float32)
  for i in range(length - k + 1):
    out[i, i : i + k] = window
  return out


def ssim(
  a, b, max_value: float = 1.0, *, filter_size: int = 11, filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
) -> jnp.ndarray:
  """Structural similarity per image (Wang et al. 2004), Gaussian window, mean over pixels and channels.

  Local means, variances and covariance use an 11x11 Gaussian (sigma 1.5)
  over the 'valid' region (no padding), per channel; the SSIM map is averaged
  over the valid pixels and the channels. The separable filter is applied as
  two small matrix products, so it is cheap and jittable for any shape.

  Args:
    a, b: [..., H, W, C] of the same shape, H and W >= filter_size.
    max_value: dynamic range (255 for uint8, 2.0 for [-1, 1]).
    filter_size, filter_sigma, k1, k2: the paper's constants by default.
  Returns:
    float32 [...]; 1.0 for identical images.
  """
  a, b = _check_pair(a, b, "ssim")
  height, width = a.shape[-3], a.shape[-2]
  if min(height, width) < filter_size:
    raise ValueError(
      f"ssim: images of {height}x{width} are smaller than the {filter_size}-tap window; "
      f"pass filter_size <= {min(height, width)}"
    )
  window = gaussian_window(filter_size, filter_sigma)
  rows = jnp.asarray(_valid_filter_matrix(height, window))
  cols = jnp.asarray(_valid_filter_matrix(width, window))

  def blur(x):  # [..., H, W, C] -> [..., H', W', C]
    return jnp.einsum("ih,...hwc,jw->...ijc", rows, x, cols, precision="highest", preferred_element_type=jnp.float32)

  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a**2
  var_b = blur(b * b) - mu_b**2
  cov = blur(a * b) - mu_a * mu_b
  c1 = (k1 * max_value) ** 2
  c2 = (k2 * max_value) ** 2
  ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
  return jnp.mean(ssim_map, axis=(-3, -2, -1))
