"""Real-scale causal VAE like Wan 2.1's: 4x8x8 compression to 16 latent channels, for GPUs/TPUs.

  python tools/train_vae.py --config=configs/vae/wan.py --workdir=runs/vae_wan \
      --config.data.dataset=video_folder --config.data.builder_config=my_clips

A 17x256x256 clip becomes a 5x32x32x16 latent (48x fewer values). Widths 96-384 over four
levels, two residual blocks per level, frame attention in the middle block, bf16 compute
with float32 params, rematerialised blocks, and a hinge GAN after 20k steps. Time chunks of
2 latent frames and 256-pixel tiles keep encode/decode memory flat on long, large videos.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.data.num_frames = 17
  c.data.height = 256
  c.data.width = 256
  c.data.batch_size = 32
  c.data.random_flip = True
  c.data.random_temporal_crop = True

  c.vae.temporal_factor = 4
  c.vae.spatial_factor = 8
  c.vae.patch_size = (1, 1, 1)
  c.vae.latent_channels = 16
  c.vae.base_channels = 96
  c.vae.channel_multipliers = (1, 2, 4, 4)
  c.vae.num_res_blocks = 2
  c.vae.mid_attention = True
  c.vae.dtype = "bfloat16"
  c.vae.remat = True
  c.vae.encode_chunk_frames = 2
  c.vae.tile_size = 256
  c.vae.tile_overlap = 0.25

  c.vae_loss.l1_weight = 1.0
  c.vae_loss.l2_weight = 0.0
  c.vae_loss.kl_weight = 1e-6
  c.vae_loss.gan_weight = 0.1
  c.vae_loss.gan_start_step = 20_000
  c.vae_loss.disc_channels = 64
  c.vae_loss.latent_stats_batches = 64

  c.train.steps = 200_000
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 2_000
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.0
  c.train.log_every = 100
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 5_000
  c.train.sample_every = 5_000
  c.mesh.shape = (-1, 1, 1, 1)
  return c
