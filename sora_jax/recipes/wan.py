"""Diffusers Wan 2.1 folders in and out of sora_jax workdirs: what `tools/convert_wan.py` and
`tools/export_wan.py` run.

    convert(folder, workdir)          # a DiT workdir holding the folder's transformer (Orbax)
    export(workdir, out_dir)          # a diffusers folder holding a run's transformer

Sampling and fine-tuning read a folder directly (`Pipeline.from_pretrained(folder)`,
`--config.init_from=folder`), converting through the weight tables as they load. `convert` does
that once and stores the result as a sora_jax DiT workdir: config.json (configs/dit/wan21.py
with the folder's sizes; the VAE and umT5 keep reading the folder) and an Orbax checkpoint of
the transformer's params at step 0, which restores onto any mesh shard by shard (multi-host
included) without reading safetensors on every host. Read it with `Pipeline.from_pretrained`,
`tools/sample.py`, or start a fine-tune from it with `--config.init_from`; it holds no optimizer
state, so train into a new workdir rather than resuming it.

`export` writes a run's transformer (EMA params when kept) back in diffusers' layout, with the
other components copied from the folder it started from, so `WanPipeline.from_pretrained` loads
the fine-tune.
"""

from __future__ import annotations

import os

import jax

from sora_jax import restore
from sora_jax.models import factory
from sora_jax.models import vae as vae_lib
from sora_jax.models.wan import folder as wan_folder
from sora_jax.models.wan.transformer import WanTransformer
from sora_jax.recipes.train_dit import pretrained_params
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning
from sora_jax.training import checkpointing


def convert(folder: str, workdir: str, *, dtype: str = "float32", mesh: jax.sharding.Mesh | None = None) -> str:
  """Writes the Wan 2.1 folder's transformer as a sora_jax DiT workdir; returns the checkpoint's path.

  Args:
    folder: a diffusers Wan 2.1 T2V folder.
    workdir: a new (or empty) directory.
    dtype: "float32" (exact) or "bfloat16" (half the disk; also the workdir's compute dtype).
    mesh: where the weights pass through (default: all devices, FSDP).
  Raises:
    FileExistsError: the workdir already holds a run.
  """
  if os.path.exists(os.path.join(workdir, checkpointing.CONFIG_FILENAME)):
    raise FileExistsError(f"{workdir} already holds a run; convert into a new directory (nothing is overwritten)")
  config = restore.wan_folder_config(folder, dtype)
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
  data = config.data
  denoiser = factory.build_denoiser(config, vae_lib.latent_shape(config.vae, data.num_frames, data.height, data.width))
  rules = partitioning.logical_rules(config)
  abstract, _ = partitioning.abstract_state(denoiser.init, mesh, rules, jax.random.key(0))
  params = pretrained_params(config, denoiser)(abstract)
  with checkpointing.Checkpointer(workdir) as ckpt:
    ckpt.save(0, {"params": params, "step": jax.numpy.zeros((), jax.numpy.int32)}, config=config, force=True)
  return str(ckpt.step_dir(0))


def export(workdir: str, out_dir: str, *, base_folder: str = "", dtype: str = "float32", use_ema: bool = True) -> str:
  """Writes the transformer of the Wan-architecture run in `workdir` as a diffusers Wan 2.1 folder.

  Args:
    workdir: a DiT run of configs/dit/wan21.py (or a converted folder).
    out_dir: a new (or empty) directory.
    base_folder: the Wan folder whose VAE, text encoder, tokenizer and scheduler go with it
      (default: the run's config.init_from).
    dtype: "float32" or "bfloat16" weights on disk.
    use_ema: the run's EMA params when it kept them.
  """
  restored = restore.restore_text_to_video(workdir, use_ema=use_ema)
  dit = restored.denoiser.dit
  if not isinstance(dit, WanTransformer):
    raise ValueError(
      f"{workdir} trains dit.architecture={restored.config.dit.architecture!r}; only Wan-architecture runs "
      f"(configs/dit/wan21.py) export to diffusers' WanTransformer3DModel"
    )
  base = base_folder or restored.config.init_from
  if not base or not wan_folder.is_wan_folder(base):
    raise ValueError(
      f"the other components of the export come from a Wan 2.1 folder: pass --base=FOLDER (the run's init_from "
      f"is {restored.config.init_from!r})"
    )
  weights_dtype = jax.numpy.dtype(dtype)
  return wan_folder.export_pipeline(out_dir, dit, restored.params["dit"], base_folder=base, dtype=weights_dtype)
