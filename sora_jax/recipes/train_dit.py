"""Train a text-to-video DiT run on a trained VAE's latents: what `tools/train_dit.py` runs.

    state = train_dit(config, workdir)     # config.vae_workdir names the trained VAE
                                           # config.init_from: start from these weights (or random)

1. The VAE (`restore.restore_vae(config.vae_workdir)`) encodes every clip of the train and
   eval splits once (per size of config.data.buckets with data.batching="buckets": `dit_data`),
   and each caption becomes text fields (token ids for a trainable encoder, frozen-encoder
   embeddings otherwise): the latent cache under <workdir>/latent_cache (or
   config.data.latent_cache_dir), reused while it matches.
2. The denoiser (`models.factory.build_denoiser`) starts from `config.init_from` when set (a
   diffusers Wan 2.1 folder read through the Wan weight tables, or a DiT workdir's inference
   params, placed onto the run's mesh shard by shard) and trains on the generic sharded loop
   (`training.loop`): flow matching / DDPM with CFG dropout, AdamW, EMA, eval loss at fixed
   timesteps on the eval split, GIF grids of config.sample.prompts under <workdir>/samples
   (the same compiled sampler the Pipeline uses), Orbax checkpoints; re-running resumes.
3. <workdir>/loss_curve.png: train and eval loss against minutes.

With config.lora.rank > 0 the run trains LoRA adapters only (`models/lora.py`): the base is
config.init_from (frozen, read onto the mesh once, passed to every step, never checkpointed);
the state, checkpoints and EMA hold the adapters; <workdir>/lora/pytorch_lora_weights.safetensors
is the result in the PEFT/diffusers format. `Pipeline.from_pretrained(workdir)` restores base + adapters.

This module sits above `sampling/` (the periodic samples are real sampler output); training
itself (`training/`) never imports the sampler.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from configs import base as base_config
from sora_jax.diffusion import build_diffusion
from sora_jax.media import contact_sheet, video_io
from sora_jax.models import factory, lora_format
from sora_jax.models import lora as lora_lib
from sora_jax.models import text as text_lib
from sora_jax.models.text import fields
from sora_jax.models.wan import folder as wan_folder
from sora_jax.models.wan.transformer import WanTransformer
from sora_jax.monitoring import plots
from sora_jax.recipes import dit_data
from sora_jax.restore import RestoredVAE, resolve_workdirs, restore_params_like, restore_vae
from sora_jax.sampling import generate as gen
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning
from sora_jax.training import checkpointing, dit_step, loop
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

  data = dit_data.build_dit_data(config, dit_data.cache_dir_of(config, workdir), vae, text_encoder, text_params)
  latent_shape = data.latent_shape

  denoiser = factory.build_denoiser(config, latent_shape, text_encoder=text_encoder)
  process = build_diffusion(config.diffusion)
  tx = make_optimizer(config.train)
  step_args = dict(
    diffusion=process,
    latent_stats=vae.latent_stats,
    null_fields=fields.null_text_fields(text_encoder, text_params),
    cfg_dropout=config.diffusion.cfg_dropout,
    tx=tx,
    ema_decay=config.train.ema_decay,
    conditioning=config.train.conditioning,
  )
  ema = config.train.ema_decay > 0
  frozen, pretrained = None, pretrained_params(config, denoiser)
  if lora_lib.enabled(config):  # train adapters only; the base (config.init_from) is frozen, read once
    frozen, pretrained = lora_base_params(config, denoiser, mesh), None
    denoiser = dataclasses.replace(
      denoiser, dit=lora_lib.LoraModel(denoiser.dit, lora_lib.LoraSpec.from_config(config.lora))
    )
    train_step = dit_step.make_lora_train_step(denoiser=denoiser, **step_args)
    init_fn = dit_step.make_lora_init_fn(denoiser, tx, ema=ema)
  else:
    train_step, _ = dit_step.make_train_step(denoiser=denoiser, **step_args)
    init_fn = dit_step.make_init_fn(denoiser, tx, ema=ema)
  eval_loss = jax.jit(dit_step.make_eval_loss(denoiser=denoiser, diffusion=process, latent_stats=vae.latent_stats))
  components = gen.Components(denoiser=denoiser, vae=vae.module, process=process, latent_stats=vae.latent_stats)
  state = loop.train(
    config=config,
    workdir=workdir,
    init_fn=init_fn,
    train_step=train_step,
    make_iterator=lambda: data.make_train_iterator(config.seed),
    eval_fn=lambda state, step: dit_data.evaluate_loss(
      eval_loss, with_frozen(state, frozen), data, config.train.eval_batches
    ),
    sample_fn=make_sample_fn(
      config, workdir, components, vae, text_params, latent_shape, frozen=frozen, prompts=sample_prompts(config, data)
    ),
    per_step_counts=data.mean_counts(),
    desc="train DiT (LoRA)" if frozen is not None else "train DiT",
    pretrained=pretrained,
    mesh=mesh,
    frozen=frozen,
  )
  if jax.process_index() == 0:
    if frozen is not None:  # the adapters as a PEFT/diffusers LoRA file too (Pipeline.load_lora, diffusers)
      adapters = jax.device_get(inference_params(state)["dit"])
      spec = denoiser.dit.spec
      path = lora_format.save_lora(os.path.join(workdir, "lora"), adapters, rank=spec.rank, alpha=spec.alpha)
      print(f"LoRA ({lora_lib.count(adapters)} parameters): {path}")
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


def lora_base_params(config, denoiser: factory.Denoiser, mesh) -> dict[str, Any]:
  """The frozen base of a LoRA run: `config.init_from`'s params ({"dit", "text"?}) placed on `mesh` by the
  run's logical rules. Raises ValueError when init_from is empty or is itself a LoRA run."""
  path = config.init_from
  if not path:
    raise ValueError(
      f"lora.rank={config.lora.rank} trains adapters on a pretrained model: set --config.init_from to a DiT "
      f"workdir (e.g. runs/demo) or a diffusers Wan 2.1 folder"
    )
  if not wan_folder.is_wan_folder(path) and lora_lib.enabled(
    checkpointing.load_config_from_workdir(resolve_workdirs(path)[0])
  ):
    raise ValueError(
      f"config.init_from={path!r} is a LoRA run itself: start from its base ({path}/config.json init_from)"
    )
  dtype = config.lora.base_dtype
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"lora.base_dtype={dtype!r} is not one of float32, bfloat16")
  rules = partitioning.logical_rules(config)
  abstract, _ = partitioning.abstract_state(denoiser.init, mesh, rules, jax.random.key(0))
  params = pretrained_params(config, denoiser)(abstract)
  return params if dtype == "float32" else jax.tree.map(lambda x: x.astype(dtype), params)


