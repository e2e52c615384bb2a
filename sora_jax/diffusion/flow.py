"""Rectified flow (flow matching): the default diffusion process, kept apart from the network.

Path and target (data at t = 0, noise at t = 1):

    x_t = (1 - t) * x0 + t * noise          v = d x_t / dt = noise - x0

The network is trained with an MSE on v, called as `model_fn(x_t, 1000 * t, cond)`. It
predicts v itself (`prediction="velocity"`, the default), or the clean data x0
(`prediction="x0"`, as JiT, Li & He 2025) from which v = (x_t - x0) / t is derived, with t
floored at `x0_min_t` in the division. Near t = 1 a velocity network must reproduce its
input noise and subtract the conditional mean E[x0 | text], while an x0 network only
regresses that mean: on the small CPU models the layout of a clip (where the object is in
each frame, hence its motion) is decided there.
As a Gaussian path x_t = alpha_t x0 + sigma_t noise it has alpha_t = 1 - t, sigma_t = t,
which is how the samplers (`samplers.py`) treat flow and DDPM alike.

Timestep sampling: "uniform" t ~ U[0, 1), or "logit_normal" t = sigmoid(m + s n),
n ~ N(0, 1) (SD3; median sigmoid(m)). Then the timestep shift (SD3 / Flux / Wan)

    t' = shift * t / (1 + (shift - 1) * t)

moves t towards noise for shift > 1 (more tokens carry more redundant signal, so they
need more noise to destroy it); shift = 1 is the identity. With `config.diffusion.shift = 0`
the shift is automatic from the token count N, linear between two anchors and clipped:

    shift(N) = clip(1 + (max_shift - 1) * (N - base_shift_tokens) / (max_shift_tokens - base_shift_tokens),
                    1, max_shift)

(Flux interpolates log-shift instead; linear-in-shift is what our config documents). The
sampler's timesteps use the same shift, so training and sampling agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
T_MODEL_SCALE = 1000.0  # the network sees t on the 0..1000 scale, like DDPM timesteps
PREDICTIONS = ("velocity", "x0")


def shift_timesteps(t, shift: float):
  """t' = shift * t / (1 + (shift - 1) * t): monotone on [0, 1], fixes 0 and 1; identity at shift = 1."""
  if shift <= 0:
    raise ValueError(f"timestep shift must be > 0, got {shift}")
  return shift * t / (1.0 + (shift - 1.0) * t)


def auto_shift(num_tokens: int, *, base_tokens: int, max_tokens: int, max_shift: float) -> float:
  """Shift linear in the token count: 1 at `base_tokens`, `max_shift` at `max_tokens`, clipped to [1, max_shift]."""
  if max_tokens <= base_tokens:
    raise ValueError(f"max_shift_tokens={max_tokens} must be > base_shift_tokens={base_tokens}")
  frac = (num_tokens - base_tokens) / (max_tokens - base_tokens)
  return float(np.clip(1.0 + (max_shift - 1.0) * frac, 1.0, max(1.0, max_shift)))


def _per_example(x: jax.Array, t: jax.Array) -> jax.Array:
  """t [B] -> [B, 1, ..., 1] broadcastable against x [B, ...]."""
  return t.reshape(t.shape + (1,) * (x.ndim - 1))


def _check_prediction(pred: jax.Array, x: jax.Array) -> jax.Array:
  if pred.shape != x.shape:
    raise ValueError(
      f"model output {pred.shape} must have the input's shape {x.shape} for flow matching "
      "(learn_sigma doubles the channels and only applies to kind='ddpm')"
    )
  return pred.astype(jnp.float32)


def _weight_none(t: jax.Array, gamma: float) -> jax.Array:
  del gamma
  return jnp.ones_like(t)


def _weight_min_snr(t: jax.Array, gamma: float) -> jax.Array:
  """Min-SNR-gamma (Hang et al. 2023) carried over to the velocity loss.

  Min-SNR weights the x0-error by min(SNR, gamma); for flow, x0_err = t * v_err, so the
  weight on the velocity MSE is min(SNR, gamma) * t^2 with SNR = ((1 - t) / t)^2,
  i.e. min((1 - t)^2, gamma * t^2).
  """
  return jnp.minimum((1.0 - t) ** 2, gamma * t**2)


