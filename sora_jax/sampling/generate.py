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

from sora_jax.diffusion import conditioning as cond_lib
from sora_jax.diffusion import guidance, samplers
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

  @jax.jit
  def generate(params, fields, null_fields, seeds, guidance_scale, noise=None, given=None, strength=None, source=None):
    model_fn, cond = dit_step.make_model_fn(denoiser, params, fields)
    _, uncond = dit_step.make_model_fn(denoiser, params, null_fields)
    guided = guidance.cfg_model_fn(model_fn, cond, uncond, guidance_scale)
    if ticker is not None:
      guided = _with_tick(guided, ticker)
    if noise is None:
      noise = initial_noise(seeds, tuple(latent_shape))
    conditioning = None
    if strength is not None:
      partial = components.process.kind == "flow"  # anchors of strength < 1 start from the initial noise
      conditioning = cond_lib.FrameConditioning(given, strength, noise if partial else None)
    x0 = samplers.sample(
      guided,
      noise,
      process=components.process,
      sampler=sampler,
      num_steps=num_steps,
      num_tokens=tokens,
      conditioning=conditioning,
      first_step=first_step,
      source=source,
    )
    video = vae_lib.decode_latents(components.vae, params["vae"], x0 * std + mean)
    out = FRAME_FORMATS[frames](video)
    return (out, x0) if return_latents else out

  return generate


def _with_tick(fn, ticker: StepTicker):
  def ticking(x_t, t_model):
    jax.debug.callback(ticker, t_model[0])
    return fn(x_t, t_model)

  return ticking


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
