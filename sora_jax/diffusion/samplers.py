"""Samplers: noise [B, ...] -> data [B, ...], each ONE jit-compiled `jax.lax.scan` over steps.

    x0 = sample(model_fn, noise, process=flow, sampler="heun", num_steps=30, num_tokens=n)

`model_fn(x_t [B, ...], t_model [B]) -> prediction` is the network with its conditioning
bound (see `guidance.cfg_model_fn`); `process` is a `FlowMatching` or `DDPM`, which supplies
the trajectory's points (t, t_model, alpha, sigma with x_t = alpha x0 + sigma noise) and
turns a prediction into a data prediction x0. Samplers:

* "euler", "heun" (flow only): the ODE dx/dt = v over the shifted times t_0 = 1 > ... > t_N = 0.
  Heun is second order (two model calls per step, including at t = 0, where flow is regular).
* "ddim" (eta = 0): x_next = alpha_next x0_hat + sigma_next eps_hat; for flow this equals Euler.
* "dpmpp_2m": DPM-Solver++(2M) (Lu et al. 2022), multistep second order in the data-prediction
  form with lambda = log(alpha / sigma); first order on the first step, on the last step to
  sigma = 0, and wherever the previous step reaches lambda = -inf (flow's t = 1).
* "ddpm" (DDPM only): ADM's stochastic ancestral sampler, x_next ~ p(x_next | x) =
  N(posterior mean given x0_hat, var) with the model's learned variance (learn_sigma: output
  [prediction, v], see `ddpm.py`) or, for a C-channel model, the fixed posterior variance
  beta_tilde. With fewer steps than timesteps the chain is respaced as ADM's SpacedDiffusion:
  the betas are recomputed from the alpha_bar of the kept timesteps (the same trailing points
  as the other samplers, so the last step lands on the clean point and adds no noise), and the
  learned v interpolates between the respaced log(beta) and log(beta_tilde).

Both DDIM and DPM-Solver++(2M) are written as x_next = c_x x + c_x0 x0_hat + c_prev x0_prev, with
the coefficients precomputed in float64 numpy (no infinities reach the device). The step
functions are plain Python functions of (state, per-step inputs): `sample` scans them, and the
same functions can run in a Python loop (`sampling_step` + `step_inputs`), with identical
results. Deterministic given the noise: the ancestral sampler's per-step noise comes from
per-example PRNG keys derived from each example's starting noise (and an optional `rng`), so
a sample does not depend on the rest of its batch (`ancestral_keys`).

For repeated sampling wrap `sample` in your own `jax.jit` taking params / conditioning as
arguments (closures over large arrays are recompiled per new closure):

    @jax.jit
    def generate(params, cond, uncond, noise):
      fn = guidance.cfg_model_fn(lambda x, t, c: dit.apply(params, x, t, c), cond, uncond, 4.0)
      return sample(fn, noise, process=flow, sampler="euler", num_steps=30, num_tokens=n)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion import ddpm
from sora_jax.diffusion.sampler_names import SAMPLERS

GuidedFn = Callable[[jax.Array, jax.Array], jax.Array]


class SamplerState(NamedTuple):
  """x: the current sample [B, ...] (float32); prev_x0: the previous step's data prediction (multistep);
  key: per-example PRNG keys [B] of the stochastic samplers (None for the deterministic ones)."""

  x: jax.Array
  prev_x0: jax.Array
  key: Any = None


def _time(x: jax.Array, t_model: jax.Array) -> jax.Array:
  return jnp.full((x.shape[0],), t_model, jnp.float32)


def _euler_step(model_fn: GuidedFn, process, state: SamplerState, inp: dict) -> SamplerState:
  t_model = _time(state.x, inp["t_model"])
  v = process.velocity(model_fn(state.x, t_model), state.x, t_model)
  return state._replace(x=state.x + inp["dt"] * v)


def _heun_step(model_fn: GuidedFn, process, state: SamplerState, inp: dict) -> SamplerState:
  t_model, t_next = _time(state.x, inp["t_model"]), _time(state.x, inp["t_model_next"])
  v = process.velocity(model_fn(state.x, t_model), state.x, t_model)
  x_euler = state.x + inp["dt"] * v
  v_next = process.velocity(model_fn(x_euler, t_next), x_euler, t_next)
  x_heun = state.x + inp["dt"] * 0.5 * (v + v_next)
  if process.prediction == "x0":  # v = (x - x0) / t is undefined at t = 0: the last step stays Euler (as EDM)
    x_heun = jnp.where(inp["t_model_next"] > 0, x_heun, x_euler)
  return state._replace(x=x_heun)


def _multistep_step(model_fn: GuidedFn, process, state: SamplerState, inp: dict) -> SamplerState:
  """DDIM / DPM-Solver++(2M): x_next = c_x x + c_x0 x0_hat + c_prev x0_prev."""
  pred = model_fn(state.x, _time(state.x, inp["t_model"]))
  x0 = process.predict_x0(pred, state.x, inp["alpha"], inp["sigma"])
  x_next = inp["c_x"] * state.x + inp["c_x0"] * x0 + inp["c_prev"] * state.prev_x0
  return state._replace(x=x_next, prev_x0=x0)


def _ancestral_step(model_fn: GuidedFn, process, state: SamplerState, inp: dict) -> SamplerState:
  """DDPM: x_next = c_x x + c_x0 x0_hat + noise_scale * exp(log_var / 2) z, z ~ N(0, I) from the step's keys."""
  if state.key is None:
    raise ValueError(
      "the 'ddpm' sampler draws noise at every step: start from initial_state(noise, ancestral_keys(noise, rng))"
    )
  pred = model_fn(state.x, _time(state.x, inp["t_model"]))
  x0 = process.predict_x0(pred, state.x, inp["alpha"], inp["sigma"])
  var_out = ddpm.split_variance(pred, state.x)
  if var_out is None:  # C-channel model: the fixed posterior variance beta_tilde
    log_var = inp["log_var_min"]
  else:
    log_var = ddpm.learned_range_log_variance(var_out, inp["log_var_min"], inp["log_var_max"])
  shape = state.x.shape[1:]
  z = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, inp["step"]), shape, jnp.float32))(state.key)
  noise = jnp.where(inp["noise_scale"] > 0, inp["noise_scale"] * jnp.exp(0.5 * log_var) * z, 0.0)
  x_next = inp["c_x"] * state.x + inp["c_x0"] * x0 + noise
  return state._replace(x=x_next, prev_x0=x0)


