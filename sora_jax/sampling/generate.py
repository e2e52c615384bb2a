"""Text -> frames as one compiled function: condition, scan sampler with CFG, un-normalise, VAE decode.

Shared by `Pipeline.__call__` and the periodic samples of `tools/train_dit.py`, so
what training shows is exactly what users get.

    generate = make_generate_fn(components, sampler="euler", num_steps=30, latent_shape=(5, 8, 8, 8))
    frames = generate(params, fields, null_fields, seeds, guidance_scale)   # uint8 [B, T, H, W, 3]
    frames = generate(params, fields, null_fields, seeds, guidance_scale, noise)  # given initial latents

`params` is {"dit": ..., "vae": ..., "text": ... (trainable encoder only)}; `fields` and
`null_fields` are the text fields of the prompts and of the negative / empty prompt
(`sora_jax.models.text.fields`); `seeds` int32 [B] gives each example its own noise, so a
result does not depend on the batch it was in.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion import block_cache, guidance, samplers
from sora_jax.diffusion import conditioning as cond_lib
from sora_jax.diffusion.sampler_names import SAMPLERS
from sora_jax.media.convert import to_uint8
from sora_jax.models import vae as vae_lib
from sora_jax.models.factory import Denoiser
from sora_jax.models.patchify import num_tokens
from sora_jax.training import dit_step


@dataclasses.dataclass(frozen=True, eq=False)
class Components:
  """The parameter-free parts of a text-to-video system: networks, diffusion process, latent statistics."""

  denoiser: Denoiser  # the DiT and its text encoder
  vae: Any  # sora_jax.models.vae.CausalVAE
  process: Any  # FlowMatching or DDPM
  latent_stats: dict  # {"mean": f32 [C], "std": f32 [C]}


def initial_noise(seeds: jax.Array, latent_shape: tuple[int, ...]) -> jax.Array:
  """Standard normal [B, *latent_shape], example i drawn from PRNGKey(seeds[i])."""
  return jax.vmap(lambda s: jax.random.normal(jax.random.PRNGKey(s), latent_shape, jnp.float32))(seeds)


class StepTicker:
  """Host-side progress for the compiled sampler: the scan calls it once per model evaluation.

  The callback is baked into the compiled function once; `bar` is swapped per call
  (None = silent), so progress costs one host callback per step and no recompilation.
  `on_step` (a no-argument callable, e.g. the web app's step counter) is called at every
  evaluation too and stays set across calls.
  """

  def __init__(self):
    self.bar = None
    self.on_step = None

  def __call__(self, *_):
    if self.bar is not None:
      self.bar.update(1)
    if self.on_step is not None:
      self.on_step()


# How `generate` returns frames: displayable uint8, or floats in [0, 1] (diffusers' output_type="np").
FRAME_FORMATS = {
  "uint8": to_uint8,
  "float": lambda video: jnp.clip(video.astype(jnp.float32) * 0.5 + 0.5, 0.0, 1.0),
}


def make_generate_fn(
  components: Components,
  *,
  sampler: str,
  num_steps: int,
  latent_shape: tuple[int, int, int, int],
  return_latents: bool = False,
  ticker: StepTicker | None = None,
  frames: str = "uint8",
  first_step: int = 0,
  cache: block_cache.CacheConfig | None = None,
  cfg_window: tuple[float, float] | None = None,
  return_stats: bool = False,
):
  """A jitted `generate(params, fields, null_fields, seeds, guidance_scale, noise=None, given=None, strength=None,
  source=None)`.

  Args:
    components: the networks, the process and the latent statistics.
    sampler, num_steps: static: a new value compiles a new function.
    latent_shape: (T', H', W', C) of one latent; static.
    return_latents: also return the normalised latents x0 [B, T', H', W', C].
    ticker: called (on the host) at every model evaluation, for a progress bar.
    frames: "uint8" (default) or "float" (float32 in [0, 1]), see FRAME_FORMATS.
    first_step: SDEdit (`Pipeline.edit`): start at this step from `source` [B, *latent_shape]
      (normalised latents) re-noised to it; static.
    cache: the block cache (`block_cache.CacheConfig`; None or threshold 0 = off: the plain sampler).
    cfg_window: (lo, hi): guidance only where the noise level t_model / 1000 is in [lo, hi], the
      conditional branch alone elsewhere; None = guidance at every model call.
    return_stats: also return {"forwards": f32 [B] full-network forwards per example (cond + uncond),
      "cached_calls": int32 [], "model_calls": int32 []} (the block cache's count; without the cache
      `model_forwards` gives the same numbers from the schedule).
  Returns:
    A function returning frames [B, T, H, W, 3] (and latents). Compiled once per (batch size,
    text shape, noise given or not, frames given or not); guidance_scale is traced, so changing
    it does not recompile. `noise` [B, *latent_shape] replaces the seeded initial noise.
    `given` [B, *latent_shape] (normalised latents) and `strength` [B, T'] are conditioning
    frames (`diffusion/conditioning.py`), held at every step in both CFG branches.
  """
  if frames not in FRAME_FORMATS:
    raise ValueError(f"frames={frames!r} is not one of {sorted(FRAME_FORMATS)}")
  denoiser = components.denoiser
  tokens = num_tokens((1, *latent_shape), denoiser.dit.patch_size)
  mean = jnp.asarray(components.latent_stats["mean"], jnp.float32)
  std = jnp.asarray(components.latent_stats["std"], jnp.float32)

  cache = cache or block_cache.CacheConfig()
  cfg_window = block_cache.check_cfg_window(cfg_window)

  @jax.jit
  def generate(params, fields, null_fields, seeds, guidance_scale, noise=None, given=None, strength=None, source=None):
    if noise is None:
      noise = initial_noise(seeds, tuple(latent_shape))
    guided, state = guided_model_fn(
      denoiser,
      params,
      fields,
      null_fields,
      guidance_scale,
      cfg_window=cfg_window,
      cache=cache,
      batch=noise.shape[0],
      tokens=tokens,
    )
    if ticker is not None:
      guided = _with_tick(guided, ticker)
    conditioning = None
    if strength is not None:
      partial = components.process.kind == "flow"  # anchors of strength < 1 start from the initial noise
      conditioning = cond_lib.FrameConditioning(given, strength, noise if partial else None)
    out = samplers.sample(
      guided,
      noise,
      process=components.process,
      sampler=sampler,
      num_steps=num_steps,
      num_tokens=tokens,
      conditioning=conditioning,
      first_step=first_step,
      source=source,
      model_state=state,
    )
    x0, state = (out, None) if state is None else out
    video = vae_lib.decode_latents(components.vae, params["vae"], x0 * std + mean)
    result = (FRAME_FORMATS[frames](video),) + ((x0,) if return_latents else ())
    if return_stats:
      b = noise.shape[0]
      if state is None:
        forwards = model_forwards(components.process, sampler, num_steps, tokens, cfg_window, first_step=first_step)
        forwards = jnp.full((b,), forwards)
        calls = jnp.int32(len(model_call_times(components.process, sampler, num_steps, tokens, first_step)))
        stats = {"forwards": forwards, "cached_calls": jnp.int32(0), "model_calls": calls}
      else:
        forwards = state.evals[:b] + state.evals[b:]
        stats = {"forwards": forwards, "cached_calls": state.cached_calls, "model_calls": state.calls}
      result = (*result, stats)
    return result[0] if len(result) == 1 else result

  return generate


def guided_model_fn(
  denoiser: Denoiser, params, fields, null_fields, scale, *, cfg_window, cache, batch: int, tokens: int
):
  """(the guided model for the samplers, its initial state or None).

  Plain (cache off): `fn(x, t)`, `guidance.cfg_model_fn` (with the CFG window: a `lax.cond` between it and
  the conditional branch alone). Cached: `fn(x, t, state) -> (prediction, state)`, the network called
  with `block_cache` over the stacked [cond; uncond] batch of 2B, or on the cond half alone outside the
  CFG window (the uncond half's cache then waits unchanged).
  """
  model_fn, cond = dit_step.make_model_fn(denoiser, params, fields)
  _, uncond = dit_step.make_model_fn(denoiser, params, null_fields)
  if not cache.enabled:
    guided = guidance.cfg_model_fn(model_fn, cond, uncond, scale)
    if cfg_window is None:
      return guided, None
    conditional = guidance.conditional_model_fn(model_fn, cond)
    return (lambda x, t: jax.lax.cond(block_cache.in_cfg_window(t, cfg_window), guided, conditional, x, t)), None
  dit, dit_params = denoiser.dit, params["dit"]
  both = guidance.stack_conditions(cond, uncond)

  def call(x, t, c, state):
    return dit.apply({"params": dit_params}, x, t, c, block_cache=(cache, state))

  def guided(x, t, state):
    pred, state = call(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both, state)
    pred_cond, pred_uncond = jnp.split(pred.astype(jnp.float32), 2, axis=0)
    return guidance.guide(pred_cond, pred_uncond, scale, channels=x.shape[-1]), state

  def conditional(x, t, state):
    b = x.shape[0]
    half = jax.tree.map(lambda a: a[:b] if a.ndim and a.shape[0] == 2 * b else a, state)
    pred, half = call(x, t, cond, half)
    merged = jax.tree.map(
      lambda full, new: jnp.concatenate([new, full[b:]]) if full.ndim and full.shape[0] == 2 * b else new, state, half
    )
    return pred.astype(jnp.float32), merged

  def fn(x, t, state):
    if cfg_window is None:
      return guided(x, t, state)
    return jax.lax.cond(block_cache.in_cfg_window(t, cfg_window), guided, conditional, x, t, state)

  return fn, block_cache.init_state((2 * batch, tokens, denoiser.dit.hidden_size))


def _with_tick(fn, ticker: StepTicker):
  def ticking(x_t, t_model, *state):
    jax.debug.callback(ticker, t_model[0])
    return fn(x_t, t_model, *state)

  return ticking


def model_call_times(
  process, sampler: str, num_steps: int, num_tokens: int | None = None, first_step: int = 0
) -> np.ndarray:
  """The model time t_model of every network call of `num_steps` steps of `sampler` (Heun: two per step), from
  step `first_step` on (SDEdit)."""
  inputs = samplers.step_inputs(process, sampler, num_steps, num_tokens, first_step)
  if sampler == "heun":
    return np.stack([inputs["t_model"], inputs["t_model_next"]], axis=1).reshape(-1)
  return np.asarray(inputs["t_model"])


def model_forwards(
  process,
  sampler: str,
  num_steps: int,
  num_tokens: int | None = None,
  cfg_window=None,
  num_timesteps: float = 1000.0,
  first_step: int = 0,
) -> float:
  """Full-network forwards per video without the block cache: 2 per guided call (cond + uncond), 1 per call
  outside the CFG window (the conditional branch alone)."""
  window = block_cache.check_cfg_window(cfg_window)
  t = model_call_times(process, sampler, num_steps, num_tokens, first_step) / num_timesteps
  if window is None:
    return float(2 * len(t))
  guided = (t >= window[0]) & (t <= window[1])
  return float(np.sum(np.where(guided, 2, 1)))


def model_evals(sampler: str, num_steps: int) -> int:
  """Network calls (guided: one forward over 2B each) of `num_steps` steps of `sampler`."""
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler={sampler!r} is not one of {sorted(SAMPLERS)}")
  return num_steps * SAMPLERS[sampler].model_evals_per_step


@functools.cache
def bucket_size(batch: int) -> int:
  """Batch sizes are padded up to a power of two, so a new batch size rarely recompiles."""
  size = 1
  while size < batch:
    size *= 2
  return size
