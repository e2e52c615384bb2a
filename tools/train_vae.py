r"""Train (or evaluate) the causal 3D VAE: video <-> latents smaller in time and space.

  python tools/train_vae.py --config=configs/vae/demo.py --workdir=runs/demo/vae
  python tools/train_vae.py --config=configs/vae/demo.py --workdir=runs/demo/vae --eval_only

Training: the shapes dataset (or your imported videos, config.data), L1/L2 + KL loss (+ an
optional hinge GAN with a 3D patch discriminator after vae_loss.gan_start_step), AdamW with
warmup + cosine decay and gradient clipping, on the sharded loop of sora_jax.training.loop.
The workdir gets: Orbax checkpoints (resumed automatically when you re-run the command),
config.json, TensorBoard events + metrics.jsonl (loss terms, PSNR, grad norm, steps/s),
reconstruction sheets under samples/ (originals above reconstructions), and after training
latent_stats.json: per-channel latent mean/std the DiT uses to normalise latents, and
psnr_curve.png (PSNR vs minutes).

--eval_only: PSNR/SSIM of the latest checkpoint on --eval_split, printed and written to
<workdir>/eval_<split>.json (also written after training).

Any config field can be overridden: --config.train.steps=200 --config.vae.base_channels=16 ...
The recipe itself is sora_jax.recipes.train_vae.
"""

import os

from absl import flags
from ml_collections import config_flags

from sora_jax.configuration import run_tool

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "VAE config file, e.g. configs/vae/demo.py (CPU demo) or configs/vae/wan.py (4x8x8, 16 ch)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, config.json, TensorBoard, samples.")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "Only evaluate the latest checkpoint in --workdir.")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "test", "Held-out split for the final PSNR/SSIM.")
_EVAL_CLIPS = flags.DEFINE_integer("eval_clips", 64, "Clips of --eval_split for the final PSNR/SSIM (0 = all).")
_NUM_RECON = flags.DEFINE_integer("num_reconstructions", 4, "Clips in each reconstruction sheet.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from sora_jax.recipes import train_vae
  from sora_jax.sharding import distributed

  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  distributed.initialize(config.distributed)
  if _EVAL_ONLY.value:
    train_vae.evaluate_and_report(workdir, _EVAL_SPLIT.value, _EVAL_CLIPS.value)
    return
  train_vae.train_vae(
    config, workdir, eval_split=_EVAL_SPLIT.value, eval_clips=_EVAL_CLIPS.value, num_reconstructions=_NUM_RECON.value
  )


if __name__ == "__main__":
  run_tool(main)
