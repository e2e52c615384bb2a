"""3D patch discriminator for the VAE's optional hinge-GAN loss.

A small fully convolutional net over video [B, T, H, W, 3] -> logits [B, T', H/2^n, W/2^n, 1]:
one real/fake score per spacetime patch (the 3D version of pix2pix / taming's PatchGAN),
so the adversarial loss sharpens local texture and edges without judging whole clips.
Its convs are `CausalConv3d`s (logical axis names for sharding; causality is harmless here).

Hinge losses (Lim & Ye 2017, as in VQGAN / Open-Sora):
  discriminator:  mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))
  generator:      -mean(D(fake))
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.models.causal_conv import VIDEO_AXES, CausalConv3d


class PatchDiscriminator3D(nn.Module):
  """Strided 3D convs + LeakyReLU; width doubles (up to 8x) as space halves.

  Attributes:
    channels: width of the first layer (config.vae_loss.disc_channels).
    num_layers: strided layers; each halves H and W (the second also halves T).
    dtype: compute dtype.
  """

  channels: int = 32
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video: jnp.ndarray) -> jnp.ndarray:
    x = video.astype(self.dtype)
    for i in range(self.num_layers):
      time_stride = 2 if i == 1 and x.shape[1] > 2 else 1
      x = CausalConv3d(self.channels * min(2**i, 8), (3, 3, 3), (time_stride, 2, 2), dtype=self.dtype, name=f"conv{i}")(
        x
      )
      x = nn.with_logical_constraint(jax.nn.leaky_relu(x, 0.2), VIDEO_AXES)
    return CausalConv3d(1, (3, 3, 3), dtype=jnp.float32, name="logits")(x)


def discriminator_hinge_loss(real_logits: jnp.ndarray, fake_logits: jnp.ndarray) -> jnp.ndarray:
  """mean(relu(1 - real)) + mean(relu(1 + fake)): a float32 scalar."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits.astype(jnp.float32))) + jnp.mean(
    jax.nn.relu(1.0 + fake_logits.astype(jnp.float32))
  )


def generator_hinge_loss(fake_logits: jnp.ndarray) -> jnp.ndarray:
  """-mean(D(fake)): a float32 scalar."""
  return -jnp.mean(fake_logits.astype(jnp.float32))
