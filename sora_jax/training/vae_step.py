"""VAE training as pure functions: state init, losses, the train step and the eval step.

Used by tools/train_vae.py with the generic loop (sora_jax.training.loop.train):

    init_fn = make_init_fn(vae, tx, video_shape, discriminator)     # rng -> TrainState
    train_step = make_train_step(vae, tx, config.vae_loss, discriminator)
    state, metrics = train_step(state, {"video": [B, T, H, W, 3] in [-1, 1]}, rng)

State params are a dict: {"vae": ...} plus {"disc": ...} when the GAN loss is on
(config.vae_loss.gan_weight > 0), so one optimizer and one checkpoint hold both.

Loss of the autoencoder (all terms float32 means):
    l1_weight * |x - x_hat| + l2_weight * (x - x_hat)^2 + kl_weight * KL(q(z|x) || N(0, I))
    + gan_on * gan_weight * (-D(x_hat))              gan_on = step >= gan_start_step
and of the discriminator: hinge(D(x), D(sg(x_hat))), its gradient zeroed before gan_start_step.
The reconstruction is decoded from a posterior sample (rng "sample").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sora_jax.evaluation import metrics as metrics_lib
from sora_jax.models import discriminator as disc_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models.dtypes import compute_dtype
from sora_jax.training.train_state import TrainState, create_train_state


def uses_gan(loss_cfg: Any) -> bool:
  return loss_cfg.gan_weight > 0


def make_discriminator(config: Any) -> disc_lib.PatchDiscriminator3D | None:
  """The 3D patch discriminator when config.vae_loss.gan_weight > 0, else None."""
  if not uses_gan(config.vae_loss):
    return None
  return disc_lib.PatchDiscriminator3D(
    channels=config.vae_loss.disc_channels, dtype=compute_dtype(config.vae.dtype, "vae.dtype")
  )


def make_init_fn(
  vae: vae_lib.CausalVAE,
  tx: optax.GradientTransformation,
  video_shape: tuple[int, ...],
  discriminator=None,
  ema: bool = False,
) -> Callable[[jax.Array], TrainState]:
  """rng -> TrainState with params {"vae": ..., ["disc": ...]} (logically annotated).

  video_shape: [B, T, H, W, 3] of one (small) example batch used to trace the shapes.
  ema: also keep an EMA of the params (config.train.ema_decay > 0); restores and evals prefer it.
  """

  def init_fn(rng: jax.Array) -> TrainState:
    video = jnp.zeros(video_shape, jnp.float32)
    vae_rng, sample_rng, disc_rng = jax.random.split(rng, 3)
    params = {"vae": vae.init({"params": vae_rng, "sample": sample_rng}, video)["params"]}
    if discriminator is not None:
      params["disc"] = discriminator.init(disc_rng, video)["params"]
    return create_train_state(params, tx, ema=ema)

  return init_fn


def reconstruction_terms(recon: jnp.ndarray, video: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """l1, l2 (float32 means) and psnr (mean per frame, in dB, [-1, 1] range clipped) of a batch."""
  recon = recon.astype(jnp.float32)
  video = video.astype(jnp.float32)
  return {
    "l1": jnp.mean(jnp.abs(recon - video)),
    "l2": jnp.mean(jnp.square(recon - video)),
    "psnr": jnp.mean(metrics_lib.psnr(jnp.clip(recon, -1.0, 1.0), video, max_value=2.0)),
  }


def make_train_step(
  vae: vae_lib.CausalVAE, tx: optax.GradientTransformation, loss_cfg: Any, discriminator=None, ema_decay: float = 0.0
) -> Callable:
  """(state, batch, rng) -> (state, metrics): one AdamW update of the VAE (and discriminator).

  ema_decay: decay of the parameter EMA (used when the state keeps one).

  Metrics: loss (the autoencoder's total), l1, l2, kl, psnr, grad_norm, and with the GAN:
  gan_on, g_loss, d_loss, d_real, d_fake (mean logits).
  """
  gan = discriminator is not None

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    video = batch["video"]
    gan_on = (state.step >= loss_cfg.gan_start_step).astype(jnp.float32) if gan else 0.0

    def vae_loss_fn(vae_params):
      recon, mean, logvar = vae.apply({"params": vae_params}, video, rngs={"sample": rng})
      terms = reconstruction_terms(recon, video)
      terms["kl"] = vae_lib.kl_divergence(mean, logvar)
      loss = loss_cfg.l1_weight * terms["l1"] + loss_cfg.l2_weight * terms["l2"] + loss_cfg.kl_weight * terms["kl"]
      if gan:
        fake_logits = discriminator.apply({"params": jax.lax.stop_gradient(state.params["disc"])}, recon)
        terms["g_loss"] = disc_lib.generator_hinge_loss(fake_logits)
        loss = loss + gan_on * loss_cfg.gan_weight * terms["g_loss"]
      return loss, (recon, terms)

    (loss, (recon, terms)), vae_grads = jax.value_and_grad(vae_loss_fn, has_aux=True)(state.params["vae"])
    grads = {"vae": vae_grads}
    if gan:
      fake = jax.lax.stop_gradient(recon)

      def disc_loss_fn(disc_params):
        real_logits = discriminator.apply({"params": disc_params}, video)
        fake_logits = discriminator.apply({"params": disc_params}, fake)
        loss = disc_lib.discriminator_hinge_loss(real_logits, fake_logits)
        return loss, (jnp.mean(real_logits), jnp.mean(fake_logits))

      (d_loss, (d_real, d_fake)), disc_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(state.params["disc"])
      grads["disc"] = jax.tree.map(lambda g: g * gan_on, disc_grads)
      terms.update(gan_on=gan_on, d_loss=d_loss, d_real=d_real, d_fake=d_fake)
    metrics = dict(terms, loss=loss, grad_norm=optax.tree.norm(grads))
    return state.apply_gradients(grads, tx, ema_decay), metrics

  return train_step


def make_reconstruct_fn(vae: vae_lib.CausalVAE) -> Callable:
  """(vae_params, video [B, T, H, W, 3]) -> reconstruction from the posterior mean (jit it)."""

  def reconstruct(vae_params, video):
    mean, _ = vae.apply({"params": vae_params}, video, method=vae_lib.CausalVAE.encode)
    return vae.apply({"params": vae_params}, mean, method=vae_lib.CausalVAE.decode)

  return reconstruct
