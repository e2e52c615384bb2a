"""DiT training on cached latents: parameters, conditioning, loss, train and eval steps.

Everything here is a pure function of (params, batch, rng). The trainable parameters
are one pytree `{"dit": ..., "text": ...}` ("text" only when the text encoder is
trained jointly, i.e. the small byte-level one), built by `sora_jax.models.factory`;
a frozen encoder's embeddings come precomputed from the latent cache.

Batches (from `sora_jax.data.latent_cache.LatentCacheSource`):
  latent_mean, latent_logvar  f32 [B, T', H', W', C]   raw VAE posterior
  + the text fields of `sora_jax.models.text.fields` (token ids, or frozen-encoder states)

The DiT sees normalised latents x0 = (z - mean_c) / std_c with z sampled from the
posterior and (mean_c, std_c) the VAE's per-channel latent statistics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from sora_jax.diffusion import guidance
from sora_jax.models.factory import Denoiser
from sora_jax.models.patchify import num_tokens
from sora_jax.models.text.fields import text_condition, text_fields_of
from sora_jax.training import frame_conditioning
from sora_jax.training.optimizer import global_norm
from sora_jax.training.train_state import create_train_state

# Fixed timesteps for the eval loss (as SD3 / MLPerf): comparable across runs.
EVAL_TIMESTEPS = (0.1, 0.25, 0.5, 0.75, 0.9)


def normalized_latents(batch, latent_stats, rng=None) -> jax.Array:
  """x0 [B, T', H', W', C]: a posterior sample (or its mean when rng is None), normalised per channel."""
  z = batch["latent_mean"]
  if rng is not None:
    z = z + jnp.exp(0.5 * batch["latent_logvar"]) * jax.random.normal(rng, z.shape, z.dtype)
  return (z - latent_stats["mean"]) / latent_stats["std"]


def make_model_fn(denoiser: Denoiser, params, text_fields) -> tuple[Callable, dict]:
  """(model_fn(x_t, t_model, cond) -> prediction, cond) for the diffusion losses and samplers."""
  cond = text_condition(denoiser.text_encoder, params, text_fields)

  def model_fn(x_t, t_model, c):
    return denoiser.dit.apply({"params": params["dit"]}, x_t, t_model, c)

  return model_fn, cond


# Per-example terms of a diffusion loss's aux dict logged (as batch means) next to the loss.
LOGGED_LOSS_TERMS = ("mse", "vlb")


def loss_terms(aux: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Batch means of the loss terms in a diffusion loss's aux: 'mse' (unweighted; every process)
  and 'vlb' (DDPM's variational bound term of the hybrid loss for learn_sigma models, bits/dim)."""
  return {name: jnp.mean(aux[name]) for name in LOGGED_LOSS_TERMS if name in aux}


def _gradient_step(state, loss_of_params: Callable, tx, ema_decay: float):
  """One optimizer (and EMA) update of `state.params` down the gradient of `loss_of_params(params) -> (loss, aux)`:
  (new state, metrics 'loss', 'grad_norm' and the loss's terms)."""
  (loss, aux), grads = jax.value_and_grad(loss_of_params, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads, tx, ema_decay)
  return new_state, {"loss": loss, "grad_norm": global_norm(grads), **loss_terms(aux)}


def make_train_step(
  *,
  denoiser: Denoiser,
  diffusion,
  latent_stats,
  null_fields,
  cfg_dropout: float,
  tx,
  ema_decay: float,
  conditioning=None,
):
  """Returns `(train_step(state, batch, rng) -> (state, metrics), loss_fn)` (pure; jit with shardings).

  metrics: 'loss', 'grad_norm' and the loss's terms (`loss_terms`: 'mse', and 'vlb' with the
  hybrid DDPM loss), scalars the training loop averages and logs under train/.
  `conditioning`: `config.train.conditioning` (probabilities of the conditioning types,
  `training/frame_conditioning.py`); None or all "none" = text-to-video only.
  """
  null_fields = {k: jnp.asarray(v) for k, v in null_fields.items()}
  probs = frame_conditioning.probabilities(conditioning if conditioning is not None else {"none": 1.0})
  text_only = frame_conditioning.is_text_only(probs)
  if not text_only and diffusion.kind != "flow":
    raise ValueError(
      f"train.conditioning gives frames (prompting with images and videos), which needs diffusion.kind='flow'; "
      f"got {diffusion.kind!r}: set train.conditioning to none=1.0"
    )

  def loss_fn(params, batch, rng):
    rng_z, rng_drop, rng_noise = jax.random.split(rng, 3)
    x0 = normalized_latents(batch, latent_stats, rng_z)
    fields = guidance.drop_condition(rng_drop, text_fields_of(batch), null_fields, cfg_dropout)
    model_fn, cond = make_model_fn(denoiser, params, fields)
    tokens = num_tokens(x0.shape, denoiser.dit.patch_size)
    if text_only:
      return diffusion.loss(model_fn, x0, cond, rng_noise, num_tokens=tokens)
    rng_noise, rng_cond = jax.random.split(rng_noise)
    _, strength = frame_conditioning.sample_strength(rng_cond, x0.shape[0], x0.shape[1], probs)
    return diffusion.loss(model_fn, x0, cond, rng_noise, num_tokens=tokens, strength=strength)

  def train_step(state, batch, rng):
    return _gradient_step(state, lambda params: loss_fn(params, batch, rng), tx, ema_decay)

  return train_step, loss_fn


def make_eval_loss(*, denoiser: Denoiser, diffusion, latent_stats):
  """`eval_loss(params, batch, rng) -> dict`: loss at each of EVAL_TIMESTEPS, their mean, and the
  loss of a model that always predicts zero (the untrained baseline), without CFG dropout."""

  def eval_loss(params, batch, rng):
    x0 = normalized_latents(batch, latent_stats)
    model_fn, cond = make_model_fn(denoiser, params, text_fields_of(batch))
    out = {}
    for t in EVAL_TIMESTEPS:
      out[f"loss_t{t}"] = diffusion.loss_at(model_fn, x0, cond, rng, t)
    out["loss"] = sum(out.values()) / len(EVAL_TIMESTEPS)
    out["loss_zero_prediction"] = diffusion.loss_at(lambda x, t, c: jnp.zeros_like(x), x0, cond, rng, 0.5)
    return out

  return eval_loss


def make_init_fn(denoiser: Denoiser, tx, ema: bool):
  """`init_fn(rng) -> TrainState` with params {"dit", "text" (trainable encoder)}, logically boxed.

  Args:
    denoiser: from `sora_jax.models.factory.build_denoiser`.
    tx: the optimizer (`make_optimizer(config.train)`).
    ema: keep EMA params (the DiT samples from them by default).
  """
  return lambda rng: create_train_state(denoiser.init(rng), tx, ema=ema)


def make_lora_train_step(*, denoiser: Denoiser, tx, ema_decay: float, **loss_args):
  """`train_step(state, batch, rng, base) -> (state, metrics)` of a LoRA run (`models/lora.py`).

  `denoiser.dit` is a `LoraModel`; `state.params` holds only the adapters ({"dit": lora_A / lora_B
  tree}); `base` is the frozen params ({"dit", "text"?}). Gradients, optimizer state and EMA
  exist for the adapters only; the base is read (it may be bfloat16) and never updated. With
  lora.dropout > 0 the adapters' inputs get dropout drawn from the step's rng. The loss is
  `make_train_step`'s (conditioning types included); `loss_args` are its other arguments (diffusion,
  latent_stats, null_fields, cfg_dropout, conditioning).
  """
  from sora_jax.models import lora as lora_lib  # pylint: disable=g-import-not-at-top

  def train_step(state, batch, rng, base):
    rng, rng_dropout = jax.random.split(rng)
    model = lora_lib.LoraModel(denoiser.dit.base, denoiser.dit.spec, dropout_rng=rng_dropout)
    denoiser_now = dataclasses.replace(denoiser, dit=model)
    _, loss_fn = make_train_step(denoiser=denoiser_now, tx=tx, ema_decay=ema_decay, **loss_args)

    def adapter_loss(adapters):
      return loss_fn(lora_lib.merge_trees(base, adapters), batch, rng)

    return _gradient_step(state, adapter_loss, tx, ema_decay)

  return train_step


def make_lora_init_fn(denoiser: Denoiser, tx, ema: bool):
  """`init_fn(rng) -> TrainState` of a LoRA run: params {"dit": adapters only} (lora_B = 0), logically boxed.

  The base weights `denoiser.init` also creates are dropped (under jit their init is compiled away).
  """
  from sora_jax.models import lora as lora_lib  # pylint: disable=g-import-not-at-top

  def init_fn(rng):
    _, adapters = lora_lib.split_adapters(denoiser.init(rng)["dit"])
    return create_train_state({"dit": adapters}, tx, ema=ema)

  return init_fn
