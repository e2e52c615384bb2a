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
* "unipc" (flow only): UniPC (Zhao et al. 2023) as diffusers' `UniPCMultistepScheduler` runs it for
  Wan 2.1 (flow prediction, solver order 2, B(h) = e^h - 1, data prediction, corrector on every
  step but the first, first order on the first and the last step). Its own grid of points, as
  diffusers': sigma = shift(linspace(1, 1/1000, N + 1)[:N]) (the first nudged to 1 - 1e-6) then 0,
  and the network sees the integer timesteps floor(1000 sigma) the scheduler hands out. Each
  step: x0_i from the model at x_i; the corrector replaces x_i by a combination of x_{i-1} and
  x0_{i-2..i}; the predictor steps from it to x_{i+1} with x0_{i-1..i}. One model call per step.
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

from sora_jax.diffusion import conditioning as cond_lib
from sora_jax.diffusion import ddpm
from sora_jax.diffusion.sampler_names import SAMPLERS

GuidedFn = Callable[[jax.Array, jax.Array], jax.Array]


class SamplerState(NamedTuple):
  """x: the current sample [B, ...] (float32); prev_x0: the previous step's data prediction (multistep);
  key: per-example PRNG keys [B] of the stochastic samplers (None for the deterministic ones);
  prev2_x0, last_x: the data prediction two steps back and the previous step's (corrected) sample,
  which UniPC's corrector needs (None for the other samplers)."""

  x: jax.Array
  prev_x0: jax.Array
  key: Any = None
  prev2_x0: Any = None
  last_x: Any = None


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


def _unipc_step(model_fn: GuidedFn, process, state: SamplerState, inp: dict) -> SamplerState:
  """UniPC: corrector x_c = c_last x_{i-1} + c_self x_i + c_x0 x0_i + c_prev x0_{i-1} + c_prev2 x0_{i-2};
  predictor x_{i+1} = p_x x_c + p_x0 x0_i + p_prev x0_{i-1} (coefficients from `unipc_coefficients`)."""
  pred = model_fn(state.x, _time(state.x, inp["t_model"]))
  x0 = process.predict_x0(pred, state.x, inp["alpha"], inp["sigma"])
  corrected = (
    inp["c_self"] * state.x
    + inp["c_last"] * state.last_x
    + inp["c_x0"] * x0
    + inp["c_prev"] * state.prev_x0
    + inp["c_prev2"] * state.prev2_x0
  )
  x_next = inp["p_x"] * corrected + inp["p_x0"] * x0 + inp["p_prev"] * state.prev_x0
  return state._replace(x=x_next, prev_x0=x0, prev2_x0=state.prev_x0, last_x=corrected)


