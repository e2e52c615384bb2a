"""The one place a run's denoising network is built from its config: the DiT and its text encoder.

    denoiser = build_denoiser(config, latent_shape=(5, 8, 8, 8))   # (T', H', W', C) of one latent
    params = denoiser.init(rng)          # {"dit": ..., "text": ... (trainable encoder)}, logically boxed
    denoiser.dit, denoiser.text_encoder  # the linen module and the TextEncoder (None: class-conditional)

Training (its init and train step), the Pipeline (its restore target) and the memory
estimator all build through here, so they agree on the parameter tree. Building reads no
weights (a frozen encoder's come from `text_encoder.load_pretrained()`).

Architectures are looked up by `config.dit.architecture` in `ARCHITECTURES` (name -> builder
of the linen module from `config.dit`, the latent channels and the text width): "dit" (ours,
models/dit.py) and "wan2.1" (diffusers' WanTransformer3DModel, models/wan/transformer.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sora_jax.models import text as text_lib
from sora_jax.models.dit import DiT
from sora_jax.models.patchify import num_tokens
from sora_jax.models.wan.transformer import WanTransformer

# name -> (config.dit, latent channels, text width) -> linen module taking (x, t, cond).
ARCHITECTURES: dict[str, Callable[..., Any]] = {
  "dit": lambda dit_cfg, in_channels, text_dim: DiT.from_config(dit_cfg, in_channels=in_channels, text_dim=text_dim),
  "wan2.1": lambda dit_cfg, in_channels, text_dim: WanTransformer.from_config(
    dit_cfg, in_channels=in_channels, text_dim=text_dim
  ),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Denoiser:
  """The network that denoises latents: the DiT, its text encoder and the latent shape it was built for.

  Attributes:
    dit: the linen module (`dit.apply({"params": p}, x [B, T', H', W', C], t [B], cond)`).
    text_encoder: a `sora_jax.models.text.TextEncoder`, or None for a class-conditional DiT.
    latent_shape: (T', H', W', C) of one latent (the init shape; the DiT takes any divisible size).
  """

  dit: Any
  text_encoder: text_lib.TextEncoder | None
  latent_shape: tuple[int, int, int, int]

  @property
  def num_tokens(self) -> int:
    """Spacetime tokens of one latent of `latent_shape`."""
    return num_tokens((1, *self.latent_shape), self.dit.patch_size)

  def example_condition(self) -> dict[str, jax.Array]:
    """A zero `cond` for one example (what `init` traces the DiT with)."""
    if self.text_encoder is None:
      return {"label": jnp.zeros((1,), jnp.int32)}
    length, width = self.text_encoder.max_length, self.text_encoder.output_dim
    return {
      "text": jnp.zeros((1, length, width), jnp.float32),
      "text_mask": jnp.ones((1, length), bool),
      "pooled": jnp.zeros((1, width), jnp.float32),
    }

  def init(self, rng: jax.Array) -> dict[str, Any]:
    """Trainable parameters {"dit": ..., "text": ... (trainable encoder only)}, logically boxed.

    Its `jax.eval_shape` is the abstract target restores read a checkpoint's params into.
    """
    rng_dit, rng_text = jax.random.split(rng)
    x = jnp.zeros((1, *self.latent_shape), jnp.float32)
    params = {"dit": self.dit.init(rng_dit, x, jnp.zeros((1,), jnp.float32), self.example_condition())["params"]}
    if self.text_encoder is not None and self.text_encoder.trainable:
      params["text"] = self.text_encoder.init(rng_text)["params"]
    return params


def build_denoiser(config, latent_shape, *, text_encoder: text_lib.TextEncoder | None = None) -> Denoiser:
  """The DiT of `config.dit` (+ the text encoder of `config.text` when `dit.conditioning == "text"`).

  Args:
    config: a full run config (its dit and text sections are read).
    latent_shape: (T', H', W', C) of one latent; C is the DiT's input channels.
    text_encoder: one already built from `config.text` (e.g. for the latent cache), to reuse.
  """
  latent_shape = tuple(int(s) for s in latent_shape)
  if len(latent_shape) != 4:
    raise ValueError(f"latent_shape must be (T', H', W', C) of one latent, got {latent_shape}")
  if config.dit.conditioning != "text":
    text_encoder = None
  elif text_encoder is None:
    text_encoder = text_lib.build_text_encoder(config.text)
  text_dim = text_encoder.output_dim if text_encoder is not None else 0
  architecture = config.dit.architecture
  if architecture not in ARCHITECTURES:
    raise ValueError(f"dit.architecture={architecture!r} is not one of {sorted(ARCHITECTURES)}")
  dit = ARCHITECTURES[architecture](config.dit, latent_shape[-1], text_dim)
  return Denoiser(dit=dit, text_encoder=text_encoder, latent_shape=latent_shape)
