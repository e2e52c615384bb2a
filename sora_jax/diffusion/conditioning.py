"""Conditioning frames in the diffusion maths: known latent frames that ride in the sequence.

Prompting with images and videos (animate, extend, connect, loop) is data, not a new model:
some latent frames are given, the DiT sees them in the same token sequence as the frames it
generates, and each token's adaLN modulation reads its own timestep (`models/dit.py` takes t
per latent frame). A conditioning is

    FrameConditioning(latents [B, T', H', W', C], strength [B, T'])

with `latents` the given frames (normalised latents; anything at frames not given) and
`strength` per latent frame: 0 = generated, 1 = given clean, s in (0, 1) = given but only as a
hint (LTX-Video's `ConditioningItem(strength)`): that frame starts at noise level t_f = 1 - s.
Flow time t in [0, 1] (t = 1 noise); at a point of the trajectory with time t:

* the network sees frame f at time min(t, t_f) (1000 x on the model scale): t = 0 for a given
  clean frame, t itself for a generated one (t_f = 1);
* `hold` re-pastes the given frames: a clean frame is x_c at every point; a partial one is its
  anchor (1 - t_f) x_c + t_f noise while t > t_f and then moves with the rest.

Training (`FlowMatching.loss(strength=...)`) noises each frame to min(t, t_f) and counts only
the generated frames in the loss. The samplers (`samplers.sample(conditioning=...)`) hold the
frames before every network call and after every step, with every sampler, and end exactly on
x_c at the clean frames. DDPM supports clean frames only (strength 0 or 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

T_MODEL_SCALE = 1000.0  # the network's time scale (flow's t_model = 1000 t; DDPM's timestep index)


class FrameConditioning(NamedTuple):
  """Given latent frames. latents [B, T', H', W', C] (normalised; ignored where strength is 0);
  strength [B, T'] float32 in [0, 1] (0 = generated); noise [B, T', H', W', C] or None: the noise
  that partial-strength frames start from (the sampler's starting noise)."""

  latents: jax.Array
  strength: jax.Array
  noise: Any = None


def _frames(x: jax.Array, per_frame: jax.Array) -> jax.Array:
  """[B, T'] -> [B, T', 1, 1, 1] broadcastable against latents [B, T', H', W', C]."""
  return per_frame.reshape(per_frame.shape + (1,) * (x.ndim - 2))


def check(conditioning: FrameConditioning, x_shape, process) -> None:
  """Shapes against the sampled latents, and partial strength only for flow (clear errors)."""
  b, frames = x_shape[0], x_shape[1]
  if tuple(conditioning.latents.shape) != tuple(x_shape):
    raise ValueError(f"conditioning latents {conditioning.latents.shape} must have the sample's shape {tuple(x_shape)}")
  if tuple(conditioning.strength.shape) != (b, frames):
    raise ValueError(f"conditioning strength must be [B, T'] = {(b, frames)}, got {conditioning.strength.shape}")
  if process.kind != "flow" and conditioning.noise is not None:
    raise ValueError("conditioning strength in (0, 1) needs diffusion.kind='flow'; DDPM holds clean frames only")


def frame_noise_level(strength: jax.Array) -> jax.Array:
  """t_f = 1 - strength [B, T'] (0 = clean, 1 = generated)."""
  return 1.0 - jnp.asarray(strength, jnp.float32)


def frame_times(t_model: jax.Array, strength: jax.Array) -> jax.Array:
  """Per-latent-frame network times [B, T'] = min(t_model [B], 1000 (1 - strength)) (DDPM: strength is 0 or 1)."""
  t_model = jnp.asarray(t_model, jnp.float32)
  return jnp.minimum(t_model[:, None], T_MODEL_SCALE * frame_noise_level(strength))


def hold(x: jax.Array, t_model, conditioning: FrameConditioning) -> jax.Array:
  """x with the given frames pasted for a point at network time t_model (scalar or [B])."""
  strength = jnp.asarray(conditioning.strength, jnp.float32)
  level = frame_noise_level(strength)
  t_model = jnp.broadcast_to(jnp.asarray(t_model, jnp.float32).reshape(-1, 1), strength.shape)
  held = (strength >= 1.0) | ((strength > 0.0) & (t_model > T_MODEL_SCALE * level))
  anchor = conditioning.latents.astype(jnp.float32)
  if conditioning.noise is not None:
    anchor = (1.0 - _frames(x, level)) * anchor + _frames(x, level) * conditioning.noise
  return jnp.where(_frames(x, held), anchor, x)


def conditioned_model_fn(model_fn: Callable, conditioning: FrameConditioning) -> Callable:
  """`fn(x_t [B, ...], t_model [B])` that pastes the given frames and gives the network per-frame times [B, T']."""

  def fn(x_t, t_model):
    return model_fn(hold(x_t, t_model, conditioning), frame_times(t_model, conditioning.strength))

  return fn


def generated_mask(strength: jax.Array) -> jax.Array:
  """[B, T'] float32: 1 where a frame is generated (strength 0), the frames the training loss counts."""
  return (jnp.asarray(strength) <= 0.0).astype(jnp.float32)
