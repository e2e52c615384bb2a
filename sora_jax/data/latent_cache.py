"""The latent cache: VAE latents and text conditioning of a dataset, computed once.

DiT training never runs the VAE (as in maxdiffusion): `build_latent_cache` encodes
every clip of a split with the trained VAE and tokenizes / embeds its caption,
and writes one ArrayRecord file per split:

  <cache_dir>/<split>.array_record   one msgpack record per clip (one size per file; a bucket
                                     mixture has one file per split and size, `split_name`):
      latent_mean, latent_logvar  float16 [T', H', W', C]  (raw VAE posterior)
      the text fields of `sora_jax.models.text.fields` (float16 where they are float32)
      caption, canonical_caption (str), metadata (color/shape/motion when known)
  <cache_dir>/meta.json                what built it (VAE step, encoder, data config)

A cache whose meta.json matches the request is reused; otherwise it is rebuilt.
`LatentCacheSource` reads a split back as a grain random-access source.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
from array_record.python import array_record_module
from flax import serialization

from sora_jax.models.text import fields
from sora_jax.monitoring.progress import progress_bar

_META = "meta.json"


def cache_path(cache_dir: str, split: str) -> str:
  return os.path.join(cache_dir, f"{split}.array_record")


def split_name(split: str, size: tuple[int, int, int] | None = None) -> str:
  """The cache file name of `split` at clip `size` (frames, height, width): 'train_17x32x48' ('train' for None)."""
  return split if size is None else f"{split}_{'x'.join(str(int(v)) for v in size)}"


class LatentCacheSource(grain.RandomAccessDataSource):
  """A split of the latent cache as a grain source of dicts of numpy arrays (float16 -> float32)."""

  def __init__(self, cache_dir: str, split: str):
    path = cache_path(cache_dir, split)
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"latent cache {path!r} not found. Build it with tools/train_dit.py "
        f"(it encodes the dataset with --config.vae_workdir first) or delete {cache_dir!r} to rebuild."
      )
    self._source = grain.ArrayRecordDataSource([path])
    self._path = path

  def __repr__(self) -> str:
    # grain stores repr(source) in the iterator state and checks it on resume: keep it stable.
    return f"LatentCacheSource({self._path!r})"

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = serialization.msgpack_restore(self._source[index])
    return {
      k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float16 else v) for k, v in record.items()
    }


def cache_meta(config, vae_workdir: str, vae_step: int | None) -> dict:
  """What identifies a DiT run's cache: the VAE (workdir, step), the text encoder, the data config.

  The data config's batch_size and latent_cache_dir are left out: the cache does not depend on them.
  """
  meta = {
    "vae_workdir": os.path.abspath(vae_workdir),
    "vae_step": vae_step,
    "text_encoder": config.text.to_dict(),
    "data": config.data.to_dict(),
  }
  meta["data"].pop("batch_size", None)
  meta["data"].pop("latent_cache_dir", None)
  return meta


def read_meta(cache_dir: str) -> dict | None:
  path = os.path.join(cache_dir, _META)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def build_latent_cache(
  *, cache_dir: str, splits: dict[str, Any], encode_fn, text_encoder, text_params, meta: dict, batch_size: int = 16
) -> dict[str, int]:
  """Encodes each split once and writes it as ArrayRecord; reuses a matching cache.

  Args:
    cache_dir: output folder.
    splits: split name -> random-access source of dicts with 'video' uint8 [T,H,W,3] and 'caption'
      (one clip size per source; several sizes are several entries, named with `split_name`).
    encode_fn: jitted `video float32 [B,T,H,W,3] in [-1,1] -> (mean, logvar)` of the VAE (compiled
      once per clip size: every call of a size is padded to `batch_size`).
    text_encoder, text_params: a `sora_jax.models.text.TextEncoder` and its params.
    meta: what identifies this cache (VAE step, encoder, data config); a cache whose
      meta.json equals it is reused.
    batch_size: clips encoded per VAE call.
  Returns:
    split -> number of records.
  """
  meta = json.loads(json.dumps(meta))  # normalise tuples -> lists, as read back from disk
  if read_meta(cache_dir) == meta and all(os.path.exists(cache_path(cache_dir, s)) for s in splits):
    return {s: len(LatentCacheSource(cache_dir, s)) for s in splits}
  os.makedirs(cache_dir, exist_ok=True)
  meta_path = os.path.join(cache_dir, _META)
  if os.path.exists(meta_path):
    os.remove(meta_path)  # a half-written cache must never look valid
  counts = {}
  for split, source in splits.items():
    tmp = cache_path(cache_dir, split) + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    n = len(source)
    for start in progress_bar(
      range(0, n, batch_size), desc=f"latent cache [{split}]", total=(n + batch_size - 1) // batch_size
    ):
      examples = [source[i] for i in range(start, min(start + batch_size, n))]
      videos = np.stack([e["video"] for e in examples]).astype(np.float32) / 127.5 - 1.0
      pad = batch_size - len(examples)  # constant batch shape: one compilation
      if pad:
        videos = np.concatenate([videos, np.zeros((pad,) + videos.shape[1:], videos.dtype)])
      mean, logvar = jax.device_get(encode_fn(jnp.asarray(videos)))
      captions = [_as_str(e["caption"]) for e in examples]
      text = {
        k: (v.astype(np.float16) if v.dtype == np.float32 else v)  # halve the cache; read back as f32
        for k, v in fields.text_fields(text_encoder, text_params, captions).items()
      }
      for i, example in enumerate(examples):
        record = {
          "latent_mean": mean[i].astype(np.float16),
          "latent_logvar": logvar[i].astype(np.float16),
          "caption": captions[i],
        }
        record.update({k: v[i] for k, v in text.items()})
        for key in ("canonical_caption", "color", "shape", "motion"):
          if key in example:
            record[key] = _as_str(example[key])
        writer.write(serialization.msgpack_serialize(record))
    writer.close()
    os.replace(tmp, cache_path(cache_dir, split))
    counts[split] = n
  with open(meta_path, "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  return counts


def _as_str(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return _as_str(value.item())
  return str(value)