# The step function of every sampler of `sampler_names.SAMPLERS` (the list of names and what each needs).
STEPS = {
  "euler": _euler_step,
  "heun": _heun_step,
  "ddim": _multistep_step,
  "dpmpp_2m": _multistep_step,
  "unipc": _unipc_step,
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
      f"with kind={process.kind!r} use 'euler', 'heun', 'unipc', 'ddim' or 'dpmpp_2m'"
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


def unipc_points(num_steps: int, shift: float, num_train_timesteps: int = 1000) -> dict[str, np.ndarray]:
  """UniPC's grid as diffusers' flow scheduler builds it: sigma [N + 1] (float32, ending at 0), alpha = 1 - sigma
  (float32), and the integer model timesteps t_model [N + 1] (floor(1000 sigma) of the float64 sigmas)."""
  sigma = np.linspace(1.0, 1.0 / num_train_timesteps, num_steps + 1)[:-1]
  sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
  if abs(sigma[0] - 1.0) < 1e-6:
    sigma[0] -= 1e-6  # keeps log(alpha) finite at the first point
  t_model = np.append(np.floor(sigma * num_train_timesteps), 0.0)
  sigma32 = np.append(sigma, 0.0).astype(np.float32)
  return {"sigma": sigma32, "alpha": (np.float32(1.0) - sigma32).astype(np.float32), "t_model": t_model}


def _unipc_b(hh: float, order: int) -> np.ndarray:
  """UniPC's right-hand side b_k = phi_k(hh) k! / B(hh) (B(h) = e^h - 1), k = 1..order."""
  h_phi_k, factorial, b = np.expm1(hh) / hh - 1.0, 1.0, []
  for k in range(1, order + 1):
    b.append(h_phi_k * factorial / np.expm1(hh))
    factorial *= k + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  return np.asarray(b)


def unipc_coefficients(sigma: np.ndarray, alpha: np.ndarray) -> dict[str, np.ndarray]:
  """Corrector and predictor coefficients [N] of UniPC-bh2 (order 2, lower-order final) between points [N + 1].

  lambda = log(alpha / sigma); from s to t, h = lambda_t - lambda_s and, in the data-prediction
  form, x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0_s - alpha_t (e^-h - 1) sum_k rho_k D_k,
  with D_1 = (x0_{s-1} - x0_s) / r, r = (lambda_{s-1} - lambda_s) / h. The predictor's rho is 1/2
  (order 2); the corrector's solves [[1, 1], [r, 1]] rho = b (order 2) or is 1/2 on D_t = x0_t - x0_s
  (order 1). Order of step i: min(2, i + 1, N - i); the corrector of step i uses step i - 1's.
  """
  sigma, alpha = np.asarray(sigma, np.float64), np.asarray(alpha, np.float64)
  n = len(sigma) - 1
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sigma)
  order = [min(2, i + 1, n - i) for i in range(n)]
  out = {k: np.zeros(n) for k in ("c_self", "c_last", "c_x0", "c_prev", "c_prev2", "p_x", "p_x0", "p_prev")}
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    for i in range(n):
      # predictor from point i to i + 1
      h = lam[i + 1] - lam[i]
      hh = -h
      b_h = np.expm1(hh)  # -1 at the last step (lambda = inf)
      out["p_x"][i] = sigma[i + 1] / sigma[i]
      out["p_x0"][i] = -alpha[i + 1] * np.expm1(hh)
      if order[i] == 2:
        r = (lam[i - 1] - lam[i]) / h
        out["p_x0"][i] += alpha[i + 1] * b_h * 0.5 / r
        out["p_prev"][i] = -alpha[i + 1] * b_h * 0.5 / r
      # corrector of point i (from i - 1), with the previous step's order
      if i == 0:
        out["c_self"][i] = 1.0
        continue
      h = lam[i] - lam[i - 1]
      hh = -h
      b_h = np.expm1(hh)
      out["c_last"][i] = sigma[i] / sigma[i - 1]
      out["c_prev"][i] = -alpha[i] * np.expm1(hh)
      if order[i - 1] == 1:
        rho_prev2, rho_t, r = 0.0, 0.5, 1.0
      else:
        r = (lam[i - 2] - lam[i - 1]) / h
        rho_prev2, rho_t = np.linalg.solve(np.array([[1.0, 1.0], [r, 1.0]]), _unipc_b(hh, 2))
      # - alpha b_h (rho_prev2 (x0_{i-2} - x0_{i-1}) / r + rho_t (x0_i - x0_{i-1}))
      out["c_x0"][i] = -alpha[i] * b_h * rho_t
      out["c_prev"][i] += alpha[i] * b_h * (rho_t + rho_prev2 / r)
      out["c_prev2"][i] = -alpha[i] * b_h * rho_prev2 / r
  return out


def _points(process, sampler: str, num_steps: int, num_tokens: int | None) -> dict[str, np.ndarray]:
  """The num_steps + 1 points of `sampler`'s full trajectory (t_model, alpha, sigma; flow also t)."""
  if sampler == "unipc":
    return unipc_points(int(num_steps), process.shift_for(num_tokens))
  return process.sampling_points(int(num_steps), num_tokens)


def check_first_step(num_steps: int, first_step: int) -> None:
  if not 0 <= int(first_step) < int(num_steps):
    raise ValueError(f"first_step={first_step} must be in [0, num_steps={num_steps}) (0 = start from pure noise)")


