"""Train (or evaluate) a VAE run: what `tools/train_vae.py` runs.

    state = train_vae(config, workdir)                    # resumes from <workdir>'s last checkpoint
    result = evaluate_and_report(workdir, "test", 64)     # PSNR / SSIM -> <workdir>/eval_test.json

The workdir gets Orbax checkpoints, config.json, TensorBoard events + metrics.jsonl,
reconstruction sheets under samples/, latent_stats.json (per-channel latent mean/std the DiT
normalises with), eval_<split>.json and psnr_curve.png.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from sora_jax.data import pipeline
from sora_jax.evaluation import vae_eval
from sora_jax.media import contact_sheet
from sora_jax.media.convert import to_uint8
from sora_jax.models import vae as vae_lib
from sora_jax.monitoring import plots
from sora_jax.training import checkpointing, loop, vae_step
from sora_jax.training.optimizer import make_optimizer
from sora_jax.training.train_state import inference_params

log = logging.getLogger(__name__)


def train_vae(config, workdir: str, *, eval_split: str, eval_clips: int, num_reconstructions: int = 4):
  """Trains the VAE of `config` in `workdir`, then computes latent statistics and evaluates on `eval_split`.

  Args:
    config: a full VAE config (configs/vae/*.py).
    workdir: the run directory; an existing run there is resumed.
    eval_split, eval_clips: the held-out split and how many of its clips the final PSNR/SSIM scores.
    num_reconstructions: clips in each reconstruction sheet.
  Returns:
    The final TrainState.
  """
  loop.check_train_config(config.train)  # before the dataset is built
  data = config.data
  vae_lib.check_video_shape((1, data.num_frames, data.height, data.width, 3), config.vae)
  vae = vae_lib.CausalVAE(config.vae)
  discriminator = vae_step.make_discriminator(config)
  tx = make_optimizer(config.train)
  ema = config.train.ema_decay > 0
  init_fn = vae_step.make_init_fn(vae, tx, (1, data.num_frames, data.height, data.width, 3), discriminator, ema=ema)
  train_step = vae_step.make_train_step(vae, tx, config.vae_loss, discriminator, config.train.ema_decay)
  reconstruct = jax.jit(vae_step.make_reconstruct_fn(vae))

  def eval_fn(state, step):
    iterator = pipeline.make_eval_iterator(data, seed=0)
    try:
      params = vae_params(state)
      return vae_eval.evaluate_reconstructions(lambda v: reconstruct(params, v), iterator, config.train.eval_batches)
    finally:
      iterator.close()

  def sample_fn(state, step, writer):
    write_reconstructions(workdir, step, writer, config, reconstruct, vae_params(state), num_reconstructions)

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
  stats_path = os.path.join(workdir, vae_lib.LATENT_STATS_FILE)
  if not os.path.exists(stats_path) or os.path.getmtime(stats_path) < _newest_checkpoint_time(workdir):
    stats = compute_latent_stats(vae, jax.device_get(vae_params(state)), config)
    if jax.process_index() == 0:
      vae_lib.save_latent_stats(
        workdir, stats, num_batches=config.vae_loss.latent_stats_batches, split=data.train_split
      )
      mean, std = np.round(stats["mean"], 3), np.round(stats["std"], 3)
      log.info("latent stats: mean %s std %s -> %s", mean, std, stats_path)
  evaluate_and_report(workdir, eval_split, eval_clips)
  if jax.process_index() == 0:
    plot_psnr_curve(workdir)
  return state


def vae_params(state):
  """The VAE params of a VAE TrainState to evaluate and encode with (EMA when kept)."""
  return inference_params(state)["vae"]


def write_reconstructions(workdir, step, writer, config, reconstruct, params, num_clips: int) -> None:
  """<workdir>/samples/recon_<step>.png: `num_clips` eval clips (top) above their reconstructions."""
  iterator = pipeline.make_eval_iterator(config.data, seed=0)
  try:
    video = np.asarray(next(iterator)["video"])
  finally:
    iterator.close()
  recon = reconstruct(params, video)  # the whole batch: it divides the mesh
  originals, recons = (np.asarray(jax.device_get(to_uint8(v)))[:num_clips] for v in (video, recon))
  if jax.process_index() == 0:
    contact_sheet.save_comparison_sheet(os.path.join(workdir, "samples", f"recon_{step:06d}.png"), originals, recons)
    writer.write_images(step, {"reconstructions": contact_sheet.make_comparison_image(originals, recons)})


def evaluate_and_report(workdir: str, split: str, num_clips: int) -> dict:
  """Evaluates the workdir's latest checkpoint, prints and writes <workdir>/eval_<split>.json."""
  result = vae_eval.evaluate_vae(workdir, split=split, num_clips=num_clips)
  if jax.process_index() == 0:
    path = vae_eval.write_json(os.path.join(workdir, f"eval_{split}.json"), result)
    print(
      f"VAE on {split} ({result['num_clips']} clips, step {result['step']}): PSNR {result['psnr']:.2f} dB, "
      f"SSIM {result['ssim']:.4f}  -> {path}",
      flush=True,
    )
  return result


def compute_latent_stats(vae, params, config) -> dict:
  """Per-channel mean/std of posterior means over config.vae_loss.latent_stats_batches train batches."""
  encode = jax.jit(lambda v: vae_lib.encode_video(vae, params, v)[0])
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


def plot_psnr_curve(workdir: str) -> None:
  """<workdir>/psnr_curve.png: train and eval PSNR against wall-clock minutes."""
  path = os.path.join(workdir, "metrics.jsonl")
  records = plots.read_metrics(path) if os.path.exists(path) else []
  keys = [k for k in ("psnr", "eval/psnr") if any(k in r for r in records)]
  if keys:
    title = "VAE reconstruction PSNR (dB) vs training minutes"
    out = plots.plot_curves(path, keys, os.path.join(workdir, "psnr_curve.png"), x="minutes", title=title)
    log.info("PSNR curve -> %s", out)


def _newest_checkpoint_time(workdir: str) -> float:
  root = os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR)
  times = [os.path.getmtime(os.path.join(root, d)) for d in os.listdir(root)] if os.path.isdir(root) else []
  return max(times, default=0.0)
