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

Both DDIM and DPM-Solver++(2M) are written as x_next = c_x x + c_x0 x0_hat + c_prev x0_prev, with
the coefficients precomputed in float64 numpy (no infinities reach the device). The step
functions are plain Python functions of (state, per-step inputs): `sample` scans them, and the
same functions can run in a Python loop (`sampling_step` + `step_inputs`), with identical
results. Deterministic given the noise.

For repeated sampling wrap `sample` in your own `jax.jit` taking params / conditioning as
arguments (closures over large arrays are recompiled per new closure):

    @jax.jit
    def generate(params, cond, uncond, noise):
      fn = guidance.cfg_model_fn(lambda x, t, c: dit.apply(params, x, t, c), cond, uncond, 4.0)
      return sample(fn, noise, process=flow, sampler="euler", num_steps=30, num_tokens=n)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

GuidedFn = Callable[[jax.Array, jax.Array], jax.Array]


class SamplerState(NamedTuple):
  """x: the current sample [B, ...] (float32); prev_x0: the previous step's data prediction (multistep)."""

  x: jax.Array
  prev_x0: jax.Array


def _time(x: jax.Array, t_model: jax.Array) -> jax.Array:
  return jnp.full((x.shape[0],), t_model, jnp.float32)


def _euler_step(model_fn: GuidedFn, process, state: SamplerState, inp: dict) -> SamplerState:
  v = process.velocity(model_fn(state.x, _time(state.x, inp["t_model"])), state.x)
  return SamplerState(state.x + inp["dt"] * v, state.prev_x0)


def _heun_step(model_fn: GuidedFn, process, state: SamplerState, inp: dict) -> SamplerState:
  v = process.velocity(model_fn(state.x, _time(state.x, inp["t_model"])), state.x)
  x_euler = state.x + inp["dt"] * v
  v_next = process.velocity(model_fn(x_euler, _time(state.x, inp["t_model_next"])), x_euler)
  return SamplerState(state.x + inp["dt"] * 0.5 * (v + v_next), state.prev_x0)


def _multistep_step(model_fn: GuidedFn, process, state: SamplerState, inp: dict) -> SamplerState:
  """DDIM / DPM-Solver++(2M): x_next = c_x x + c_x0 x0_hat + c_prev x0_prev."""
  pred = model_fn(state.x, _time(state.x, inp["t_model"]))
  x0 = process.predict_x0(pred, state.x, inp["alpha"], inp["sigma"])
  x_next = inp["c_x"] * state.x + inp["c_x0"] * x0 + inp["c_prev"] * state.prev_x0
  return SamplerState(x_next, x0)


STEPS = {"euler": _euler_step, "heun": _heun_step, "ddim": _multistep_step, "dpmpp_2m": _multistep_step}
FLOW_ONLY = ("euler", "heun")
ORDERS = {"ddim": 1, "dpmpp_2m": 2}


def _check(process, sampler: str, num_steps: int) -> None:
  if sampler not in STEPS:
    raise ValueError(f"sampler={sampler!r} is not one of {sorted(STEPS)}")
  if sampler in FLOW_ONLY and process.kind != "flow":
    raise ValueError(f"sampler={sampler!r} integrates the flow ODE and needs diffusion.kind='flow'; "
                     f"with kind={process.kind!r} use 'ddim' or 'dpmpp_2m'")
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


def step_inputs(process, sampler: str, num_steps: int, num_tokens: int | None = None) -> dict[str, np.ndarray]:
  """Per-step scalars (float32 numpy [num_steps]) the step function reads: what `sample` scans over."""
  _check(process, sampler, num_steps)
  p = process.sampling_points(int(num_steps), num_tokens)
  inputs = {"t_model": p["t_model"][:-1], "t_model_next": p["t_model"][1:], "dt": p["t"][1:] - p["t"][:-1],
            "alpha": p["alpha"][:-1], "sigma": p["sigma"][:-1]}
  inputs.update(multistep_coefficients(p["alpha"], p["sigma"], ORDERS.get(sampler, 1)))
  return {k: np.asarray(v, np.float32) for k, v in inputs.items()}


def sampling_step(model_fn: GuidedFn, process, sampler: str) -> Callable[[SamplerState, dict], SamplerState]:
  """The pure step `step(state, inputs_i) -> state` of `sampler` (inputs_i: `step_inputs(...)` at step i)."""
  _check(process, sampler, 1)
  return functools.partial(STEPS[sampler], model_fn, process)


def initial_state(noise: jax.Array) -> SamplerState:
  x = jnp.asarray(noise, jnp.float32)
  return SamplerState(x, jnp.zeros_like(x))


@functools.partial(jax.jit, static_argnames=("model_fn", "process", "sampler", "keep_all"))
def _scan(model_fn: GuidedFn, noise: jax.Array, inputs: dict, *, process, sampler: str, keep_all: bool):
  step = sampling_step(model_fn, process, sampler)

  def body(state, inp):
    state = step(state, inp)
    return state, (state.x if keep_all else None)

  state, xs = jax.lax.scan(body, initial_state(noise), inputs)
  return state.x, xs


def sample(model_fn: GuidedFn, noise: jax.Array, *, process, sampler: str = "euler", num_steps: int = 30,
           num_tokens: int | None = None, return_every: int = 0) -> Any:
  """Integrates from `noise` [B, ...] to data with `num_steps` steps of `sampler`.

  Args:
    model_fn: `model_fn(x_t, t_model [B]) -> prediction` (velocity for flow, epsilon / v for DDPM).
    noise: standard normal [B, ...], the starting point (all randomness of the sampler).
    process: `FlowMatching` or `DDPM` (gives the timesteps, including flow's shift).
    sampler: "euler", "heun", "ddim" or "dpmpp_2m".
    num_steps: number of steps (Heun calls the model twice per step).
    num_tokens: tokens per example, for flow's automatic shift (same as in training).
    return_every: k > 0 also returns x after every k-th step, [num_steps // k, B, ...].
  Returns:
    x0 float32 [B, ...], or (x0, intermediates) when return_every > 0.
  """
  if return_every < 0:
    raise ValueError(f"return_every={return_every} must be >= 0 (0 = final sample only)")
  inputs = step_inputs(process, sampler, num_steps, num_tokens)
  x, xs = _scan(model_fn, noise, inputs, process=process, sampler=sampler, keep_all=return_every > 0)
  if return_every > 0:
    return x, xs[return_every - 1::return_every]
  return x