def start_point(
  process, sampler: str, num_steps: int, num_tokens: int | None = None, first_step: int = 0
) -> tuple[float, float]:
  """(alpha, sigma) of the point step `first_step` starts from: x = alpha x0 + sigma noise (SDEdit's start)."""
  check_first_step(num_steps, first_step)
  p = _points(process, sampler, num_steps, num_tokens)
  return float(p["alpha"][first_step]), float(p["sigma"][first_step])


def step_inputs(
  process, sampler: str, num_steps: int, num_tokens: int | None = None, first_step: int = 0
) -> dict[str, np.ndarray]:
  """Per-step scalars (numpy [num_steps - first_step]; float32, 'step' int32) the step function reads:
  what `sample` scans over. `first_step` > 0 starts part-way down the trajectory (SDEdit): the
  steps run over points first_step..num_steps of the num_steps-step grid, with the multistep
  solvers' history restarting there (first order on the first step run). 't_model_after' is the
  time of the point each step lands on (0 after the last), where conditioning frames are held."""
  _check(process, sampler, num_steps)
  check_first_step(num_steps, first_step)
  p = {k: v[int(first_step) :] for k, v in _points(process, sampler, num_steps, num_tokens).items()}
  n = int(num_steps) - int(first_step)
  if sampler == "unipc":
    inputs = {"t_model": p["t_model"][:-1], "alpha": p["alpha"][:-1], "sigma": p["sigma"][:-1]}
    inputs.update(unipc_coefficients(p["sigma"], p["alpha"]))
  else:
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
  inputs["t_model_after"] = p["t_model"][1:]
  inputs = {k: np.asarray(v, np.float32) for k, v in inputs.items()}
  inputs["step"] = np.arange(n, dtype=np.int32)
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


def sampling_step(
  model_fn: GuidedFn, process, sampler: str, conditioning: cond_lib.FrameConditioning | None = None
) -> Callable[[SamplerState, dict], SamplerState]:
  """The pure step `step(state, inputs_i) -> state` of `sampler` (inputs_i: `step_inputs(...)` at step i).

  With `conditioning`, the given frames are held (`conditioning.hold`) in the state before the
  step and at the point it lands on, every network call inside the step sees them pasted, and
  the network gets per-latent-frame times (0 at clean given frames).
  """
  _check(process, sampler, 1)
  if conditioning is None:
    return functools.partial(STEPS[sampler], model_fn, process)
  inner = functools.partial(STEPS[sampler], cond_lib.conditioned_model_fn(model_fn, conditioning), process)

  def step(state: SamplerState, inp: dict) -> SamplerState:
    state = inner(state._replace(x=cond_lib.hold(state.x, inp["t_model"], conditioning)), inp)
    return state._replace(x=cond_lib.hold(state.x, inp["t_model_after"], conditioning))

  return step


def initial_state(noise: jax.Array, keys: jax.Array | None = None, sampler: str = "") -> SamplerState:
  """The state at the first point; `keys` (`ancestral_keys`) for the stochastic samplers; `sampler`="unipc"
  also carries UniPC's extra history (zeros: its first step's coefficients on them are 0)."""
  x = jnp.asarray(noise, jnp.float32)
  if sampler == "unipc":
    return SamplerState(x, jnp.zeros_like(x), keys, jnp.zeros_like(x), jnp.zeros_like(x))
  return SamplerState(x, jnp.zeros_like(x), keys)


def _stateful_step(model_fn, process, sampler: str, conditioning=None):
  """The step of `sampler` for a stateful `model_fn(x, t, aux) -> (prediction, aux)` (the block cache): the
  aux state is threaded through however many model calls a step makes; step((state, aux), inp) -> (state, aux)."""

  def step(carry, inp):
    state, aux = carry
    box = [aux]

    def fn(x, t):
      pred, box[0] = model_fn(x, t, box[0])
      return pred

    return sampling_step(fn, process, sampler, conditioning)(state, inp), box[0]

  return step


