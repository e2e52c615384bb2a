"""DDPM (Ho et al. 2020) for the DiT-paper configurations, kept apart from the network.

Discrete timesteps k = 0..T-1 with betas from a "linear" (DDPM/ADM, scaled by 1000/T)
or "cosine" (Nichol & Dhariwal 2021) schedule; alpha_bar_k = prod_{i<=k} (1 - beta_i) and

    x_k = alpha_k x0 + sigma_k noise,   alpha_k = sqrt(alpha_bar_k), sigma_k = sqrt(1 - alpha_bar_k).

The network is called as `model_fn(x_k, k (float [B]), cond)` and predicts either the noise
("epsilon") or v = alpha_k noise - sigma_k x0 ("v", Salimans & Ho 2022); the loss is an MSE
on that target.

learn_sigma (DiT paper): a model whose output has twice the input's channels (last axis)
predicts [target, variance]; only the first half enters the MSE and the samplers (DDIM,
DPM-Solver++ are deterministic and ignore the variance). The paper's extra variational
bound term that trains the variance half is not implemented: that half gets no gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def linear_betas(num_timesteps: int) -> np.ndarray:
  """DDPM's linear betas 1e-4 -> 0.02, scaled by 1000 / T so any T gives the same path (ADM/DiT)."""
  scale = 1000.0 / num_timesteps
  return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Betas with alpha_bar(k) = f(k / T) / f(0), f(u) = cos((u + s) / (1 + s) * pi / 2)^2 (Nichol & Dhariwal)."""
  f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  return np.array([min(1 - f((k + 1) / num_timesteps) / f(k / num_timesteps), max_beta)
                   for k in range(num_timesteps)], np.float64)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}
PREDICTIONS = ("epsilon", "v")


# ---------------------------------------------------------------- conversions (alpha^2 + sigma^2 = 1)
def velocity_target(x0, noise, alpha, sigma):
  """v = alpha * noise - sigma * x0."""
  return alpha * noise - sigma * x0


def x0_from_epsilon(x_t, eps, alpha, sigma):
  return (x_t - sigma * eps) / alpha


def x0_from_velocity(x_t, v, alpha, sigma):
  return alpha * x_t - sigma * v


def epsilon_from_velocity(x_t, v, alpha, sigma):
  return sigma * x_t + alpha * v


def split_learned_sigma(pred: jax.Array, x: jax.Array) -> jax.Array:
  """The prediction half of a learn_sigma output ([..., 2C] -> [..., C]); other outputs must match x."""
  if pred.shape == x.shape:
    return pred.astype(jnp.float32)
  if pred.shape[:-1] == x.shape[:-1] and pred.shape[-1] == 2 * x.shape[-1]:
    return pred[..., :x.shape[-1]].astype(jnp.float32)
  raise ValueError(f"model output {pred.shape} must match the input {x.shape} "
                   f"(or have twice its channels on the last axis with learn_sigma)")


def _per_example(x: jax.Array, a: jax.Array) -> jax.Array:
  return a.reshape(a.shape + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class DDPM:
  """Discrete-time Gaussian diffusion: training loss and sampling timesteps."""

  num_timesteps: int = 1000
  schedule: str = "linear"
  prediction: str = "epsilon"
  loss_weighting: str = "none"
  min_snr_gamma: float = 5.0

  kind = "ddpm"

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"diffusion.ddpm_schedule={self.schedule!r} is not one of {sorted(SCHEDULES)}")
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"diffusion.ddpm_prediction={self.prediction!r} is not one of {PREDICTIONS}")
    if self.loss_weighting not in ("none", "min_snr"):
      raise ValueError(f"diffusion.loss_weighting={self.loss_weighting!r} is not one of ['min_snr', 'none']")
    if self.num_timesteps < 2:
      raise ValueError(f"diffusion.num_timesteps={self.num_timesteps} must be >= 2")

  @classmethod
  def from_config(cls, diffusion_cfg) -> "DDPM":
    return cls(num_timesteps=diffusion_cfg.num_timesteps, schedule=diffusion_cfg.ddpm_schedule,
               prediction=diffusion_cfg.ddpm_prediction, loss_weighting=diffusion_cfg.loss_weighting,
               min_snr_gamma=diffusion_cfg.get("min_snr_gamma", 5.0))

  # ------------------------------------------------------------------ schedule
  @functools.cached_property
  def betas(self) -> np.ndarray:
    return SCHEDULES[self.schedule](self.num_timesteps)

  @functools.cached_property
  def alphas_cumprod(self) -> np.ndarray:
    """alpha_bar_k [T], float64, decreasing from ~1 to ~0."""
    return np.cumprod(1.0 - self.betas)

  def _alpha_sigma(self, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    abar = jnp.asarray(self.alphas_cumprod, jnp.float32)[k]
    return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

  def sample_t(self, rng: jax.Array, batch_size: int, num_tokens: int | None = None) -> jax.Array:
    """Training timesteps k [B], int32 uniform in [0, T)."""
    del num_tokens
    return jax.random.randint(rng, (batch_size,), 0, self.num_timesteps)

  # ------------------------------------------------------------------ path
  def add_noise(self, x0: jax.Array, noise: jax.Array, k: jax.Array) -> jax.Array:
    alpha, sigma = self._alpha_sigma(k)
    return _per_example(x0, alpha) * x0 + _per_example(x0, sigma) * noise

  def target(self, x0: jax.Array, noise: jax.Array, k: jax.Array) -> jax.Array:
    if self.prediction == "epsilon":
      return noise
    alpha, sigma = self._alpha_sigma(k)
    return velocity_target(x0, noise, _per_example(x0, alpha), _per_example(x0, sigma))

  def loss_weight(self, k: jax.Array) -> jax.Array:
    """Min-SNR-gamma: min(SNR, g) / SNR for epsilon, min(SNR, g) / (SNR + 1) for v; else 1."""
    if self.loss_weighting == "none":
      return jnp.ones(k.shape, jnp.float32)
    abar = jnp.asarray(self.alphas_cumprod, jnp.float32)[k]
    snr = abar / (1.0 - abar)
    return jnp.minimum(snr, self.min_snr_gamma) / (snr if self.prediction == "epsilon" else snr + 1.0)

  def loss(self, model_fn: ModelFn, x0: jax.Array, cond: Any, rng: jax.Array, num_tokens: int | None = None,
           *, t: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MSE on the epsilon or v target; same interface as `FlowMatching.loss` (t = timesteps k [B])."""
    del num_tokens
    x0 = x0.astype(jnp.float32)
    rng_t, rng_noise = jax.random.split(rng)
    k = self.sample_t(rng_t, x0.shape[0]) if t is None else jnp.asarray(t, jnp.int32)
    noise = jax.random.normal(rng_noise, x0.shape, jnp.float32)
    x_t = self.add_noise(x0, noise, k)
    pred = split_learned_sigma(model_fn(x_t, k.astype(jnp.float32), cond), x0)
    mse = jnp.mean(jnp.square(pred - self.target(x0, noise, k)), axis=tuple(range(1, x0.ndim)))
    weight = self.loss_weight(k)
    return jnp.mean(weight * mse), {"t": k, "mse": mse, "weight": weight}

  def loss_at(self, model_fn: ModelFn, x0: jax.Array, cond: Any, rng: jax.Array, t: float) -> jax.Array:
    """Unweighted MSE with every example at timestep round(t * (T - 1)), t in [0, 1]."""
    k = jnp.full((x0.shape[0],), round(t * (self.num_timesteps - 1)), jnp.int32)
    _, aux = self.loss(model_fn, x0, cond, rng, t=k)
    return jnp.mean(aux["mse"])

  # ------------------------------------------------------------------ sampling
  def sampling_points(self, num_steps: int, num_tokens: int | None = None) -> dict[str, np.ndarray]:
    """num_steps "trailing" timesteps T-1, T-1-T/n, ... (Lin et al. 2024), then the clean point (alpha 1, sigma 0).

    Trailing spacing starts at the last timestep (the noisiest) and stops at T/n - 1 rather
    than 0, so the final step into the data is not a huge, badly conditioned jump in
    log-SNR (which would spoil multistep solvers).

    Returns float64 arrays [num_steps + 1]: 't' (timestep; -1 for the clean end), 't_model',
    'alpha', 'sigma'. The model is evaluated at the first num_steps points.
    """
    del num_tokens
    if not 1 <= num_steps <= self.num_timesteps:
      raise ValueError(f"num_steps={num_steps} must be in [1, num_timesteps={self.num_timesteps}]")
    k = np.round(self.num_timesteps - np.arange(num_steps) * self.num_timesteps / num_steps).astype(np.int64) - 1
    abar = np.append(self.alphas_cumprod[k], 1.0)
    t = np.append(k, -1).astype(np.float64)
    return {"t": t, "t_model": np.maximum(t, 0.0), "alpha": np.sqrt(abar), "sigma": np.sqrt(1.0 - abar)}

  def predict_x0(self, pred: jax.Array, x_t: jax.Array, alpha, sigma) -> jax.Array:
    """Data prediction from the model output at a point with coefficients (alpha, sigma)."""
    pred = split_learned_sigma(pred, x_t)
    if self.prediction == "epsilon":
      return x0_from_epsilon(x_t, pred, alpha, sigma)
    return x0_from_velocity(x_t, pred, alpha, sigma)
