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
"""

import os

from absl import flags, logging
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


def evaluate_and_report(workdir: str, split: str, num_clips: int) -> dict:
  """Evaluates the workdir's latest checkpoint, prints and writes <workdir>/eval_<split>.json."""
  import jax

  from sora_jax.evaluation import vae_eval

  result = vae_eval.evaluate_vae(workdir, split=split, num_clips=num_clips)
  if jax.process_index() == 0:
    path = vae_eval.write_json(os.path.join(workdir, f"eval_{split}.json"), result)
    print(
      f"VAE on {split} ({result['num_clips']} clips, step {result['step']}): PSNR {result['psnr']:.2f} dB, "
      f"SSIM {result['ssim']:.4f}  -> {path}",
      flush=True,
    )
  return result


def main(argv):
  del argv
  import jax
  import numpy as np

  from sora_jax.data import pipeline
  from sora_jax.evaluation import vae_eval
  from sora_jax.media import contact_sheet
  from sora_jax.models import vae as vae_lib
  from sora_jax.sharding import distributed
  from sora_jax.training import loop, vae_step
  from sora_jax.training.optimizer import make_optimizer

  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  distributed.initialize(config.distributed)
  if _EVAL_ONLY.value:
    evaluate_and_report(workdir, _EVAL_SPLIT.value, _EVAL_CLIPS.value)
    return

  data = config.data
  vae_lib.check_video_shape((1, data.num_frames, data.height, data.width, 3), config.vae)
  vae = vae_lib.CausalVAE(config.vae)
  discriminator = vae_step.make_discriminator(config)
  tx = make_optimizer(config.train)
  ema = config.train.ema_decay > 0
  init_fn = vae_step.make_init_fn(vae, tx, (1, data.num_frames, data.height, data.width, 3), discriminator, ema=ema)
  train_step = vae_step.make_train_step(vae, tx, config.vae_loss, discriminator, config.train.ema_decay)
  reconstruct = jax.jit(vae_step.make_reconstruct_fn(vae))

  def eval_batches():
    return pipeline.make_eval_iterator(data, seed=0)

  def eval_fn(state, step):
    iterator = eval_batches()
    try:
      params = vae_step.inference_params(state)
      return vae_eval.evaluate_reconstructions(lambda v: reconstruct(params, v), iterator, config.train.eval_batches)
    finally:
      iterator.close()

  def sample_fn(state, step, writer):
    iterator = eval_batches()
    try:
      video = np.asarray(next(iterator)["video"])
    finally:
      iterator.close()
    recon = reconstruct(vae_step.inference_params(state), video)  # the whole batch: it divides the mesh
    originals, recons = (np.asarray(jax.device_get(vae_eval.to_uint8(v)))[: _NUM_RECON.value] for v in (video, recon))
    if jax.process_index() == 0:
      contact_sheet.save_comparison_sheet(os.path.join(workdir, "samples", f"recon_{step:06d}.png"), originals, recons)
      writer.write_images(step, {"reconstructions": contact_sheet.make_comparison_image(originals, recons)})

  state = loop.train(
    config=config,
    workdir=workdir,
    init_fn=init_fn,
    train_step=train_step,
    make_iterator=lambda: pipeline.make_train_iterator(data, seed=config.seed),
    eval_fn=eval_fn,
    sample_fn=sample_fn,
    per_step_counts={"examples": data.batch_size},
    desc="train VAE",
  )

  vae_params = jax.device_get(vae_step.inference_params(state))
  stats_path = os.path.join(workdir, vae_lib.LATENT_STATS_FILE)
  if not os.path.exists(stats_path) or os.path.getmtime(stats_path) < _newest_checkpoint_time(workdir):
    stats = compute_latent_stats(vae, vae_params, config)
    if jax.process_index() == 0:
      vae_lib.save_latent_stats(
        workdir, stats, num_batches=config.vae_loss.latent_stats_batches, split=data.train_split
      )
      logging.info(
        "latent stats: mean %s std %s -> %s", np.round(stats["mean"], 3), np.round(stats["std"], 3), stats_path
      )
  evaluate_and_report(workdir, _EVAL_SPLIT.value, _EVAL_CLIPS.value)
  if jax.process_index() == 0:
    _plot_psnr_curve(workdir)


def _plot_psnr_curve(workdir: str) -> None:
  """<workdir>/psnr_curve.png: train and eval PSNR against wall-clock minutes."""
  from sora_jax.monitoring import plots

  path = os.path.join(workdir, "metrics.jsonl")
  records = plots.read_metrics(path) if os.path.exists(path) else []
  keys = [k for k in ("psnr", "eval/psnr") if any(k in r for r in records)]
  if keys:
    out = plots.plot_curves(
      path,
      keys,
      os.path.join(workdir, "psnr_curve.png"),
      x="minutes",
      title="VAE reconstruction PSNR (dB) vs training minutes",
    )
    logging.info("PSNR curve -> %s", out)


def compute_latent_stats(vae, vae_params, config) -> dict:
  """Per-channel mean/std of posterior means over config.vae_loss.latent_stats_batches train batches."""
  import jax

  from sora_jax.data import pipeline
  from sora_jax.models import vae as vae_lib

  encode = jax.jit(lambda v: vae_lib.encode_video(vae, vae_params, v)[0])
  iterator = pipeline.make_video_iterator(config.data, config.data.train_split, seed=config.seed + 7, train=False)
  latents = []
  try:
    for i, batch in enumerate(iterator):
      if i >= config.vae_loss.latent_stats_batches:
        break
      latents.append(jax.device_get(encode(batch["video"])))
  finally:
    iterator.close()
  return vae_lib.latent_channel_stats(latents)


def _newest_checkpoint_time(workdir: str) -> float:
  from sora_jax.training import checkpointing

  root = os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR)
  times = [os.path.getmtime(os.path.join(root, d)) for d in os.listdir(root)] if os.path.isdir(root) else []
  return max(times, default=0.0)


if __name__ == "__main__":
  run_tool(main)