def with_frozen(state, frozen) -> Any:
  """The params a state samples / evaluates with: its inference params, plus a LoRA run's frozen base."""
  params = inference_params(state)
  return params if frozen is None else lora_lib.merge_trees(frozen, params)


def sample_prompts(config, data: dit_data.DiTData) -> list[str]:
  """The prompts of the periodic samples: config.sample.prompts, except that a run on an imported
  dataset (data.dataset != "shapes") that left them at the shapes defaults samples captions of
  its own eval split instead (as many distinct ones as there are default prompts, from every bucket)."""
  prompts = list(config.sample.prompts)
  if config.data.dataset == "shapes" or tuple(prompts) != tuple(base_config.get_config().sample.prompts):
    return prompts
  own: list[str] = []
  eval_sources = list(data.eval.values())
  for i in range(max((len(source) for source in eval_sources), default=0)):
    source = eval_sources[i % len(eval_sources)]
    if i >= len(source):
      continue
    caption = source[i]["caption"]
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
  frozen=None,
  prompts: list[str] | None = None,
):
  """`sample_fn(state, step, writer)` for the loop: `prompts` (default config.sample.prompts) through the
  compiled sampler, written as <workdir>/samples/step_<step>.png (contact sheet) and .gif (the clips side
  by side); a LoRA run samples its adapters on the `frozen` base."""
  generate = gen.make_generate_fn(
    components, sampler=config.sample.sampler, num_steps=config.sample.num_steps, latent_shape=latent_shape
  )
  prompts = list(config.sample.prompts) if prompts is None else list(prompts)
  text_encoder = components.denoiser.text_encoder

  def sample_fn(state: Any, step: int, writer) -> None:
    params = dict(with_frozen(state, frozen), vae=vae.params)
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
