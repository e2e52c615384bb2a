"""CPU demo: a tiny text-to-video DiT on the shapes latents (flow matching, frozen MiniLM text encoder).

  python tools/train_dit.py --config=configs/dit/demo.py --workdir=runs/demo/dit --config.vae_workdir=runs/demo/vae

Sized so `make demo` fits its 20-minute budget on a 2-core CPU. The run is defined by
train.steps (the same command gives the same model on a faster or slower machine);
train.max_minutes is only a safety net, which warns when it cuts the schedule. The runs that
chose the non-obvious values (uniform t with shift 4, lr 2e-3, frozen MiniLM, sin-cos positions)
are in docs/experiments.md.
"""

from configs import base
from configs.vae import demo as vae_demo
from sora_jax.models import variants


def get_config():
  c = base.get_config()
  # The demo VAE's geometry (5x8x8x8 latents for 17x32x32 clips), so tools/benchmark.py and
  # tools/estimate.py size this DiT as train_dit does (which reads the VAE workdir itself).
  c.vae = vae_demo.get_config().vae
  c.dit.variant = "video-tiny"
  c.dit = variants.apply_variant(c.dit)
  c.dit.abs_pos_embedding = "sincos3d"
  c.dit.scan_layers = False  # unrolled layers: ~15 % faster train steps on CPU (4 layers compile quickly)
  c.text.encoder = "minilm"  # frozen all-MiniLM-L6-v2; the longest shapes caption is 14 WordPiece tokens
  c.text.max_length = 24
  c.diffusion.t_sampling = "uniform"  # with shift 4: much training at high noise, where motion is decided
  c.diffusion.shift = 4.0
  c.data.batch_size = 32
  c.train.steps = 1900  # the 11.5-minute budget reached ~1970 steps on a quiet 2-core CPU: the schedule now ends
  c.train.max_minutes = 20.0  # safety net only (warns when it cuts the schedule); the run ends at train.steps
  c.train.learning_rate = 2e-3  # what lets motion emerge within the budget
  c.train.warmup_steps = 200
  c.train.weight_decay = 0.0
  c.train.ema_decay = 0.995
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.checkpoint_every = 500
  # One model for text-to-video and every image/video prompt: half the examples stay text-to-video
  # (so it does not get worse), the rest learn given frames (docs/experiments.md, "Prompting with images and videos").
  c.train.conditioning.none = 0.5
  c.train.conditioning.first_frame = 0.15
  c.train.conditioning.first_k = 0.1
  c.train.conditioning.last_k = 0.1
  c.train.conditioning.first_last = 0.15
  c.sample.num_steps = 20
  c.sample.guidance_scale = 4.0
  return c
