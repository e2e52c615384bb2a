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
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from sora_jax.data import datasets, latent_cache, pipeline
  from sora_jax.diffusion import build_diffusion
  from sora_jax.media import contact_sheet, video_io
  from sora_jax.models import text as text_lib
  from sora_jax.models import vae as vae_lib
  from sora_jax.models.dit import DiT
  from sora_jax.sampling import generate as gen
  from sora_jax.sharding import distributed
  from sora_jax.training import checkpointing, dit_step, loop
  from sora_jax.training.optimizer import make_optimizer

  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  distributed.initialize(config.distributed)
  if not config.vae_workdir:
    sys.exit("error: --config.vae_workdir is empty: train a VAE first (tools/train_vae.py) and pass its workdir")

  # ---- frozen parts: VAE and (maybe) text encoder
  vae_module, vae_params, latent_stats, vae_config = vae_lib.load_vae(config.vae_workdir)
  text_encoder = text_lib.build_text_encoder(config.text)
  text_vars = None if text_encoder.trainable else text_encoder.init_params(jax.random.PRNGKey(config.seed))

  # ---- latent cache
  cache_dir = config.data.latent_cache_dir or os.path.join(workdir, "latent_cache")
  splits = {s: datasets.load_data_source(config.data, s) for s in (config.data.train_split, config.data.eval_split)}
  encode_fn = jax.jit(lambda v: vae_lib.encode_video(vae_module, vae_params, v))
  with checkpointing.Checkpointer(config.vae_workdir) as vae_ckpt:
    vae_step = vae_ckpt.latest_step()
  meta = {
    "vae_workdir": os.path.abspath(config.vae_workdir),
    "vae_step": vae_step,
    "text_encoder": config.text.to_dict(),
    "data": config.data.to_dict(),
  }
  meta["data"].pop("batch_size", None)  # the cache does not depend on these
  meta["data"].pop("latent_cache_dir", None)
  if jax.process_index() == 0:  # one writer; the cache dir must be on storage every host reads
    latent_cache.build_latent_cache(
      cache_dir=cache_dir,
      splits=splits,
      encode_fn=encode_fn,
      text_encoder=text_encoder,
      text_params=text_vars,
      meta=meta,
    )
  multihost_utils.sync_global_devices("latent cache built")
  train_source = latent_cache.LatentCacheSource(cache_dir, config.data.train_split)
  eval_source = latent_cache.LatentCacheSource(cache_dir, config.data.eval_split)
  latent_shape = tuple(train_source[0]["latent_mean"].shape)

  # ---- model, diffusion, steps
  dit = DiT.from_config(config.dit, in_channels=latent_shape[-1], text_dim=text_encoder.output_dim)
  process = build_diffusion(config.diffusion)
  tx = make_optimizer(config.train)
  init_fn = dit_step.make_init_fn(
    dit=dit, text_encoder=text_encoder, latent_shape=latent_shape, tx=tx, ema=config.train.ema_decay > 0
  )
  null_fields = dit_step.null_text_fields(text_encoder, text_vars)
  train_step, _ = dit_step.make_train_step(
    dit=dit,
    text_encoder=text_encoder,
    diffusion=process,
    latent_stats=latent_stats,
    null_fields=null_fields,
    cfg_dropout=config.diffusion.cfg_dropout,
    tx=tx,
    ema_decay=config.train.ema_decay,
  )
  eval_loss = jax.jit(
    dit_step.make_eval_loss(dit=dit, text_encoder=text_encoder, diffusion=process, latent_stats=latent_stats)
  )

  def make_iterator():
    return pipeline.make_iterator(
      train_source,
      batch_size=config.data.batch_size,
      seed=config.seed,
      worker_count=config.data.worker_count,
      prefetch=config.data.prefetch,
    )

  def eval_fn(state, step):
    iterator = pipeline.make_iterator(
      eval_source, batch_size=config.data.batch_size, seed=0, shuffle=False, num_epochs=1, prefetch=0
    )
    totals, n = {}, 0
    params = _sampling_params(state)
    for i, batch in enumerate(iterator):
      if i >= config.train.eval_batches:
        break
      batch = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
      out = jax.device_get(eval_loss(params, batch, jax.random.PRNGKey(i)))
      totals = {k: totals.get(k, 0.0) + float(v) for k, v in out.items()}
      n += 1
    return {k: v / max(n, 1) for k, v in totals.items()}

  models = gen.Models(dit=dit, text_encoder=text_encoder, vae=vae_module, process=process, latent_stats=latent_stats)
  generate = gen.make_generate_fn(
    models, sampler=config.sample.sampler, num_steps=config.sample.num_steps, latent_shape=latent_shape
  )
  prompts = list(config.sample.prompts)

  def sample_fn(state, step, writer):
    params = dict(_sampling_params(state), vae=vae_params)
    fields = gen.text_fields(models, text_vars, prompts)
    null = gen.text_fields(models, text_vars, [config.sample.negative_prompt])
    seeds = np.arange(len(prompts), dtype=np.int32)
    frames = np.asarray(jax.device_get(generate(params, fields, null, seeds, np.float32(config.sample.guidance_scale))))
    if jax.process_index() != 0:
      return
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    contact_sheet.save_contact_sheet(os.path.join(out_dir, f"step_{step:06d}.png"), frames, prompts)
    video_io.write_gif(os.path.join(out_dir, f"step_{step:06d}.gif"), _grid_video(frames), fps=8, scale=2)
    writer.write_images(step, {"samples": contact_sheet.make_grid_image(frames, prompts)})

  tokens = dit_step.num_tokens((1,) + latent_shape, dit.patch_size)
  loop.train(
    config=config,
    workdir=workdir,
    init_fn=init_fn,
    train_step=train_step,
    make_iterator=make_iterator,
    eval_fn=eval_fn,
    sample_fn=sample_fn,
    per_step_counts={"tokens": config.data.batch_size * tokens, "examples": config.data.batch_size},
    desc="train DiT",
  )
  if jax.process_index() == 0:
    from sora_jax.monitoring import plots

    metrics = os.path.join(workdir, "metrics.jsonl")
    keys = [k for k in ("loss", "eval/loss") if any(k in r for r in plots.read_metrics(metrics))]
    if keys:
      curve = plots.plot_curves(metrics, keys, os.path.join(workdir, "loss_curve.png"), x="minutes", smoothing=0.6)
      print(f"loss curve: {curve}")


def _sampling_params(state):
  """EMA params when kept (they sample better), else the raw ones."""
  return state.ema_params if state.ema_params is not None else state.params


def _grid_video(frames):
  """[N, T, H, W, 3] -> one video [T, H, N*W, 3]: the clips side by side, for one GIF."""
  import numpy as np

  return np.concatenate(list(frames), axis=2)


if __name__ == "__main__":
  run_tool(main)
