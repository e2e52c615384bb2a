"""Train a text-to-video DiT run on a trained VAE's latents: what `tools/train_dit.py` runs.

    state = train_dit(config, workdir)     # config.vae_workdir names the trained VAE
                                           # config.init_from: start from these weights (or random)

1. The VAE (`restore.restore_vae(config.vae_workdir)`) encodes every clip of the train and
   eval splits once, and each caption becomes text fields (token ids for a trainable encoder,
   frozen-encoder embeddings otherwise): the latent cache under <workdir>/latent_cache (or
   config.data.latent_cache_dir), reused while it matches.
2. The denoiser (`models.factory.build_denoiser`) starts from `config.init_from` when set (a
   diffusers Wan 2.1 folder read through the Wan weight tables, or a DiT workdir's inference
   params, placed onto the run's mesh shard by shard) and trains on the generic sharded loop
   (`training.loop`): flow matching / DDPM with CFG dropout, AdamW, EMA, eval loss at fixed
   timesteps on the eval split, GIF grids of config.sample.prompts under <workdir>/samples
   (the same compiled sampler the Pipeline uses), Orbax checkpoints; re-running resumes.
3. <workdir>/loss_curve.png: train and eval loss against minutes.

This module sits above `sampling/` (the periodic samples are real sampler output); training
itself (`training/`) never imports the sampler.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from configs import base as base_config
from sora_jax.data import datasets, latent_cache, pipeline
from sora_jax.diffusion import build_diffusion
from sora_jax.media import contact_sheet, video_io
from sora_jax.models import factory
from sora_jax.models import text as text_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models.text import fields
from sora_jax.models.wan import folder as wan_folder
from sora_jax.models.wan.transformer import WanTransformer
from sora_jax.monitoring import plots
from sora_jax.restore import RestoredVAE, restore_params_like, restore_vae
from sora_jax.sampling import generate as gen
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.training import dit_step, loop
from sora_jax.training.optimizer import make_optimizer
from sora_jax.training.train_state import inference_params


def train_dit(config, workdir: str):
  """Trains the DiT of `config` on the latents of the VAE in `config.vae_workdir`; returns the final state.

  Raises:
    ValueError: config.vae_workdir is empty.
  """
  loop.check_train_config(config.train)  # before the VAE restore and the latent cache
  if not config.vae_workdir:
    raise ValueError("--config.vae_workdir is empty: train a VAE first (tools/train_vae.py) and pass its workdir")
  # The periodic samples decode under the run's mesh: the VAE is restored onto that mesh (a full
  # copy on every device), not onto one device, or jit refuses params on devices outside its mesh.
  mesh = mesh_lib.make_mesh(config.mesh)
  vae = restore_vae(config.vae_workdir, mesh=mesh, replicate=True)
  config = relocatable_config(config, workdir)
  text_encoder = text_lib.build_text_encoder(config.text)
  text_params = None if text_encoder.trainable else text_encoder.load_pretrained()

  cache_dir = config.data.latent_cache_dir or os.path.join(workdir, "latent_cache")
  train_source, eval_source = build_latent_cache(config, cache_dir, vae, text_encoder, text_params)
  latent_shape = tuple(train_source[0]["latent_mean"].shape)

  denoiser = factory.build_denoiser(config, latent_shape, text_encoder=text_encoder)
  process = build_diffusion(config.diffusion)
  tx = make_optimizer(config.train)
  train_step, _ = dit_step.make_train_step(
    denoiser=denoiser,
    diffusion=process,
    latent_stats=vae.latent_stats,
    null_fields=fields.null_text_fields(text_encoder, text_params),
    cfg_dropout=config.diffusion.cfg_dropout,
    tx=tx,
    ema_decay=config.train.ema_decay,
    conditioning=config.train.conditioning,
  )
  eval_loss = jax.jit(dit_step.make_eval_loss(denoiser=denoiser, diffusion=process, latent_stats=vae.latent_stats))
  components = gen.Components(denoiser=denoiser, vae=vae.module, process=process, latent_stats=vae.latent_stats)
  batch_size = config.data.batch_size
  state = loop.train(
    config=config,
    workdir=workdir,
    init_fn=dit_step.make_init_fn(denoiser, tx, ema=config.train.ema_decay > 0),
    train_step=train_step,
    make_iterator=lambda: pipeline.make_iterator(
      train_source,
      batch_size=batch_size,
      seed=config.seed,
      worker_count=config.data.worker_count,
      prefetch=config.data.prefetch,
    ),
    eval_fn=lambda state, step: evaluate_loss(eval_loss, inference_params(state), eval_source, config),
    sample_fn=make_sample_fn(
      config, workdir, components, vae, text_params, latent_shape, prompts=sample_prompts(config, eval_source)
    ),
    per_step_counts={"tokens": batch_size * denoiser.num_tokens, "examples": batch_size},
    desc="train DiT",
    pretrained=pretrained_params(config, denoiser),
    mesh=mesh,
  )
  if jax.process_index() == 0:
    plot_loss_curve(workdir)
  return state


def relocatable_config(config, workdir: str):
  """A copy of `config` whose vae_workdir is stored relative to the DiT workdir's parent when it lies
  under it (runs/demo/vae for runs/demo/dit -> "vae"), so a moved or copied run finds its own VAE.
  `restore.resolve_workdirs` reads it back the same way."""
  if not config.vae_workdir or "://" in config.vae_workdir or wan_folder.is_wan_folder(config.vae_workdir):
    return config
  parent = os.path.dirname(os.path.abspath(workdir))
  vae_dir = os.path.abspath(config.vae_workdir)
  if os.path.commonpath([parent, vae_dir]) != parent:
    return config
  config = config.copy_and_resolve_references()
  config.vae_workdir = os.path.relpath(vae_dir, parent)
  return config


# Sizes a diffusers Wan folder's transformer must share with the run's (config.dit + VAE + text encoder).
_WAN_SIZES = ("in_channels", "text_dim", "hidden_size", "depth", "num_heads", "mlp_dim", "patch_size", "qk_norm")


def pretrained_params(config, denoiser: factory.Denoiser):
  """`abstract params -> params` reading `config.init_from` (see `loop.train(pretrained=...)`), or None.

  A diffusers Wan 2.1 folder gives the transformer ("dit"); a DiT workdir gives its inference
  params. Raises ValueError when the folder's transformer is not the configured one.
  """
  path = config.init_from
  if not path:
    return None
  if not wan_folder.is_wan_folder(path):
    return lambda abstract: restore_params_like(path, abstract)
  dit = denoiser.dit
  if not isinstance(dit, WanTransformer):
    raise ValueError(
      f"config.init_from={path!r} is a Wan 2.1 folder but config.dit.architecture={config.dit.architecture!r}: "
      f"fine-tune it with --config=configs/dit/wan21.py:<size>"
    )
  theirs = WanTransformer.from_diffusers_config(wan_folder.read_config(f"{path}/transformer"))
  different = {k: (getattr(dit, k), getattr(theirs, k)) for k in _WAN_SIZES if getattr(dit, k) != getattr(theirs, k)}
  if different:
    listed = ", ".join(f"{k}: config {a!r}, folder {b!r}" for k, (a, b) in different.items())
    raise ValueError(f"the transformer in {path} is not the configured one ({listed}); pick the matching size")

  def load(abstract):
    if set(abstract) != {"dit"}:
      raise ValueError(f"{path} holds the transformer only, the run trains {sorted(abstract)}")
    return {"dit": wan_folder.load_transformer_params(path, dit, abstract["dit"])}

  return load


def build_latent_cache(config, cache_dir: str, vae: RestoredVAE, text_encoder, text_params):
  """(train source, eval source) of the latent cache in `cache_dir`, built by process 0 if it does not match.

  The cache directory must be on storage every host reads.
  """
  splits = {s: datasets.load_data_source(config.data, s) for s in (config.data.train_split, config.data.eval_split)}
  if jax.process_index() == 0:
    # Process 0 encodes alone: with a copy of the (replicated) VAE params on one of its own
    # devices, so the encoder neither runs on every device nor waits for the other processes.
    local_params = jax.tree.map(lambda a: a.addressable_data(0), vae.params)
    latent_cache.build_latent_cache(
      cache_dir=cache_dir,
      splits=splits,
      encode_fn=jax.jit(lambda v: vae_lib.encode_video(vae.module, local_params, v)),
      text_encoder=text_encoder,
      text_params=text_params,
      meta=latent_cache.cache_meta(config, config.vae_workdir, vae.step),
    )
  multihost_utils.sync_global_devices("latent cache built")
  return tuple(latent_cache.LatentCacheSource(cache_dir, s) for s in (config.data.train_split, config.data.eval_split))


def evaluate_loss(eval_loss, params, eval_source, config) -> dict[str, float]:
  """Mean of `eval_loss(params, batch, rng)` over the first config.train.eval_batches batches of the eval split."""
  iterator = pipeline.make_iterator(
    eval_source, batch_size=config.data.batch_size, seed=0, shuffle=False, num_epochs=1, prefetch=0
  )
  totals, n = {}, 0
  for i, batch in enumerate(iterator):
    if i >= config.train.eval_batches:
      break
    batch = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
    out = jax.device_get(eval_loss(params, batch, jax.random.PRNGKey(i)))
    totals = {k: totals.get(k, 0.0) + float(v) for k, v in out.items()}
    n += 1
  return {k: v / max(n, 1) for k, v in totals.items()}


def sample_prompts(config, eval_source) -> list[str]:
  """The prompts of the periodic samples: config.sample.prompts, except that a run on an imported
  dataset (data.dataset != "shapes") that left them at the shapes defaults samples captions of
  its own eval split instead (as many distinct ones as there are default prompts)."""
  prompts = list(config.sample.prompts)
  if config.data.dataset == "shapes" or tuple(prompts) != tuple(base_config.get_config().sample.prompts):
    return prompts
  own: list[str] = []
  for i in range(len(eval_source)):
    caption = eval_source[i]["caption"]
    caption = caption.decode() if isinstance(caption, bytes) else str(caption)
    if caption and caption not in own:
      own.append(caption)
    if len(own) == len(prompts):
      break
  return own or prompts


def make_sample_fn(
  config,
  workdir: str,
  components: gen.Components,
  vae: RestoredVAE,
  text_params,
  latent_shape,
  prompts: list[str] | None = None,
):
  """`sample_fn(state, step, writer)` for the loop: `prompts` (default config.sample.prompts) through the
  compiled sampler, written as <workdir>/samples/step_<step>.png (contact sheet) and .gif (the clips side
  by side)."""
  generate = gen.make_generate_fn(
    components, sampler=config.sample.sampler, num_steps=config.sample.num_steps, latent_shape=latent_shape
  )
  prompts = list(config.sample.prompts) if prompts is None else list(prompts)
  text_encoder = components.denoiser.text_encoder

  def sample_fn(state: Any, step: int, writer) -> None:
    params = dict(inference_params(state), vae=vae.params)
    prompt_fields = fields.text_fields(text_encoder, text_params, prompts)
    null = fields.text_fields(text_encoder, text_params, [config.sample.negative_prompt])
    seeds = np.arange(len(prompts), dtype=np.int32)
    guidance = np.float32(config.sample.guidance_scale)
    frames = np.asarray(jax.device_get(generate(params, prompt_fields, null, seeds, guidance)))
    if jax.process_index() != 0:
      return
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    contact_sheet.save_contact_sheet(os.path.join(out_dir, f"step_{step:06d}.png"), frames, prompts)
    side_by_side = np.concatenate(list(frames), axis=2)  # [N, T, H, W, 3] -> [T, H, N*W, 3]
    video_io.write_gif(os.path.join(out_dir, f"step_{step:06d}.gif"), side_by_side, fps=8, scale=2)
    writer.write_images(step, {"samples": contact_sheet.make_grid_image(frames, prompts)})

  return sample_fn


def plot_loss_curve(workdir: str) -> None:
  """<workdir>/loss_curve.png: train and eval loss against minutes (printed)."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  keys = [k for k in ("loss", "eval/loss") if any(k in r for r in plots.read_metrics(metrics))]
  if keys:
    curve = plots.plot_curves(metrics, keys, os.path.join(workdir, "loss_curve.png"), x="minutes", smoothing=0.6)
    print(f"loss curve: {curve}")
