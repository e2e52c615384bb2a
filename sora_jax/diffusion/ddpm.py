"""DDPM (Ho et al. 2020) for the DiT-paper configurations, kept apart from the network.

Discrete timesteps k = 0..T-1 with betas from a "linear" (DDPM/ADM, scaled by 1000/T)
or "cosine" (Nichol & Dhariwal 2021) schedule; alpha_bar_k = prod_{i<=k} (1 - beta_i) and

    x_k = alpha_k x0 + sigma_k noise,   alpha_k = sqrt(alpha_bar_k), sigma_k = sqrt(1 - alpha_bar_k).

The network is called as `model_fn(x_k, k (float [B]), cond)` and predicts either the noise
("epsilon") or v = alpha_k noise - sigma_k x0 ("v", Salimans & Ho 2022); the loss is an MSE
on that target.

learn_sigma (DiT paper): a model whose output has twice the input's channels (last axis)
predicts [target, variance]. The variance half v (nominally in [-1, 1]) interpolates the
log-variance of the reverse step p(x_{k-1} | x_k) between the two fixed choices of Ho et al.
("learned range", Nichol & Dhariwal 2021):

    log var_k = f log(beta_k) + (1 - f) log(beta_tilde_k),   f = (v + 1) / 2,

beta_tilde_k = beta_k (1 - alpha_bar_{k-1}) / (1 - alpha_bar_k) being the variance of the
posterior q(x_{k-1} | x_k, x0) (0 at k = 0, so its log is clipped there to beta_tilde_1).
With `learn_sigma_loss="hybrid"` (default; ADM / DiT) the loss is ADM's hybrid objective

    L = weight(k) * MSE + (T / 1000) * L_vlb(k),

L_vlb in bits per dimension: KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)) for k > 0 and the
negative discretized Gaussian log-likelihood of x0 (256 bins on [-1, 1], ADM's decoder, kept
for latents as DiT does) at k = 0. The model mean in L_vlb uses a stop-gradient copy of the
prediction half, so L_vlb trains only the variance half (the MSE trains only the prediction).
`learn_sigma_loss="mse"` trains the prediction half only (the variance half gets no gradient).
The T / 1000 factor is ADM's "rescaled MSE" convention (1 at the paper's T = 1000; DiT's own
code never rescales, which is the same at T = 1000). A model with C output channels keeps the
plain MSE. The "ddpm" sampler (`samplers.py`) is ADM's ancestral sampler with this variance;
DDIM and DPM-Solver++ are deterministic and ignore it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

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
  return np.array(
    [min(1 - f((k + 1) / num_timesteps) / f(k / num_timesteps), max_beta) for k in range(num_timesteps)], np.float64
  )


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}
PREDICTIONS = ("epsilon", "v")
LEARN_SIGMA_LOSSES = ("hybrid", "mse")


def posterior_coefficients(alphas_cumprod: np.ndarray) -> dict[str, np.ndarray]:
  """Reverse-step tables of the chain with cumulative products alpha_bar [K] (increasing k; alpha_bar_{-1} = 1).

  The chain's betas are recomputed as beta_k = 1 - alpha_bar_k / alpha_bar_{k-1}, so a subset
  of a schedule's timesteps gives ADM's respaced chain (and the full schedule its own betas).
  q(x_{k-1} | x_k, x0) = N(coef_x0 x0 + coef_xt x_k, var). Returns float64 arrays [K]:
  'beta', 'log_beta', 'var' (beta_tilde), 'log_var_clipped' (log beta_tilde with entry 0
  replaced by entry 1: beta_tilde_0 = 0; log(beta_0) for a one-step chain), 'coef_x0', 'coef_xt'.
  """
  abar = np.asarray(alphas_cumprod, np.float64)
  abar_prev = np.append(1.0, abar[:-1])
  beta = 1.0 - abar / abar_prev
  var = beta * (1.0 - abar_prev) / (1.0 - abar)
  log_var_clipped = np.log(np.append(var[1], var[1:])) if len(abar) > 1 else np.log(beta)
  return {
    "beta": beta,
    "log_beta": np.log(beta),
    "var": var,
    "log_var_clipped": log_var_clipped,
    "coef_x0": beta * np.sqrt(abar_prev) / (1.0 - abar),
    "coef_xt": (1.0 - abar_prev) * np.sqrt(1.0 - beta) / (1.0 - abar),
  }


def learned_range_log_variance(v: jax.Array, min_log: jax.Array, max_log: jax.Array) -> jax.Array:
  """log var = f max_log + (1 - f) min_log with f = (v + 1) / 2 (v = -1: min_log, v = 1: max_log)."""
  frac = (v + 1.0) / 2.0
  return frac * max_log + (1.0 - frac) * min_log


# ---------------------------------------------------------------- variational bound terms
def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats (broadcasting)."""
  return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2) - 1.0)


