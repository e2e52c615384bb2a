"""The training distribution over conditioning types: which latent frames of each example are given.

One model learns text-to-video and every prompting mode (animate, extend forwards and backwards,
connect, loop) because each training example draws a conditioning type (probabilities in
`config.train.conditioning`):

  none         text-to-video: every frame generated
  first_frame  latent frame 0 given (animate an image: with the causal VAE it is exactly the image)
  first_k      the first k latent frames given, k ~ U{1, T'-1} (extend forwards)
  last_k       the last k latent frames given, k ~ U{1, T'-1} (extend backwards, connect's end)
  first_last   the first and the last latent frames given (connect, and loop: start = end)

The given frames are the clip's own cached latents (no second copy of the data): the result
is a strength [B, T'] (1 = given clean, 0 = generated) that `FlowMatching.loss(strength=...)`
turns into per-frame noise levels and a loss over the generated frames only. Clips too short
for a type fall back: one latent frame -> none; two -> first_last becomes first_frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CONDITIONING_TYPES = ("none", "first_frame", "first_k", "last_k", "first_last")


def probabilities(conditioning_cfg) -> np.ndarray:
  """[len(CONDITIONING_TYPES)] probabilities from `config.train.conditioning` (normalised; clear errors)."""
  values = dict(conditioning_cfg)
  unknown = sorted(set(values) - set(CONDITIONING_TYPES))
  if unknown:
    raise ValueError(f"train.conditioning has unknown types {unknown}; valid: {', '.join(CONDITIONING_TYPES)}")
  p = np.asarray([float(values.get(name, 0.0)) for name in CONDITIONING_TYPES], np.float64)
  if np.any(p < 0) or p.sum() <= 0:
    raise ValueError(
      f"train.conditioning probabilities must be >= 0 with a positive sum; got {dict(zip(CONDITIONING_TYPES, p))}"
    )
  return p / p.sum()


def is_text_only(probs: np.ndarray) -> bool:
  """True when every example is text-to-video (the loss then runs exactly as without conditioning)."""
  return bool(probs[0] >= 1.0)


def sample_strength(rng: jax.Array, batch: int, frames: int, probs) -> tuple[jax.Array, jax.Array]:
  """(types int32 [B] indexing CONDITIONING_TYPES, strength float32 [B, frames]: 1 = given frame, 0 = generated)."""
  rng_type, rng_k = jax.random.split(rng)
  types = jax.random.choice(rng_type, len(CONDITIONING_TYPES), (batch,), p=jnp.asarray(probs, jnp.float32))
  if frames < 2:
    types = jnp.zeros_like(types)
  elif frames == 2:
    types = jnp.where(types == CONDITIONING_TYPES.index("first_last"), CONDITIONING_TYPES.index("first_frame"), types)
  k = jax.random.randint(rng_k, (batch,), 1, max(frames, 2))  # 1..T'-1 given frames for first_k / last_k
  f = jnp.arange(frames)[None, :]
  k = k[:, None]
  masks = jnp.stack(
    [
      jnp.zeros((batch, frames), bool),
      jnp.broadcast_to(f == 0, (batch, frames)),
      f < k,
      f >= frames - k,
      jnp.broadcast_to((f == 0) | (f == frames - 1), (batch, frames)),
    ]
  )  # [types, B, T']
  given = jnp.take_along_axis(masks, types[None, :, None], axis=0)[0]
  return types.astype(jnp.int32), given.astype(jnp.float32)
