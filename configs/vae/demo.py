"""CPU demo VAE: 4x4x4 compression of 17x32x32 shapes clips to 5x8x8x8 latents, in minutes.

  python tools/train_vae.py --config=configs/vae/demo.py --workdir=runs/demo/vae

A causal (4, 2, 2) space/time-to-depth patchify does most of the compression, so no conv
runs at full resolution; small widths keep a train step cheap on a 2-core CPU. The decoder
is wider than the encoder at the 16x16 level, where edges are rendered; both use per-frame 2D
convs at 16x16 and causal 3D convs at 8x8 (the DiT learns motion from latents of 3D convs).
docs/experiments.md has the runs behind these values.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.data.num_frames = 17
  c.data.height = 32
  c.data.width = 32
  c.data.batch_size = 4  # twice the steps of batch 8 in the same minutes: what this short run needs

  c.vae.temporal_factor = 4
  c.vae.spatial_factor = 4
  c.vae.patch_size = (4, 2, 2)
  c.vae.latent_channels = 8
  c.vae.base_channels = 32
  c.vae.channel_multipliers = (1, 2)
  c.vae.num_res_blocks = 1
  c.vae.decoder_channel_multipliers = (2, 2)
  c.vae.encoder_time_kernels = (1, 3)
  c.vae.decoder_time_kernels = (1, 3)
  c.vae.mid_attention = False
  c.vae.norm = "none"  # per-position RMS norm learns slowly on black backgrounds
  c.vae.dtype = "float32"

  c.vae_loss.l1_weight = 1.0
  c.vae_loss.l2_weight = 10.0  # PSNR is an L2 measure
  c.vae_loss.kl_weight = 1e-6
  c.vae_loss.gan_weight = 0.0
  c.vae_loss.latent_stats_batches = 32  # 128 clips

  # The run is defined by its steps (the same VAE on any machine): 1500 steps took 6.2 min on a quiet 2-core Intel
  # Xeon (2026-12-02), ~4.4 at the rate of run Y7 (docs/experiments.md). 2000 steps with a 6-minute net was cut
  # at a machine-dependent step there.
  c.train.steps = 1500
  c.train.max_minutes = 15.0  # safety net only: warns when it would cut the schedule, stops a runaway run
  c.train.learning_rate = 2e-3  # 3e-3 diverges
  c.train.warmup_steps = 100
  c.train.b2 = 0.99
  c.train.ema_decay = 0.0
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_batches = 4  # 16 clips
  c.train.checkpoint_every = 500
  c.train.sample_every = 500
  return c
