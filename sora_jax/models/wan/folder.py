"""Diffusers-format Wan 2.1 folders: read each component onto a mesh, write our models back.

A Wan 2.1 text-to-video folder (as `WanPipeline.save_pretrained` writes it, e.g.
Wan-AI/Wan2.1-T2V-1.3B-Diffusers):

    model_index.json        {"_class_name": "WanPipeline", "transformer": [...], ...}
    transformer/            config.json + diffusion_pytorch_model*.safetensors (+ index when sharded)
    vae/                    config.json + diffusion_pytorch_model.safetensors
    text_encoder/           config.json + model*.safetensors (umT5-XXL)
    tokenizer/              tokenizer.json (+ tokenizer_config.json, spiece.model: not needed here)
    scheduler/              scheduler_config.json (UniPCMultistepScheduler, flow_shift)

    module, params = load_transformer(folder, mesh=mesh, rules=rules, dtype=jnp.bfloat16)
    vae, vae_params, vae_cfg = load_vae(folder)
    save_transformer(out_dir, module, params)          # loadable by WanTransformer3DModel.from_pretrained

Every loader builds the module from the component's config.json, derives each parameter's
sharding from its logical axes (`rules` on `mesh`; default: one device), checks the keys and
shapes of the safetensors against the module's weight table and places the weights shard by
shard (`weight_mapping.load_onto_mesh`). Errors name the file and the key.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models import weight_mapping
from sora_jax.models.safetensors_io import SafetensorsCheckpoint, write_checkpoint
from sora_jax.models.text import umt5
from sora_jax.models.wan import vae as vae_lib
from sora_jax.models.wan import weights
from sora_jax.models.wan.transformer import WanTransformer

MODEL_INDEX = "model_index.json"
PIPELINE_CLASSES = ("WanPipeline",)
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
DIFFUSERS_VERSION = "0.33.1"  # written into exported config.json files (the first diffusers with Wan 2.1)
SCHEDULERS = ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")


def is_wan_folder(path: str) -> bool:
  """True if `path` holds a diffusers pipeline folder (model_index.json) of a Wan pipeline."""
  index = os.path.join(os.fspath(path), MODEL_INDEX)
  if not os.path.isfile(index):
    return False
  with open(index) as f:
    return json.load(f).get("_class_name") in PIPELINE_CLASSES


def read_model_index(path: str) -> dict:
  """model_index.json of a Wan folder, checked: a Wan T2V pipeline with every component present."""
  index_path = os.path.join(os.fspath(path), MODEL_INDEX)
  if not os.path.isfile(index_path):
    raise FileNotFoundError(f"{path} is not a diffusers Wan folder: {MODEL_INDEX} is missing")
  with open(index_path) as f:
    index = json.load(f)
  if index.get("_class_name") not in PIPELINE_CLASSES:
    raise ValueError(
      f"{index_path}: _class_name={index.get('_class_name')!r}; only Wan 2.1 text-to-video folders "
      f"({', '.join(PIPELINE_CLASSES)}) load here"
    )
  missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(path, c))]
  if missing or index.get("transformer_2") not in (None, [None, None]):
    raise ValueError(
      f"{path} lacks the component folder(s) {missing} (or is a two-transformer Wan 2.2 folder); a Wan 2.1 "
      f"folder has {', '.join(COMPONENTS)}"
    )
  return index


def _component(path: str, name: str) -> str:
  """`path/name` when path is a pipeline folder, else path itself (a component folder)."""
  sub = os.path.join(os.fspath(path), name)
  return sub if os.path.isdir(sub) else os.fspath(path)


def read_config(folder: str, filename: str = "config.json") -> dict:
  path = os.path.join(folder, filename)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: every component folder has its {filename}")
  with open(path) as f:
    return json.load(f)


def _single_device_mesh():
  from sora_jax.sharding import mesh as mesh_lib  # pylint: disable=g-import-not-at-top

  return mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])


def abstract_params(init_fn, mesh=None, rules=None) -> Any:
  """Unboxed ShapeDtypeStructs (with shardings) of `init_fn(rng)["params"]` on `mesh` (default: one device).

  `rules` (config.mesh.logical_axis_rules) are needed on a mesh of several devices; on one device
  every parameter is whole anyway.
  """
  from sora_jax.sharding import partitioning  # pylint: disable=g-import-not-at-top

  mesh = mesh or _single_device_mesh()
  params_fn = lambda rng: init_fn(rng)["params"]  # noqa: E731
  if rules is None:
    if mesh.size > 1:
      raise ValueError("loading onto a mesh of several devices needs rules= (config.mesh.logical_axis_rules)")
    boxed = jax.eval_shape(params_fn, jax.random.key(0))
    names = {
      n for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names")) for n in getattr(leaf, "names", ())
    }
    rules = tuple((name, None) for name in sorted(n for n in names if n is not None))
  abstract, _ = partitioning.abstract_state(params_fn, mesh, partitioning.logical_rules(rules), jax.random.key(0))
  return abstract


def transformer_example_inputs(module: WanTransformer) -> tuple:
  pt, ph, pw = module.patch_size
  x = jnp.zeros((1, pt, ph, pw, module.in_channels), jnp.float32)
  return x, jnp.zeros((1,), jnp.float32), {"text": jnp.zeros((1, 1, module.text_dim), jnp.float32)}


def load_transformer(path: str, *, mesh=None, rules=None, dtype=None, on_leaf=None, **overrides):
  """(WanTransformer, params) of `path` (a Wan folder or its transformer/ folder).

  Args:
    mesh, rules: where the parameters go (default: one device, the base config's rules).
    dtype: cast the weights to this dtype (None: float32, our training dtype).
    on_leaf: called as (path, array) after each parameter is placed.
    **overrides: WanTransformer fields (scan_layers, attention_impl, dtype (compute), remat_policy ...).
  """
  module = WanTransformer.from_diffusers_config(read_config(_component(path, "transformer")), **overrides)
  abstract = abstract_params(lambda rng: module.init(rng, *transformer_example_inputs(module)), mesh, rules)
  return module, load_transformer_params(path, module, abstract, dtype=dtype, on_leaf=on_leaf)


def load_transformer_params(path: str, module: WanTransformer, abstract: Any, *, dtype=None, on_leaf=None) -> Any:
  """The transformer weights of `path` for `module`, placed like `abstract` (ShapeDtypeStructs with shardings)."""
  folder = _component(path, "transformer")
  table = weights.transformer_table(module)
  return weight_mapping.load_onto_mesh(table, SafetensorsCheckpoint(folder), abstract, dtype=dtype, on_leaf=on_leaf)


def load_vae(path: str, *, mesh=None, rules=None, dtype=None, **config_overrides):
  """(WanVAE, params, vae config section) of `path` (a Wan folder or its vae/ folder)."""
  folder = _component(path, "vae")
  config = vae_lib.vae_config_from_diffusers(read_config(folder), **config_overrides)
  module = vae_lib.WanVAE(config)
  size = 2 * config.spatial_factor
  video = jnp.zeros((1, 1 + config.temporal_factor, size, size, 3), jnp.float32)
  abstract = abstract_params(lambda rng: module.init(rng, video, False), mesh, rules)
  return module, load_vae_params(folder, module, abstract, dtype=dtype), config


def load_vae_params(path: str, module: vae_lib.WanVAE, abstract: Any, *, dtype=None) -> Any:
  """The VAE weights of `path` (a Wan folder or its vae/) for `module`, placed like `abstract` (with shardings)."""
  table = weights.vae_table(module)
  return weight_mapping.load_onto_mesh(table, SafetensorsCheckpoint(_component(path, "vae")), abstract, dtype=dtype)


def load_umt5(path: str, *, mesh=None, rules=None, dtype=None, compute_dtype=jnp.float32):
  """(UMT5Encoder, params) of `path` (a Wan folder, its text_encoder/ folder, or any umT5 folder), sharded."""
  folder = _component(path, "text_encoder")
  module = umt5.UMT5Encoder.from_hf_config(read_config(folder), dtype=compute_dtype)
  ids = jnp.zeros((1, 2), jnp.int32)
  abstract = abstract_params(lambda rng: module.init(rng, ids, jnp.ones((1, 2), bool)), mesh, rules)
  params = weight_mapping.load_onto_mesh(
    weights.umt5_table(module), SafetensorsCheckpoint(folder), abstract, dtype=dtype
  )
  return module, params


def scheduler_settings(path: str) -> dict:
  """The sampling settings of a Wan folder's scheduler: {"sampler", "shift"} (our names).

  UniPCMultistepScheduler with flow sigmas (Wan's default) -> "unipc"; FlowMatchEulerDiscrete -> "euler".
  Raises ValueError for schedulers / settings our samplers do not reproduce.
  """
  config = read_config(_component(path, "scheduler"), "scheduler_config.json")
  name = config.get("_class_name")
  if name == "UniPCMultistepScheduler":
    wanted = {
      "use_flow_sigmas": True,
      "prediction_type": "flow_prediction",
      "solver_order": 2,
      "solver_type": "bh2",
      "predict_x0": True,
      "lower_order_final": True,
      "final_sigmas_type": "zero",
      "use_dynamic_shifting": False,
      "disable_corrector": [],
    }
    different = {k: config.get(k, v) for k, v in wanted.items() if config.get(k, v) != v}
    if different or config.get("num_train_timesteps", 1000) != 1000:
      raise ValueError(
        f"{path}: the UniPC scheduler settings {different} are not the ones our 'unipc' sampler implements "
        f"({wanted}, num_train_timesteps=1000)"
      )
    return {"sampler": "unipc", "shift": float(config.get("flow_shift", 1.0))}
  if name == "FlowMatchEulerDiscreteScheduler":
    if config.get("use_dynamic_shifting"):
      raise ValueError(f"{path}: dynamic shifting of the flow-matching scheduler is not implemented")
    return {"sampler": "euler", "shift": float(config.get("shift", 1.0))}
  raise ValueError(f"{path}: scheduler {name!r} is not one of {SCHEDULERS}")


def _write_config(folder: str, class_name: str, config: dict) -> None:
  os.makedirs(folder, exist_ok=True)
  record = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **config}
  path = os.path.join(folder, "config.json")
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)


def save_transformer(folder: str, module: WanTransformer, params: Any, *, dtype=np.float32, max_shard_bytes=5 << 30):
  """Writes `params` of `module` as a diffusers `WanTransformer3DModel` folder (config.json + safetensors)."""
  state = weight_mapping.to_state_dict(weights.transformer_table(module), params, dtype=dtype)
  write_checkpoint(folder, DIFFUSERS_WEIGHTS, state, max_shard_bytes=max_shard_bytes)
  _write_config(folder, "WanTransformer3DModel", module.diffusers_config())
  return folder


def save_vae(folder: str, module: vae_lib.WanVAE, params: Any, *, dtype=np.float32, max_shard_bytes=5 << 30):
  """Writes `params` of a `WanVAE` as a diffusers `AutoencoderKLWan` folder."""
  state = weight_mapping.to_state_dict(weights.vae_table(module), params, dtype=dtype)
  write_checkpoint(folder, DIFFUSERS_WEIGHTS, state, max_shard_bytes=max_shard_bytes)
  _write_config(folder, "AutoencoderKLWan", vae_lib.diffusers_vae_config(module.config))
  return folder


def export_pipeline(
  out_dir: str,
  module: WanTransformer,
  params: Any,
  *,
  base_folder: str,
  vae: tuple[vae_lib.WanVAE, Any] | None = None,
  dtype=np.float32,
  max_shard_bytes: int = 5 << 30,
) -> str:
  """Writes a complete diffusers Wan 2.1 folder: our transformer (and VAE, if given) plus the other
  components (text encoder, tokenizer, scheduler, model_index.json) copied from `base_folder`.

  `WanPipeline.from_pretrained(out_dir)` loads the result. `out_dir` must not exist or be empty:
  nothing is overwritten.
  """
  import shutil  # pylint: disable=g-import-not-at-top

  read_model_index(base_folder)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} exists and is not empty; export into a new folder (nothing is overwritten)")
  os.makedirs(out_dir, exist_ok=True)
  shutil.copy2(os.path.join(base_folder, MODEL_INDEX), os.path.join(out_dir, MODEL_INDEX))
  copied = [c for c in COMPONENTS if c != "transformer" and not (c == "vae" and vae is not None)]
  for name in copied:
    shutil.copytree(os.path.join(base_folder, name), os.path.join(out_dir, name))
  save_transformer(os.path.join(out_dir, "transformer"), module, params, dtype=dtype, max_shard_bytes=max_shard_bytes)
  if vae is not None:
    save_vae(os.path.join(out_dir, "vae"), *vae, dtype=dtype, max_shard_bytes=max_shard_bytes)
  return out_dir
