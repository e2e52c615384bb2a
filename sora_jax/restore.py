"""Trained runs for inference: a path -> modules, inference parameters, latent statistics, configs.

    vae = restore_vae("runs/demo/vae", mesh=mesh)           # RestoredVAE: module, params, latent_stats, config
    t2v = restore_text_to_video("runs/demo", mesh=mesh)      # RestoredTextToVideo: DiT + text encoder + VAE

Only the parameters inference needs are read from the Orbax checkpoint: the EMA params when
the run kept them (else the raw ones), never the optimizer state or the other copy. The
restore target is `jax.eval_shape` of the module's own init (`models.factory` for the DiT),
with shardings from the run's logical axis rules on the caller's mesh (one device by
default), so arrays are read straight onto the devices that hold them.

What a path may hold is looked up in `TEXT_TO_VIDEO_FORMATS` (format name -> how to recognise
it, how to restore it): a sora_jax training workdir (make demo's `runs/demo` with `dit/` and
`vae/`, or a DiT workdir whose config names its VAE workdir), or a diffusers-format Wan 2.1
folder (model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/), read
from its safetensors through the Wan weight tables (`models/wan/`) and described by a config
built from `configs/dit/wan21.py` and the folder's own config files. `restore_vae` takes
such a folder too (its vae/), so a DiT run can train on the Wan VAE's latents.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sora_jax.diffusion import build_diffusion
from sora_jax.errors import InputError, RunNotFoundError
from sora_jax.models import factory
from sora_jax.models import vae as vae_lib
from sora_jax.models.wan import folder as wan_folder
from sora_jax.models.wan import vae as wan_vae
from sora_jax.models.wan.transformer import WanTransformer
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning
from sora_jax.training import checkpointing
from sora_jax.training.train_state import inference_params_key


@dataclasses.dataclass(frozen=True, eq=False)
class RestoredVAE:
  """A trained VAE, ready to encode and decode.

  Attributes:
    module: the `CausalVAE` (`vae_lib.encode_video(module, params, video)`, `decode_latents`).
    params: its inference params (EMA when kept), jax.Arrays on the mesh.
    latent_stats: {"mean", "std"} float32 [C], the per-channel latent statistics.
    config: the VAE run's full config.
    workdir: the VAE workdir.
    step: the checkpoint step restored.
  """

  module: vae_lib.CausalVAE
  params: Any
  latent_stats: dict[str, np.ndarray]
  config: ml_collections.ConfigDict
  workdir: str
  step: int


@dataclasses.dataclass(frozen=True, eq=False)
class RestoredTextToVideo:
  """A trained text-to-video system: denoiser (DiT + text encoder), diffusion process, VAE.

  Attributes:
    denoiser: `factory.Denoiser` (the DiT module, its text encoder, the trained latent shape).
    process: the diffusion process of config.diffusion (FlowMatching or DDPM).
    params: {"dit": ..., "text": ... (trainable encoder only)}, the inference params (EMA by
      default), sharded onto the mesh by the run's logical axis rules.
    text_params: a frozen encoder's pretrained params (unboxed, replicated), or None.
    vae: the `RestoredVAE` the DiT was trained on (params replicated on the mesh).
    config: the DiT run's full config.
    workdir: the DiT workdir.
    step: the DiT checkpoint step restored.
    mesh: the mesh everything is placed on.
    lora: for a LoRA run, (adapters, scale): its trained adapters ({"dit": lora_A / lora_B tree}) and
      their scale alpha / rank; `params` are then the base's (config.init_from) and `denoiser` the
      base model. None otherwise.
  """

  denoiser: factory.Denoiser
  process: Any
  params: dict[str, Any]
  text_params: Any
  vae: RestoredVAE
  config: ml_collections.ConfigDict
  workdir: str
  step: int
  mesh: jax.sharding.Mesh
  lora: Any = None


def single_device_mesh() -> jax.sharding.Mesh:
  """The default mesh of a restore: the first device alone."""
  return mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])


def _restore_params(
  workdir: str, config, init_fn: Callable[[jax.Array], Any], *, mesh, step, use_ema: bool, replicate: bool
) -> tuple[dict[str, Any], int]:
  """Reads `state.<ema_params|params>.<subtree>` for each subtree of `init_fn`'s from the workdir's checkpoint.

  `init_fn(rng)` returns {subtree: logically boxed params}: its eval_shape is the target, sharded
  by the run's logical rules on `mesh` (or replicated on it with `replicate`).
  """
  rules = partitioning.logical_rules(config)
  abstract, _ = partitioning.abstract_state(init_fn, mesh, rules, jax.random.key(0))
  if replicate:
    everywhere = partitioning.replicated(mesh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=everywhere), abstract)
  key = inference_params_key(ema_kept=config.train.ema_decay > 0, use_ema=use_ema)
  with checkpointing.Checkpointer(workdir) as ckpt:
    step = ckpt.latest_step() if step is None else step
    if step in ckpt.all_steps():  # else restore_partial says which steps there are
      _check_saved_params(ckpt.saved_tree(step).get(key) or {}, key, tuple(abstract), workdir)
    restored, step = ckpt.restore_partial({key: abstract}, step=step)
  return restored[key], step


def _check_saved_params(saved_tree: dict, key: str, subtrees: tuple[str, ...], workdir: str) -> None:
  """A clear error when the checkpoint lacks the params asked for (e.g. a DiT workdir given as a VAE's)."""
  saved = sorted(saved_tree)
  missing = [s for s in subtrees if s not in saved]
  if missing:
    kinds = {"vae": "tools/train_vae.py", "dit": "tools/train_dit.py"}
    wanted = ", ".join(kinds.get(s, s) for s in missing)
    raise InputError(
      f"{workdir} holds no {'/'.join(missing)} parameters (its checkpoint's {key} has {saved or 'nothing'}); "
      f"pass the --workdir of {wanted}"
    )


def restore_vae(
  workdir: str, *, mesh: jax.sharding.Mesh | None = None, step: int | None = None, replicate: bool = False
) -> RestoredVAE:
  """Restores a trained VAE from `workdir` (a tools/train_vae.py run) for encoding and decoding.

  Args:
    workdir: the VAE run's directory (config.json, checkpoints/, latent_stats.json), or a
      diffusers Wan 2.1 folder (its vae/; `step` is then ignored).
    mesh: place the params on this mesh (default: one device), sharded by the run's rules.
    step: the checkpoint step (default: the latest).
    replicate: a full copy of the params on every device of the mesh instead.
  Raises:
    checkpointing.CheckpointNotFoundError: no VAE run (or no such step) in `workdir`.
    ValueError: the workdir's checkpoint holds no VAE.
  """
  if wan_folder.is_wan_folder(workdir):
    return _restore_wan_vae(workdir, mesh=mesh, replicate=replicate)
  config = checkpointing.load_config_from_workdir(workdir)
  module = vae_lib.CausalVAE(config.vae)
  tf, sf = config.vae.temporal_factor, config.vae.spatial_factor
  video = jnp.zeros((1, 1 + tf, sf, sf, 3), jnp.float32)

  def init_fn(rng):
    return {"vae": module.init({"params": rng, "sample": rng}, video)["params"]}

  mesh = mesh if mesh is not None else single_device_mesh()
  params, step = _restore_params(workdir, config, init_fn, mesh=mesh, step=step, use_ema=True, replicate=replicate)
  stats = vae_lib.load_latent_stats(workdir, config.vae.latent_channels)
  return RestoredVAE(module, params["vae"], stats, config, os.fspath(workdir), step)


# ------------------------------------------------------------------------------ text to video


def resolve_workdirs(workdir: str) -> tuple[str, str]:
  """(dit_workdir, vae_workdir) for a demo workdir (dit/ + vae/) or a DiT workdir."""
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise RunNotFoundError(
      f"workdir {workdir!r} does not exist. Train one with `make demo` "
      f"(-> runs/demo) or tools/train_dit.py --workdir=..."
    )
  dit_dir = os.path.join(workdir, "dit") if os.path.isdir(os.path.join(workdir, "dit")) else workdir
  if not os.path.exists(os.path.join(dit_dir, "config.json")):
    raise RunNotFoundError(
      f"{workdir!r} holds no DiT run (no config.json in {dit_dir!r}). Pass the workdir "
      f"of `make demo` (runs/demo) or of tools/train_dit.py."
    )
  config = checkpointing.load_config_from_workdir(dit_dir)
  return dit_dir, _vae_dir_of(config.vae_workdir, dit_dir)


def _vae_dir_of(stored: str, dit_dir: str) -> str:
  """The VAE workdir of the DiT run in `dit_dir`, whose config stores `stored`.

  Relative paths are relative to the DiT workdir's parent (what training stores when the VAE lies
  there: "vae" for runs/demo/dit). An absolute path whose last part also exists beside the DiT
  workdir (a workdir copied or moved with its vae/, saved by a version that stored absolute paths)
  resolves to that neighbour: a copy uses its own VAE, not the original's.
  """
  parent = os.path.dirname(os.path.abspath(dit_dir))
  if not stored:
    beside = os.path.join(parent, "vae")
    return beside if os.path.isdir(beside) else os.path.join(dit_dir, "vae")
  if "://" in stored:
    return stored
  if not os.path.isabs(stored):
    inside = os.path.join(parent, stored)
    # Older runs stored the path as typed (relative to the directory training ran in).
    return stored if not os.path.isdir(inside) and os.path.isdir(stored) else inside
  neighbour = os.path.join(parent, os.path.basename(os.path.normpath(stored)))
  if os.path.normpath(neighbour) != os.path.normpath(stored) and os.path.isdir(neighbour):
    return neighbour
  return stored


def _is_workdir(path: str) -> bool:
  path = os.fspath(path)
  return any(os.path.exists(os.path.join(path, *sub, checkpointing.CONFIG_FILENAME)) for sub in (("dit",), ()))


def _restore_lora_workdir(dit_dir: str, config, *, mesh, step: int | None, use_ema: bool) -> RestoredTextToVideo:
  """A LoRA run: its base (config.init_from, a workdir or a Wan folder) restored, plus the run's adapters."""
  from sora_jax.models import lora as lora_lib  # pylint: disable=g-import-not-at-top

  base_path = config.init_from
  if not os.path.isabs(base_path) and not os.path.exists(base_path):
    base_path = os.path.join(os.path.dirname(dit_dir), base_path)
  if not os.path.exists(base_path):
    raise FileNotFoundError(f"{dit_dir} is a LoRA run on {config.init_from!r} (config.init_from), which does not exist")
  base = restore_text_to_video(base_path, mesh=mesh, use_ema=use_ema)
  spec = lora_lib.LoraSpec.from_config(config.lora)
  model = lora_lib.LoraModel(base.denoiser.dit, spec)
  lora_denoiser = dataclasses.replace(base.denoiser, dit=model)

  def init_fn(rng):
    return {"dit": lora_lib.split_adapters(lora_denoiser.init(rng)["dit"])[1]}

  adapters, step = _restore_params(dit_dir, config, init_fn, mesh=mesh, step=step, use_ema=use_ema, replicate=False)
  return dataclasses.replace(base, config=config, workdir=dit_dir, step=step, lora=(adapters, spec.scale))


def _restore_workdir(path: str, *, mesh, step: int | None, use_ema: bool) -> RestoredTextToVideo:
  dit_dir, vae_dir = resolve_workdirs(path)
  config = checkpointing.load_config_from_workdir(dit_dir)
  if "lora" in config and config.lora.rank > 0:
    return _restore_lora_workdir(dit_dir, config, mesh=mesh, step=step, use_ema=use_ema)
  # The VAE and a frozen text encoder are small: a full copy on every device of the mesh.
  vae = restore_vae(vae_dir, mesh=mesh, replicate=True)
  data = config.data
  denoiser = factory.build_denoiser(
    config, vae_lib.latent_shape(vae.config.vae, data.num_frames, data.height, data.width)
  )
  params, step = _restore_params(dit_dir, config, denoiser.init, mesh=mesh, step=step, use_ema=use_ema, replicate=False)
  return _with_text_params(denoiser, config, params, vae, workdir=dit_dir, step=step, mesh=mesh)


def _with_text_params(denoiser, config, params, vae, *, workdir: str, step: int, mesh) -> RestoredTextToVideo:
  """The restored system, with a frozen text encoder's pretrained weights read and replicated on every device of
  the mesh (they are small); a trainable encoder's are in params["text"]."""
  text_params = None
  if denoiser.text_encoder is not None and not denoiser.text_encoder.trainable:
    pretrained = partitioning.unbox(denoiser.text_encoder.load_pretrained())
    text_params = jax.device_put(pretrained, partitioning.replicated(mesh))
  return RestoredTextToVideo(
    denoiser=denoiser,
    process=build_diffusion(config.diffusion),
    params=params,
    text_params=text_params,
    vae=vae,
    config=config,
    workdir=workdir,
    step=step,
    mesh=mesh,
  )


def restore_params_like(path: str, abstract: dict[str, Any], *, use_ema: bool = True, step: int | None = None):
  """The inference params of the DiT run in `path` ({"dit", "text"?}), read into `abstract`'s shapes and
  shardings (a new run's, e.g. one that starts from them with `init_from`)."""
  dit_dir, _ = resolve_workdirs(path)
  config = checkpointing.load_config_from_workdir(dit_dir)
  key = inference_params_key(ema_kept=config.train.ema_decay > 0, use_ema=use_ema)
  with checkpointing.Checkpointer(dit_dir) as ckpt:
    if step in ckpt.all_steps() or (step is None and ckpt.latest_step() is not None):
      _check_saved_params(ckpt.saved_tree(step).get(key) or {}, key, tuple(abstract), dit_dir)
    restored, _ = ckpt.restore_partial({key: abstract}, step=step)
  return restored[key]


# ------------------------------------------------------------------------------ diffusers Wan 2.1 folders


_KEY = jax.random.key(0)


def wan_folder_config(path: str, dtype: str = "float32") -> ml_collections.ConfigDict:
  """The run config of a diffusers Wan 2.1 folder: configs/dit/wan21.py with the sizes of the folder's
  transformer and VAE, its scheduler's sampler and shift, init_from / text.pretrained / vae_workdir = path.

  `dtype` is the compute dtype and the dtype the weights are cast to when restored ("float32" is
  exact; "bfloat16" halves the memory of the weights).
  """
  from configs.dit import wan21  # the installed configs package: pure defaults, not a model floor

  wan_folder.read_model_index(path)
  config = wan21.get_config("1.3b")
  config.init_from = os.fspath(path)
  sizes = WanTransformer.from_diffusers_config(wan_folder.read_config(os.path.join(path, "transformer")))
  config.dit.update(
    depth=sizes.depth,
    num_heads=sizes.num_heads,
    hidden_size=sizes.hidden_size,
    mlp_dim=sizes.mlp_dim,
    patch_size=tuple(sizes.patch_size),
    qk_norm=sizes.qk_norm,
    dtype=dtype,
    remat_policy="none",
  )
  config.vae.update(wan_vae.vae_config_from_diffusers(wan_folder.read_config(os.path.join(path, "vae"))).to_dict())
  config.vae.dtype = dtype
  config.text.dtype = dtype
  scheduler = wan_folder.scheduler_settings(path)
  config.sample.sampler = scheduler["sampler"]
  config.diffusion.shift = scheduler["shift"]
  config.mesh.shape = (1, -1, 1, 1)
  return config


def _restore_wan_vae(path: str, *, mesh, replicate: bool, dtype: str = "float32") -> RestoredVAE:
  config = wan_folder_config(path, dtype)
  mesh = mesh if mesh is not None else single_device_mesh()
  module = wan_vae.WanVAE(config.vae)
  size = 2 * config.vae.spatial_factor
  video = jnp.zeros((1, 1 + config.vae.temporal_factor, size, size, 3), jnp.float32)
  rules = partitioning.logical_rules(config)
  abstract, _ = partitioning.abstract_state(lambda rng: module.init(rng, video, False)["params"], mesh, rules, _KEY)
  if replicate:
    everywhere = partitioning.replicated(mesh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=everywhere), abstract)
  params = wan_folder.load_vae_params(path, module, abstract, dtype=jnp.dtype(dtype))
  return RestoredVAE(module, params, wan_vae.latent_stats(module.config), config, os.fspath(path), 0)


