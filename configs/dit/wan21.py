"""Wan 2.1 text-to-video: diffusers' Wan2.1-T2V-1.3B / 14B architecture (transformer, causal VAE, umT5-XXL).

  python tools/estimate.py --config=configs/dit/wan21.py:1.3b --mesh=1,8,1,1
  python tools/train_dit.py --config=configs/dit/wan21.py:1.3b --workdir=runs/wan13b_ft \
      --config.init_from=/data/Wan2.1-T2V-1.3B-Diffusers --config.data.dataset=video_folder \
      --config.data.builder_config=my_clips

Argument: "1.3b" or "14b" (the published sizes) or "tiny" (2 blocks, 32 wide: tests and CPU checks).
`init_from` is a diffusers Wan 2.1 folder: the transformer starts from its weights, and the VAE
(`vae_workdir`) and text encoder (`text.pretrained`) are read from the same folder unless set
apart. 480p defaults (81 x 480 x 832, flow shift 3.0: Wan's 480p setting; use 5.0 at 720p).
"""

import ml_collections

from configs import base
from sora_jax.models.wan import vae as wan_vae

# (depth, heads, mlp) with 128-wide heads; tiny: 16-wide heads.
SIZES = {"1.3b": (30, 12, 8960), "14b": (40, 40, 13824), "tiny": (2, 2, 48)}


def get_config(size: str = "1.3b"):
  if size not in SIZES:
    raise ValueError(f"unknown Wan 2.1 size {size!r}; choose one of {', '.join(SIZES)}")
  c = base.get_config()
  c.init_from = ml_collections.FieldReference("", field_type=str)
  c.vae_workdir = c.get_ref("init_from")
  c.text.pretrained = c.get_ref("init_from")

  depth, heads, mlp = SIZES[size]
  head_dim = 16 if size == "tiny" else 128
  c.dit.architecture = "wan2.1"
  c.dit.variant = ""
  c.dit.update(
    depth=depth,
    num_heads=heads,
    hidden_size=heads * head_dim,
    mlp_dim=mlp,
    patch_size=(1, 2, 2),
    conditioning="text",
    pos_embedding="rope3d",
    qk_norm=True,
    learn_sigma=False,
    modulation="shared",
  )
  c.vae.update(wan_vae.vae_config().to_dict())
  c.text.encoder = "umt5"
  c.text.max_length = 512  # Wan pads every prompt to 512 umT5 tokens

  c.diffusion.kind = "flow"
  c.diffusion.flow_prediction = "velocity"
  c.diffusion.t_sampling = "uniform"
  c.diffusion.shift = 3.0
  c.sample.sampler = "unipc"
  c.sample.num_steps = 50
  c.sample.guidance_scale = 5.0
  c.sample.prompts = ("A cat walks on the grass, realistic", "Waves crashing on a rocky shore at sunset")

  c.train.learning_rate = 1e-5
  c.train.warmup_steps = 100
  c.train.steps = 2000
  c.train.ema_decay = 0.0  # an EMA copy would add a full set of weights per device
  c.train.checkpoint_every = 500
  c.train.eval_every = 500
  c.data.dataset = "video_folder"  # your clips (tools/import_videos.py); set data.builder_config
  c.data.num_frames, c.data.height, c.data.width = 81, 480, 832
  c.data.batch_size = 8
  if size == "tiny":
    c.data.num_frames, c.data.height, c.data.width = 5, 32, 32
    c.data.batch_size = 2
    c.text.max_length = 16
    c.sample.num_steps = 4
  else:
    c.dit.dtype = "bfloat16"
    c.dit.remat_policy = "full"
    c.vae.dtype = "bfloat16"
    c.text.dtype = "bfloat16"
    c.mesh.shape = (1, -1, 1, 1)  # FSDP over all devices
  return c