@functools.partial(jax.jit, static_argnames=("model_fn", "process", "sampler", "keep_all"))
def _scan(
  model_fn: GuidedFn,
  noise: jax.Array,
  inputs: dict,
  rng: jax.Array | None,
  conditioning: cond_lib.FrameConditioning | None,
  start: jax.Array | None,
  model_state: Any = None,
  *,
  process,
  sampler: str,
  keep_all: bool,
):
  keys = ancestral_keys(noise, rng) if sampler in STOCHASTIC else None
  init = initial_state(noise if start is None else start, keys, sampler)
  if model_state is None:
    step = sampling_step(model_fn, process, sampler, conditioning)

    def body(state, inp):
      state = step(state, inp)
      return state, (state.x if keep_all else None)

    state, xs = jax.lax.scan(body, init, inputs)
    return state.x, xs, None
  step = _stateful_step(model_fn, process, sampler, conditioning)

  def stateful_body(carry, inp):
    carry = step(carry, inp)
    return carry, (carry[0].x if keep_all else None)

  (state, model_state), xs = jax.lax.scan(stateful_body, (init, model_state), inputs)
  return state.x, xs, model_state


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
  conditioning: cond_lib.FrameConditioning | None = None,
  first_step: int = 0,
  source: jax.Array | None = None,
  model_state: Any = None,
) -> Any:
  """Integrates from `noise` [B, ...] to data with `num_steps` steps of `sampler`.

  Args:
    model_fn: `model_fn(x_t, t_model [B]) -> prediction` (velocity for flow, epsilon / v for DDPM).
    noise: standard normal [B, ...], the starting point (with `rng`, all randomness of the sampler).
    process: `FlowMatching` or `DDPM` (gives the timesteps, including flow's shift).
    sampler: "euler", "heun", "unipc" (flow only), "ddim", "dpmpp_2m" or "ddpm" (stochastic, DDPM only).
    num_steps: number of steps (Heun calls the model twice per step).
    num_tokens: tokens per example, for flow's automatic shift (same as in training).
    return_every: k > 0 also returns x after every k-th step, [num_steps // k, B, ...].
    rng: optional PRNG key for the stochastic samplers' per-step noise (default: key 0; either
      way each example's noise is also keyed by its own starting noise); ignored by the others.
    conditioning: given latent frames held at every step (`diffusion/conditioning.py`); the result
      equals their latents exactly at the clean (strength 1) frames.
    first_step: SDEdit: start at point `first_step` of the num_steps-step grid from `source`
      [B, ...] noised to it (x = alpha source + sigma noise) and run the remaining steps.
    source: the clean data that `first_step` > 0 starts from.
    model_state: a stateful model: `model_fn(x_t, t_model, state) -> (prediction, state)` with this
      initial state (a pytree in the scan carry, e.g. the block cache of `block_cache.py`); None
      (default) = the plain `model_fn(x_t, t_model)`.
  Returns:
    x0 float32 [B, ...], or (x0, intermediates) when return_every > 0; with model_state, the
    final model state is appended: (x0, state) or (x0, intermediates, state).
  """
  if return_every < 0:
    raise ValueError(f"return_every={return_every} must be >= 0 (0 = final sample only)")
  inputs = step_inputs(process, sampler, num_steps, num_tokens, first_step)
  rng = rng if sampler in STOCHASTIC else None
  start = None
  if first_step:
    if source is None:
      raise ValueError("first_step > 0 (SDEdit) starts from source=: the clean data to re-noise")
    alpha, sigma = start_point(process, sampler, num_steps, num_tokens, first_step)
    start = alpha * jnp.asarray(source, jnp.float32) + sigma * jnp.asarray(noise, jnp.float32)
  if conditioning is not None:
    cond_lib.check(conditioning, jnp.shape(noise), process)
  x, xs, final_state = _scan(
    model_fn,
    noise,
    inputs,
    rng,
    conditioning,
    start,
    model_state,
    process=process,
    sampler=sampler,
    keep_all=return_every > 0,
  )
  out = (x, xs[return_every - 1 :: return_every]) if return_every > 0 else (x,)
  if model_state is not None:
    out = (*out, final_state)
  return out[0] if len(out) == 1 else out