def _approx_cdf_logit(x: jax.Array) -> jax.Array:
  """g(x) with Phi(x) ~ sigmoid(g(x)) = 0.5 (1 + tanh(g(x) / 2)): ADM's tanh approximation of the normal CDF."""
  return 2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  """Phi(x) ~ 0.5 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))): ADM's (and DiT's) approximation.

  Evaluated as the identical sigmoid(2 sqrt(2 / pi) (...)), which keeps float32 precision in the
  lower tail (1 + tanh cancels there); g is odd, so 1 - Phi(x) = sigmoid(-g(x)) likewise.
  """
  return jax.nn.sigmoid(_approx_cdf_logit(x))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log P(bin of x) under N(mean, exp(log_scale)^2), per element, in nats (ADM's decoder likelihood).

  Data in [-1, 1] quantised to 256 levels: the bin of x is [x - 1/255, x + 1/255], with the
  outer bins open (x < -0.999: (-inf, x + 1/255]; x > 0.999: [x - 1/255, inf)); probabilities
  floored at 1e-12. Values outside [-1, 1] (latents) fall in the open outer bins, as in ADM.
  The CDF is ADM's tanh approximation; a bin above the mean is measured with upper-tail
  probabilities (1 - Phi), the same quantity without float32 cancellation.
  """
  centered = x - mean
  inv_std = jnp.exp(-log_scale)
  g_plus = _approx_cdf_logit(inv_std * (centered + 1.0 / 255.0))
  g_min = _approx_cdf_logit(inv_std * (centered - 1.0 / 255.0))
  cdf_plus = jax.nn.sigmoid(g_plus)
  one_minus_cdf_min = jax.nn.sigmoid(-g_min)
  delta = jnp.where(centered > 0, one_minus_cdf_min - jax.nn.sigmoid(-g_plus), cdf_plus - jax.nn.sigmoid(g_min))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(one_minus_cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(delta, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


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
    return pred[..., : x.shape[-1]].astype(jnp.float32)
  raise ValueError(
    f"model output {pred.shape} must match the input {x.shape} "
    f"(or have twice its channels on the last axis with learn_sigma)"
  )


def split_variance(pred: jax.Array, x: jax.Array) -> jax.Array | None:
  """The variance half of a learn_sigma output [..., 2C] as float32 [..., C]; None for a C-channel output."""
  split_learned_sigma(pred, x)  # shape check
  if pred.shape == x.shape:
    return None
  return pred[..., x.shape[-1] :].astype(jnp.float32)


def _mean_flat(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


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
  learn_sigma_loss: str = "hybrid"

  kind = "ddpm"

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"diffusion.ddpm_schedule={self.schedule!r} is not one of {sorted(SCHEDULES)}")
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"diffusion.ddpm_prediction={self.prediction!r} is not one of {PREDICTIONS}")
    if self.loss_weighting not in ("none", "min_snr"):
      raise ValueError(f"diffusion.loss_weighting={self.loss_weighting!r} is not one of ['min_snr', 'none']")
    if self.learn_sigma_loss not in LEARN_SIGMA_LOSSES:
      raise ValueError(
        f"diffusion.learn_sigma_loss={self.learn_sigma_loss!r} is not one of {list(LEARN_SIGMA_LOSSES)} "
        "('hybrid': MSE + variational bound, trains the variance of learn_sigma models; "
        "'mse': prediction half only)"
      )
    if self.num_timesteps < 2:
      raise ValueError(f"diffusion.num_timesteps={self.num_timesteps} must be >= 2")

  @classmethod
  def from_config(cls, diffusion_cfg) -> DDPM:
    return cls(
      num_timesteps=diffusion_cfg.num_timesteps,
      schedule=diffusion_cfg.ddpm_schedule,
      prediction=diffusion_cfg.ddpm_prediction,
      loss_weighting=diffusion_cfg.loss_weighting,
      min_snr_gamma=diffusion_cfg.min_snr_gamma,
      learn_sigma_loss=diffusion_cfg.learn_sigma_loss,
    )

  # ------------------------------------------------------------------ schedule
  @functools.cached_property
  def betas(self) -> np.ndarray:
    return SCHEDULES[self.schedule](self.num_timesteps)

  @functools.cached_property
  def alphas_cumprod(self) -> np.ndarray:
    """alpha_bar_k [T], float64, decreasing from ~1 to ~0."""
    return np.cumprod(1.0 - self.betas)

  @functools.cached_property
  def posterior(self) -> dict[str, np.ndarray]:
    """`posterior_coefficients` of the full chain (float64 [T]): q(x_{k-1} | x_k, x0) and the variance range."""
    return posterior_coefficients(self.alphas_cumprod)

  def _posterior_at(self, name: str, k: jax.Array) -> jax.Array:
    return jnp.asarray(self.posterior[name], jnp.float32)[k]

  def _alpha_sigma(self, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    # sqrt(1 - alpha_bar) from the float64 table: in float32, 1 - alpha_bar cancels at small k.
    return (
      jnp.asarray(np.sqrt(self.alphas_cumprod), jnp.float32)[k],
      jnp.asarray(np.sqrt(1.0 - self.alphas_cumprod), jnp.float32)[k],
    )

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
    snr = jnp.asarray(self.alphas_cumprod / (1.0 - self.alphas_cumprod), jnp.float32)[k]
    return jnp.minimum(snr, self.min_snr_gamma) / (snr if self.prediction == "epsilon" else snr + 1.0)

  def loss(
    self,
    model_fn: ModelFn,
    x0: jax.Array,
    cond: Any,
    rng: jax.Array,
    num_tokens: int | None = None,
    *,
    t: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MSE on the epsilon or v target (+ the VLB term for learn_sigma outputs with "hybrid").

    Same interface as `FlowMatching.loss` (t = timesteps k [B]). Returns (loss: batch mean of
    weight * mse (+ vlb), aux {'t', 'mse' [B] unweighted, 'weight' [B], and with the hybrid
    loss 'vlb' [B]: the bits-per-dim VLB term as added, i.e. already times T / 1000}).
    """
    del num_tokens
    x0 = x0.astype(jnp.float32)
    rng_t, rng_noise = jax.random.split(rng)
    k = self.sample_t(rng_t, x0.shape[0]) if t is None else jnp.asarray(t, jnp.int32)
    noise = jax.random.normal(rng_noise, x0.shape, jnp.float32)
    x_t = self.add_noise(x0, noise, k)
    out = model_fn(x_t, k.astype(jnp.float32), cond)
    pred, var_out = split_learned_sigma(out, x0), split_variance(out, x0)
    mse = _mean_flat(jnp.square(pred - self.target(x0, noise, k)))
    weight = self.loss_weight(k)
    per_example = weight * mse
    aux = {"t": k, "mse": mse, "weight": weight}
    if var_out is not None and self.learn_sigma_loss == "hybrid":
      vlb = self.vlb_terms(jax.lax.stop_gradient(pred), var_out, x0, x_t, k) * (self.num_timesteps / 1000.0)
      per_example = per_example + vlb
      aux["vlb"] = vlb
    return jnp.mean(per_example), aux

  def vlb_terms(self, pred: jax.Array, var_out: jax.Array, x0: jax.Array, x_t: jax.Array, k: jax.Array) -> jax.Array:
    """L_vlb [B] in bits per dimension: KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)) for k > 0,
    -log p(x0 | x_1) (discretized Gaussian) for k = 0.

    pred: prediction half [B, ..., C] (epsilon or v); var_out: variance half, same shape.
    Not rescaled by T / 1000 (`loss` does that). Gradients flow to whatever is not stopped:
    `loss` passes a stop-gradient `pred`.
    """
    alpha, sigma = self._alpha_sigma(k)
    x0_hat = self.predict_x0(pred, x_t, _per_example(x0, alpha), _per_example(x0, sigma))
    coef_x0 = _per_example(x0, self._posterior_at("coef_x0", k))
    coef_xt = _per_example(x0, self._posterior_at("coef_xt", k))
    min_log = _per_example(x0, self._posterior_at("log_var_clipped", k))
    max_log = _per_example(x0, self._posterior_at("log_beta", k))
    model_mean = coef_x0 * x0_hat + coef_xt * x_t
    model_log_var = learned_range_log_variance(var_out, min_log, max_log)
    # KL between the posterior N(coef_x0 x0 + coef_xt x_k, beta_tilde) and the model step: only the mean
    # difference coef_x0 (x0 - x0_hat) matters, so pass that (no float32 cancellation of the x_k terms).
    kl = _mean_flat(normal_kl(coef_x0 * (x0 - x0_hat), min_log, 0.0, model_log_var)) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    return jnp.where(k == 0, nll, kl)

  def loss_at(self, model_fn: ModelFn, x0: jax.Array, cond: Any, rng: jax.Array, t: float) -> jax.Array:
    """Unweighted MSE (prediction half only, no VLB) with every example at timestep round(t * (T - 1)), t in [0, 1]."""
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
