r"""Train the text-to-video Diffusion Transformer on VAE latents (flow matching, CFG dropout, EMA).

  python tools/train_dit.py --config=configs/dit/demo.py --workdir=runs/demo/dit \
      --config.vae_workdir=runs/demo/vae

1. Latent cache: the trained VAE (--config.vae_workdir) encodes every clip of the train
   and eval splits once, and each caption is tokenized (trainable text encoder) or
   embedded (frozen MiniLM); written as ArrayRecord under <workdir>/latent_cache
   (or --config.data.latent_cache_dir) and reused while it matches.
2. Training: the generic sharded loop (sora_jax.training.loop) over the cache, AdamW with
   warmup, grad clipping, EMA, TensorBoard (loss, grad norm, lr, steps/s, tokens/s),
   eval loss at fixed timesteps on the eval split, GIF grids of config.sample.prompts
   under <workdir>/samples, Orbax checkpoints; re-running resumes from the last one.
   At the end, <workdir>/loss_curve.png (train and eval loss against minutes).

Any config field can be overridden: --config.train.steps=200 --config.dit.depth=2 ...
The recipe itself is sora_jax.recipes.train_dit.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from sora_jax.configuration import run_tool

_CONFIG = config_flags.DEFINE_config_file("config", None, "DiT config file, e.g. configs/dit/demo.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, config.json, TensorBoard, samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from sora_jax.recipes import train_dit
  from sora_jax.sharding import distributed

  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  distributed.initialize(config.distributed)
  if not config.vae_workdir:
    sys.exit("error: --config.vae_workdir is empty: train a VAE first (tools/train_vae.py) and pass its workdir")
  train_dit.train_dit(config, workdir)


if __name__ == "__main__":
  run_tool(main)