def _restore_wan_folder(path: str, *, mesh, step: int | None, use_ema: bool, dtype: str = "float32"):
  del use_ema  # a released folder holds one set of weights
  if step not in (None, 0):
    raise ValueError(f"{path} is a diffusers Wan folder: it holds one set of weights (step=None), not step {step}")
  config = wan_folder_config(path, dtype)
  vae = _restore_wan_vae(path, mesh=mesh, replicate=True, dtype=dtype)
  data = config.data
  denoiser = factory.build_denoiser(config, vae_lib.latent_shape(config.vae, data.num_frames, data.height, data.width))
  dit = denoiser.dit
  transformer = wan_folder.read_config(os.path.join(path, "transformer"))
  expected = {"in_channels": config.vae.latent_channels, "text_dim": denoiser.text_encoder.output_dim}
  found = {"in_channels": transformer.get("in_channels"), "text_dim": transformer.get("text_dim")}
  if found != expected:
    raise ValueError(
      f"{path}: transformer/config.json has {found}, but the VAE makes {expected['in_channels']} latent channels and "
      f"the text encoder {expected['text_dim']}-wide states; the components do not belong together"
    )
  rules = partitioning.logical_rules(config)
  abstract, _ = partitioning.abstract_state(lambda rng: denoiser.init(rng)["dit"], mesh, rules, _KEY)
  params = {"dit": wan_folder.load_transformer_params(path, dit, abstract, dtype=jnp.dtype(dtype))}
  return _with_text_params(denoiser, config, params, vae, workdir=os.fspath(path), step=0, mesh=mesh)