# The step function of every sampler of `sampler_names.SAMPLERS` (the list of names and what each needs).
STEPS = {
  "euler": _euler_step,
  "heun": _heun_step,
  "ddim": _multistep_step,
  "dpmpp_2m": _multistep_step,
  "ddpm": _ancestral_step,
}

FLOW_ONLY = tuple(name for name, info in SAMPLERS.items() if info.processes == ("flow",))
DDPM_ONLY = tuple(name for name, info in SAMPLERS.items() if info.processes == ("ddpm",))
STOCHASTIC = tuple(name for name, info in SAMPLERS.items() if info.stochastic)
ORDERS = {"ddim": 1, "dpmpp_2m": 2}


def _check(process, sampler: str, num_steps: int) -> None:
  if sampler not in STEPS:
    raise ValueError(f"sampler={sampler!r} is not one of {sorted(STEPS)}")
  if sampler in FLOW_ONLY and process.kind != "flow":
    raise ValueError(
      f"sampler={sampler!r} integrates the flow ODE and needs diffusion.kind='flow'; "
      f"with kind={process.kind!r} use 'ddim', 'dpmpp_2m' or 'ddpm'"
    )
  if sampler in DDPM_ONLY and process.kind != "ddpm":
    raise ValueError(
      f"sampler={sampler!r} is DDPM's ancestral sampler and needs diffusion.kind='ddpm'; "
      f"with kind={process.kind!r} use 'euler', 'heun', 'ddim' or 'dpmpp_2m'"
    )
  if int(num_steps) < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1")


