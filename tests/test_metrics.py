"""Tests for sora_jax.evaluation.metrics against known values and an independent scipy SSIM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from sora_jax.evaluation import metrics


def _reference_ssim(a, b, max_value, size=11, sigma=1.5):
  """Wang et al. 2004 SSIM of one [H, W, C] pair with scipy 2-D correlation, written independently."""
  x = np.arange(size) - size // 2
  g = np.exp(-(x**2) / (2 * sigma**2))
  kernel = np.outer(g, g)
  kernel /= kernel.sum()
  c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
  values = []
  for ch in range(a.shape[-1]):
    x1 = a[..., ch].astype(np.float64)
    x2 = b[..., ch].astype(np.float64)
    f = lambda z: signal.correlate2d(z, kernel, mode="valid")
    m1, m2 = f(x1), f(x2)
    s11, s22, s12 = f(x1 * x1) - m1**2, f(x2 * x2) - m2**2, f(x1 * x2) - m1 * m2
    smap = (2 * m1 * m2 + c1) * (2 * s12 + c2) / ((m1**2 + m2**2 + c1) * (s11 + s22 + c2))
    values.append(smap.mean())
  return float(np.mean(values))


def _images(shape, seed=0):
  rng = np.random.RandomState(seed)
  a = rng.uniform(0, 1, shape).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
  return a, b


def test_psnr_known_values():
  a = np.full((2, 3, 8, 8, 3), 100, np.uint8)
  np.testing.assert_allclose(metrics.psnr(a, a + 5, 255.0), 10 * np.log10(255**2 / 25), rtol=1e-6)
  assert metrics.psnr(a, a, 255.0).shape == (2, 3)
  assert np.all(np.isinf(metrics.psnr(a, a, 255.0)))
  # MSE of 0.01 on [0,1] data is exactly 20 dB.
  x = np.zeros((4, 4, 1), np.float32)
  assert float(metrics.psnr(x, x + 0.1, 1.0)) == pytest.approx(20.0, abs=1e-4)


def test_psnr_is_per_image():
  a = np.zeros((2, 4, 4, 3), np.float32)
  b = a.copy()
  b[1] += 0.1
  out = np.asarray(metrics.psnr(a, b, 1.0))
  assert np.isinf(out[0]) and out[1] == pytest.approx(20.0, abs=1e-4)


def test_ssim_matches_scipy_reference():
  a, b = _images((3, 24, 20, 3))
  ours = np.asarray(metrics.ssim(a, b, 1.0))
  ref = [_reference_ssim(a[i], b[i], 1.0) for i in range(3)]
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  assert 0.0 < ours.min() < 0.99  # noisy images are clearly not identical


def test_ssim_uint8_range_and_identical():
  a, b = _images((2, 16, 16, 3), seed=1)
  a8, b8 = (a * 255).astype(np.uint8), (b * 255).astype(np.uint8)
  np.testing.assert_allclose(
    metrics.ssim(a8, b8, 255.0), [_reference_ssim(a8[i], b8[i], 255.0) for i in range(2)], atol=1e-5
  )
  np.testing.assert_allclose(metrics.ssim(a8, a8, 255.0), 1.0, atol=1e-6)


def test_ssim_orders_by_degradation_and_is_jittable():
  a, _ = _images((1, 2, 16, 16, 3), seed=2)
  rng = np.random.RandomState(3)
  mild = np.clip(a + rng.normal(0, 0.02, a.shape), 0, 1)
  strong = np.clip(a + rng.normal(0, 0.3, a.shape), 0, 1)
  jitted = jax.jit(lambda x, y: metrics.ssim(x, y, 1.0))
  s_mild, s_strong = float(jitted(a, mild).mean()), float(jitted(a, strong).mean())
  assert s_mild > s_strong
  assert jitted(a, mild).shape == (1, 2)
  p = jax.jit(lambda x, y: metrics.psnr(x, y, 1.0))(jnp.asarray(a), jnp.asarray(mild))
  assert p.shape == (1, 2) and float(p.min()) > 30.0


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="same shape"):
    metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
  with pytest.raises(ValueError, match="filter_size"):
    metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match=r"\[\.\.\., H, W, C\]"):
    metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
  small = metrics.ssim(np.ones((8, 8, 1)), np.ones((8, 8, 1)), filter_size=7)
  assert float(small) == pytest.approx(1.0)