LOSS_WEIGHTINGS = {"none": _weight_none, "min_snr": _weight_min_snr}
T_SAMPLINGS = ("uniform", "logit_normal")


@dataclasses.dataclass(frozen=True)
class FlowMatching:
  """Rectified-flow training loss and sampling timesteps (see the module docstring)."""

  t_sampling: str = "logit_normal"
  logit_mean: float = 0.0
  logit_std: float = 1.0
  shift: float = 0.0  # 0 = automatic from the token count
  base_shift_tokens: int = 256
  max_shift_tokens: int = 4096
  max_shift: float = 3.0
  loss_weighting: str = "none"
  min_snr_gamma: float = 5.0
  prediction: str = "velocity"
  x0_min_t: float = 0.05

  kind = "flow"

  def __post_init__(self):
    if self.t_sampling not in T_SAMPLINGS:
      raise ValueError(f"diffusion.t_sampling={self.t_sampling!r} is not one of {T_SAMPLINGS}")
    if self.loss_weighting not in LOSS_WEIGHTINGS:
      raise ValueError(f"diffusion.loss_weighting={self.loss_weighting!r} is not one of {sorted(LOSS_WEIGHTINGS)}")
    if self.shift < 0:
      raise ValueError(f"diffusion.shift={self.shift} must be >= 0 (0 = automatic from the token count)")
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"diffusion.flow_prediction={self.prediction!r} is not one of {PREDICTIONS}")
    if not 0.0 < self.x0_min_t <= 1.0:
      raise ValueError(f"diffusion.flow_x0_min_t={self.x0_min_t} must be in (0, 1]")

  @classmethod
  def from_config(cls, diffusion_cfg) -> FlowMatching:
    """From `config.diffusion` (its flow fields; the DDPM-only ones are ignored)."""
    renamed = {"flow_prediction": "prediction", "flow_x0_min_t": "x0_min_t"}
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {renamed.get(k, k): v for k, v in diffusion_cfg.items()}
    return cls(**{k: v for k, v in values.items() if k in fields})

  # ------------------------------------------------------------------ timesteps
  def shift_for(self, num_tokens: int | None) -> float:
    """The timestep shift used in training and sampling for `num_tokens` tokens per example."""
    if self.shift > 0:
      return float(self.shift)
    if num_tokens is None:
      raise ValueError(
        "diffusion.shift=0 means 'automatic from the token count': pass num_tokens= "
        "(tokens per example, e.g. dit.num_tokens(x.shape)) or set diffusion.shift > 0"
      )
    return auto_shift(
      num_tokens, base_tokens=self.base_shift_tokens, max_tokens=self.max_shift_tokens, max_shift=self.max_shift
    )

  def sample_t(self, rng: jax.Array, batch_size: int, num_tokens: int | None = None) -> jax.Array:
    """Training times t [B] in [0, 1] (uniform or logit-normal, then shifted)."""
    if self.t_sampling == "uniform":
      t = jax.random.uniform(rng, (batch_size,), jnp.float32)
    else:
      t = jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(rng, (batch_size,), jnp.float32))
    return shift_timesteps(t, self.shift_for(num_tokens))

  def model_time(self, t: jax.Array) -> jax.Array:
    """t in [0, 1] -> the network's time input on the 0..1000 scale."""
    return T_MODEL_SCALE * t

  # ------------------------------------------------------------------ path
  def add_noise(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = (1 - t) x0 + t noise; x0, noise [B, ...], t [B]."""
    t = _per_example(x0, t)
    return (1.0 - t) * x0 + t * noise

  def target(self, x0: jax.Array, noise: jax.Array, t: jax.Array | None = None) -> jax.Array:
    """Velocity v = noise - x0 (independent of t)."""
    del t
    return noise - x0

  def loss_weight(self, t: jax.Array) -> jax.Array:
    return LOSS_WEIGHTINGS[self.loss_weighting](t, self.min_snr_gamma)

  def loss(
    self,
    model_fn: ModelFn,
    x0: jax.Array,
    cond: Any,
    rng: jax.Array,
    num_tokens: int | None = None,
    *,
    t: jax.Array | None = None,
    strength: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted velocity MSE.

    Args:
      model_fn: `model_fn(x_t, t_model [B], cond) -> v_pred` shaped like x_t.
      x0: clean data [B, ...] (e.g. normalised latents [B, T, H, W, C]).
      cond: conditioning pytree passed through to `model_fn`.
      rng: PRNG key for t and the noise.
      num_tokens: tokens per example (for the automatic shift).
      t: optional fixed times [B] (skips sampling and shift).
      strength: optional conditioning [B, T'] per latent frame of x0 [B, T', ...] (0 = generated,
        1 = given clean; `diffusion/conditioning.py`): frame f is noised to min(t, 1 - strength_f),
        the network sees that per-frame time, and the MSE counts only the generated frames.
    Returns:
      (loss f32 scalar: mean over the batch of weight(t) * per-example MSE,
       aux {'t' [B], 'mse' [B] unweighted per-example MSE, 'weight' [B]}).
    """
    x0 = x0.astype(jnp.float32)
    rng_t, rng_noise = jax.random.split(rng)
    if t is None:
      t = self.sample_t(rng_t, x0.shape[0], num_tokens)
    noise = jax.random.normal(rng_noise, x0.shape, jnp.float32)
    if strength is None:
      x_t = self.add_noise(x0, noise, t)
      pred = self.velocity(model_fn(x_t, self.model_time(t), cond), x_t, self.model_time(t))
      mse = jnp.mean(jnp.square(pred - self.target(x0, noise)), axis=tuple(range(1, x0.ndim)))
    else:
      t_frames = jnp.minimum(t[:, None], 1.0 - jnp.asarray(strength, jnp.float32))  # [B, T']
      level = t_frames.reshape(t_frames.shape + (1,) * (x0.ndim - 2))
      x_t = (1.0 - level) * x0 + level * noise
      pred = self.velocity(model_fn(x_t, self.model_time(t_frames), cond), x_t, self.model_time(t))
      mask = (jnp.asarray(strength) <= 0.0).astype(jnp.float32)  # the generated frames
      per_frame = jnp.mean(jnp.square(pred - self.target(x0, noise)), axis=tuple(range(2, x0.ndim)))
      mse = jnp.sum(per_frame * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    weight = self.loss_weight(t)
    return jnp.mean(weight * mse), {"t": t, "mse": mse, "weight": weight}

  def loss_at(self, model_fn: ModelFn, x0: jax.Array, cond: Any, rng: jax.Array, t: float) -> jax.Array:
    """Unweighted velocity MSE with every example at time `t` (0..1): eval loss comparable across runs."""
    _, aux = self.loss(model_fn, x0, cond, rng, t=jnp.full((x0.shape[0],), t, jnp.float32))
    return jnp.mean(aux["mse"])

  # ------------------------------------------------------------------ sampling
  def sampling_points(self, num_steps: int, num_tokens: int | None = None) -> dict[str, np.ndarray]:
    """The num_steps + 1 points of a sampling trajectory, from noise (t = 1) to data (t = 0).

    Returns float64 numpy arrays [num_steps + 1]: 't' (shifted, decreasing), 't_model',
    'alpha' = 1 - t and 'sigma' = t (x_t = alpha x0 + sigma noise).
    """
    t = shift_timesteps(np.linspace(1.0, 0.0, num_steps + 1), self.shift_for(num_tokens))
    return {"t": t, "t_model": T_MODEL_SCALE * t, "alpha": 1.0 - t, "sigma": t}

  def predict_x0(self, pred: jax.Array, x_t: jax.Array, alpha, sigma) -> jax.Array:
    """Data prediction: the network's output (x0 prediction), or x0 = x_t - sigma * v (alpha + sigma = 1)."""
    del alpha
    if self.prediction == "x0":
      return _check_prediction(pred, x_t)
    return x_t - sigma * _check_prediction(pred, x_t)

  def velocity(self, pred: jax.Array, x_t: jax.Array, t_model: jax.Array) -> jax.Array:
    """dx/dt of the sampling ODE at x_t, time t_model [B] (0..1000): the network's velocity
    prediction, or (x_t - x0_pred) / max(t, x0_min_t) for an x0 prediction."""
    pred = _check_prediction(pred, x_t)
    if self.prediction == "velocity":
      return pred
    t = jnp.maximum(_per_example(x_t, jnp.asarray(t_model, jnp.float32) / T_MODEL_SCALE), self.x0_min_t)
    return (x_t - pred) / t