def multistep_coefficients(alpha: np.ndarray, sigma: np.ndarray, order: int) -> dict[str, np.ndarray]:
  """(c_x, c_x0, c_prev) [N] of DDIM (order 1) or DPM-Solver++(2M) (order 2) from points [N + 1].

  First order: x' = (sigma'/sigma) x + (alpha' - sigma' alpha / sigma) x0_hat   (= -alpha'(e^-h - 1)).
  Second order replaces x0_hat by (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev, r = h_prev / h,
  h = lambda' - lambda, lambda = log(alpha / sigma).
  """
  if np.any(sigma[:-1] <= 0):
    raise ValueError("every point but the last must have sigma > 0")
  c_x = sigma[1:] / sigma[:-1]
  c_x0 = alpha[1:] - sigma[1:] * alpha[:-1] / sigma[:-1]
  c_prev = np.zeros_like(c_x)
  if order == 2:
    with np.errstate(divide="ignore"):
      lam = np.log(alpha) - np.log(sigma)
    h = lam[1:] - lam[:-1]
    for i in range(1, len(h)):
      if np.isfinite(h[i]) and np.isfinite(h[i - 1]) and h[i] > 0 and h[i - 1] > 0:
        w = h[i] / (2.0 * h[i - 1])  # 1 / (2 r)
        c_prev[i] = -w * c_x0[i]
        c_x0[i] = (1.0 + w) * c_x0[i]
  return {"c_x": c_x, "c_x0": c_x0, "c_prev": c_prev}


def ancestral_coefficients(alpha: np.ndarray, sigma: np.ndarray) -> dict[str, np.ndarray]:
  """DDPM ancestral steps [N] between variance-preserving points [N + 1] that end at the clean point.

  The points' timesteps are the kept timesteps of ADM's respaced chain: its betas come from
  their alpha_bar = alpha^2 (`ddpm.posterior_coefficients`, in increasing time, then reversed
  to sampling order). Returns c_x, c_x0 (posterior mean = c_x x + c_x0 x0_hat), c_prev (0),
  log_var_min (clipped log beta_tilde), log_var_max (log beta) and noise_scale (0 on the last
  step, into the clean point; 1 elsewhere).
  """
  if sigma[-1] != 0 or np.any(sigma[:-1] <= 0) or not np.allclose(alpha**2 + sigma**2, 1.0):
    raise ValueError("ancestral sampling needs variance-preserving points (alpha^2 + sigma^2 = 1) ending at sigma = 0")
  chain = ddpm.posterior_coefficients((alpha[:-1] ** 2)[::-1])
  rev = {k: v[::-1] for k, v in chain.items()}
  return {
    "c_x": rev["coef_xt"],
    "c_x0": rev["coef_x0"],
    "c_prev": np.zeros_like(rev["coef_xt"]),
    "log_var_min": rev["log_var_clipped"],
    "log_var_max": rev["log_beta"],
    "noise_scale": (sigma[1:] > 0).astype(np.float64),
  }


def step_inputs(process, sampler: str, num_steps: int, num_tokens: int | None = None) -> dict[str, np.ndarray]:
  """Per-step scalars (numpy [num_steps]; float32, 'step' int32) the step function reads: what `sample` scans over."""
  _check(process, sampler, num_steps)
  p = process.sampling_points(int(num_steps), num_tokens)
  inputs = {
    "t_model": p["t_model"][:-1],
    "t_model_next": p["t_model"][1:],
    "dt": p["t"][1:] - p["t"][:-1],
    "alpha": p["alpha"][:-1],
    "sigma": p["sigma"][:-1],
  }
  if sampler == "ddpm":
    inputs.update(ancestral_coefficients(p["alpha"], p["sigma"]))
  else:
    inputs.update(multistep_coefficients(p["alpha"], p["sigma"], ORDERS.get(sampler, 1)))
  inputs = {k: np.asarray(v, np.float32) for k, v in inputs.items()}
  inputs["step"] = np.arange(int(num_steps), dtype=np.int32)
  return inputs


