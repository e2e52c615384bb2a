"""Video DiT configs by variant name, at a stated resolution; for estimates, benchmarks and real runs.

  python tools/estimate.py --config=configs/dit/video.py:wan-1.3b --frames=81 --height=480 --width=832
  python tools/train_dit.py --config=configs/dit/video.py:video-S --workdir=runs/s --config.vae_workdir=runs/vae

Argument: a variant from sora_jax.models.variants (video-tiny, video-S, wan-small, wan-1.3b, wan-14b).
Large variants default to bf16 compute, full remat and an FSDP mesh (all devices on `fsdp`).
"""

from configs import base
from sora_jax.models import variants

_LARGE = ("wan-1.3b", "wan-14b")


def get_config(variant: str = "video-S"):
  c = base.get_config()
  c.dit.variant = variant
  c.dit = variants.apply_variant(c.dit)
  c.text.encoder = "minilm"
  c.text.max_length = 64
  c.vae.spatial_factor = 8
  c.vae.latent_channels = 16
  if variant in _LARGE:
    c.dit.dtype = "bfloat16"
    c.dit.remat_policy = "full"
    c.mesh.shape = (1, -1, 1, 1)
    c.data.num_frames, c.data.height, c.data.width = 81, 480, 832
    c.train.learning_rate = 1e-4
  return c