# Formats of a trained text-to-video system, tried in order: name -> (does `path` hold one?, restore it).
TEXT_TO_VIDEO_FORMATS: dict[str, tuple[Callable[[str], bool], Callable[..., RestoredTextToVideo]]] = {
  "diffusers_wan2.1": (wan_folder.is_wan_folder, _restore_wan_folder),
  "sora_jax_workdir": (_is_workdir, _restore_workdir),
}


def restore_text_to_video(
  path: str,
  *,
  mesh: jax.sharding.Mesh | None = None,
  step: int | None = None,
  use_ema: bool = True,
  dtype: str | None = None,
) -> RestoredTextToVideo:
  """Restores a trained text-to-video system from `path` (see `TEXT_TO_VIDEO_FORMATS`).

  Args:
    path: a demo workdir (dit/ + vae/), a DiT workdir, or a diffusers Wan 2.1 folder.
    mesh: place the parameters on this mesh (default: one device): the DiT sharded by its
      logical axis rules, the VAE and a frozen text encoder replicated.
    step: the DiT checkpoint step (default: the latest).
    use_ema: the EMA params (recommended) when the run kept them, else the raw ones.
    dtype: for a Wan folder, the dtype of compute and weights ("float32" default, or
      "bfloat16"); a workdir keeps its run's settings.
  Raises:
    FileNotFoundError: the path does not exist or holds no run (the message says what to pass).
    checkpointing.CheckpointNotFoundError: no checkpoint, or not that step (the available ones named).
  """
  mesh = mesh if mesh is not None else single_device_mesh()
  for name, (matches, restore) in TEXT_TO_VIDEO_FORMATS.items():
    if matches(path):
      options = {}
      if dtype is not None:
        if name == "sora_jax_workdir":
          raise ValueError(f"dtype={dtype!r}: a workdir samples with its run's dtypes (config.dit.dtype)")
        options["dtype"] = dtype
      return restore(path, mesh=mesh, step=step, use_ema=use_ema, **options)
  resolve_workdirs(path)  # no format matched: raises the workdir format's error, which says what to pass
  raise FileNotFoundError(f"{path!r} holds no trained text-to-video system")
