"""CPU VAE for natural video (your own footage) at 17x64x64: Wan-like 4x8x8 compression to 16 channels.

  .venv/bin/python -m sora_jax.data.photo_videos --out_dir=runs/photos --num_frames=320 --moves=8
  .venv/bin/python tools/import_videos.py --videos_dir=runs/photos --captions=runs/photos/captions.csv \
      --name=photos --num_frames=17 --height=64 --width=64 --fps=8 --stride=8 \
      --validation_fraction=0.125 --test_fraction=0.25
  .venv/bin/python tools/train_vae.py --config=configs/vae/natural.py --workdir=runs/natural_vae \
      --config.data.dataset=video_folder --config.data.builder_config=photos

A 17x64x64 clip becomes a 5x8x8x16 latent (Wan 2.1's 4x8x8 factors and 16 channels, 40x fewer
values), so a DiT on top sees 8x8 latent frames. Built like Wan's VAE (per-position RMS norms,
causal 3D convs, mid-block attention), but small: a causal (4, 2, 2) space/time-to-depth
patchify keeps full-resolution convs out of the model, and the finest level (32x32) uses
per-frame 2D convs, time being mixed at 16x16 and 8x8. Natural footage is textured, unlike
the shapes' flat colour on black, where RMS norms learn slowly (configs/vae/demo.py); here they
keep activations in range across very different images.

train.steps is the schedule (the same model on any machine); train.max_minutes=10 is a safety
net. Reconstruction PSNR on held-out photographs: see docs/experiments.md.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.data.num_frames = 17
  c.data.height = 64
  c.data.width = 64
  c.data.batch_size = 4
  c.data.random_flip = True  # mirror images are natural footage too

  c.vae.temporal_factor = 4
  c.vae.spatial_factor = 8
  c.vae.patch_size = (4, 2, 2)  # 17x64x64x3 -> 5x32x32x48 before the first conv
  c.vae.latent_channels = 16
  c.vae.base_channels = 32
  c.vae.channel_multipliers = (1, 2, 4)  # 32 at 32x32, 64 at 16x16, 128 at 8x8
  c.vae.num_res_blocks = 1
  c.vae.encoder_time_kernels = (1, 3, 3)
  c.vae.decoder_time_kernels = (1, 3, 3)
  c.vae.mid_attention = True
  c.vae.norm = "rms"
  c.vae.dtype = "float32"

  c.vae_loss.l1_weight = 1.0
  c.vae_loss.l2_weight = 10.0  # PSNR is an L2 measure (as in configs/vae/demo.py)
  c.vae_loss.kl_weight = 1e-6
  c.vae_loss.gan_weight = 0.0
  c.vae_loss.latent_stats_batches = 16

  c.train.steps = 800
  c.train.max_minutes = 10.0
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.b2 = 0.99
  c.train.ema_decay = 0.0
  c.train.log_every = 50
  c.train.eval_every = 300
  c.train.eval_batches = 4
  c.train.checkpoint_every = 300
  c.train.sample_every = 600
  return c
