r"""The DiT paper's class-conditional ImageNet models (Peebles & Xie 2023), by name.

The argument after ':' is a variant of sora_jax/models/variants.py
(DiT-{S,B,L,XL}/{2,4,8}; default DiT-XL/2). Latents are those of the SD image
VAE (256x256 pixels -> 32x32x4), DDPM with learned sigma, 1000 classes.

  python tools/estimate.py --config=configs/image/dit_paper.py:DiT-XL/2 --json
  python tools/estimate.py --config=configs/image/dit_paper.py:DiT-S/8 --config.data.height=512 --config.data.width=512
"""

from configs import base
from sora_jax.models import variants


def get_config(variant: str = "DiT-XL/2"):
  c = base.get_config()
  if not variant.startswith("DiT-"):
    raise ValueError(
      f"configs/image/dit_paper.py takes a DiT-paper variant, e.g. :DiT-XL/2; got {variant!r}. "
      f"Known: {', '.join(v for v in variants.VARIANTS if v.startswith('DiT-'))}"
    )
  c.dit.variant = variant
  c.dit = variants.apply_variant(c.dit)
  # Inputs as in the paper: one 256x256 frame through the SD image VAE (8x, 4 channels).
  c.data.num_frames = 1
  c.data.height = 256
  c.data.width = 256
  c.data.batch_size = 256
  c.vae.temporal_factor = 1
  c.vae.spatial_factor = 8
  c.vae.latent_channels = 4
  # Training recipe of the paper: DDPM (linear schedule, 1000 steps) with learned sigma trained by
  # ADM's hybrid loss (MSE + variational bound), AdamW 1e-4, no weight decay, EMA 0.9999.
  c.diffusion.kind = "ddpm"
  c.diffusion.ddpm_schedule = "linear"
  c.diffusion.ddpm_prediction = "epsilon"
  c.diffusion.num_timesteps = 1000
  c.diffusion.learn_sigma_loss = "hybrid"
  c.train.learning_rate = 1e-4
  c.train.lr_schedule = "constant"
  c.train.warmup_steps = 0
  c.train.weight_decay = 0.0
  c.train.ema_decay = 0.9999
  c.train.steps = 400_000
  # Sampling as in the paper: 250 ancestral DDPM steps (respaced) with the learned variance.
  c.sample.sampler = "ddpm"
  c.sample.num_steps = 250
  c.sample.guidance_scale = 1.5
  return c