def ancestral_keys(noise: jax.Array, rng: jax.Array | None = None) -> jax.Array:
  """Per-example PRNG keys [B] for the stochastic samplers: `rng` (default key 0) folded with a
  64-bit hash of each example's own starting noise, so a sample depends only on its noise and rng.
  """
  base = jax.random.key(0) if rng is None else rng
  noise = jnp.asarray(noise, jnp.float32)
  bits = jax.lax.bitcast_convert_type(noise.reshape(noise.shape[0], -1), jnp.uint32)
  i = jnp.arange(bits.shape[1], dtype=jnp.uint32)
  h1 = jnp.sum(bits * (2 * i + 1), axis=1, dtype=jnp.uint32)  # sums wrap modulo 2^32
  h2 = jnp.sum((bits ^ (i * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B), axis=1, dtype=jnp.uint32)
  return jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(base, a), b))(h1, h2)


def sampling_step(model_fn: GuidedFn, process, sampler: str) -> Callable[[SamplerState, dict], SamplerState]:
  """The pure step `step(state, inputs_i) -> state` of `sampler` (inputs_i: `step_inputs(...)` at step i)."""
  _check(process, sampler, 1)
  return functools.partial(STEPS[sampler], model_fn, process)


def initial_state(noise: jax.Array, keys: jax.Array | None = None) -> SamplerState:
  """The state at the first point; `keys` (`ancestral_keys`) for the stochastic samplers."""
  x = jnp.asarray(noise, jnp.float32)
  return SamplerState(x, jnp.zeros_like(x), keys)


@functools.partial(jax.jit, static_argnames=("model_fn", "process", "sampler", "keep_all"))
def _scan(
  model_fn: GuidedFn, noise: jax.Array, inputs: dict, rng: jax.Array | None, *, process, sampler: str, keep_all: bool
):
  step = sampling_step(model_fn, process, sampler)
  keys = ancestral_keys(noise, rng) if sampler in STOCHASTIC else None

  def body(state, inp):
    state = step(state, inp)
    return state, (state.x if keep_all else None)

  state, xs = jax.lax.scan(body, initial_state(noise, keys), inputs)
  return state.x, xs


def sample(
  model_fn: GuidedFn,
  noise: jax.Array,
  *,
  process,
  sampler: str = "euler",
  num_steps: int = 30,
  num_tokens: int | None = None,
  return_every: int = 0,
  rng: jax.Array | None = None,
) -> Any:
  """Integrates from `noise` [B, ...] to data with `num_steps` steps of `sampler`.

  Args:
    model_fn: `model_fn(x_t, t_model [B]) -> prediction` (velocity for flow, epsilon / v for DDPM).
    noise: standard normal [B, ...], the starting point (with `rng`, all randomness of the sampler).
    process: `FlowMatching` or `DDPM` (gives the timesteps, including flow's shift).
    sampler: "euler", "heun", "ddim", "dpmpp_2m" or "ddpm" (stochastic, DDPM only).
    num_steps: number of steps (Heun calls the model twice per step).
    num_tokens: tokens per example, for flow's automatic shift (same as in training).
    return_every: k > 0 also returns x after every k-th step, [num_steps // k, B, ...].
    rng: optional PRNG key for the stochastic samplers' per-step noise (default: key 0; either
      way each example's noise is also keyed by its own starting noise); ignored by the others.
  Returns:
    x0 float32 [B, ...], or (x0, intermediates) when return_every > 0.
  """
  if return_every < 0:
    raise ValueError(f"return_every={return_every} must be >= 0 (0 = final sample only)")
  inputs = step_inputs(process, sampler, num_steps, num_tokens)
  rng = rng if sampler in STOCHASTIC else None
  x, xs = _scan(model_fn, noise, inputs, rng, process=process, sampler=sampler, keep_all=return_every > 0)
  if return_every > 0:
    return x, xs[return_every - 1 :: return_every]
  return x
