"""The DiT run's data: the latent cache of one size or of a bucket table, and its training iterator.

    data = build_dit_data(config, cache_dir, vae, text_encoder, text_params)
    data.buckets              # [Bucket(size, probability, batch_size, tokens)]; one for data.batching="single"
    data.train, data.eval     # {bucket name: LatentCacheSource}, one cache file per split and size
    it = data.make_train_iterator(seed)   # one size per batch; exact get_state/set_state
    data.latent_shape         # (T', H', W', C) of the base size (data.num_frames x height x width)

With config.data.batching="buckets" every size of config.data.buckets is read per size
(`datasets.load_sources_by_size`), encoded once into the cache (<split>_<TxHxW>.array_record),
and mixed by `sora_jax.data.buckets.BucketMixture`. A keep-aspect import's clips of a size not in
the table are skipped and counted. The jitted train step compiles once per bucket (jit caches by
shape), and each bucket's timestep shift follows its own token count (the loss reads it from the
batch shape).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from sora_jax.data import buckets as buckets_lib
from sora_jax.data import datasets, latent_cache, pipeline
from sora_jax.models import vae as vae_lib
from sora_jax.models.patchify import num_tokens
from sora_jax.sharding import mesh as mesh_lib

log = logging.getLogger(__name__)


def base_size(config) -> buckets_lib.Size:
  return (int(config.data.num_frames), int(config.data.height), int(config.data.width))


def tokens_fn(vae_cfg, patch_size):
  """`size (frames, height, width) -> DiT tokens of one clip` for a VAE config section and a DiT patch."""

  def tokens_of(size):
    return num_tokens((1, *vae_lib.latent_shape(vae_cfg, *size)), patch_size)

  return tokens_of


def resolve_buckets(config, vae_cfg, multiple: int | None = None) -> list[buckets_lib.Bucket]:
  """The run's buckets: config.data.buckets (batching="buckets") or the one base size (batching="single").

  Batch sizes of 0 are scaled by tokens; `multiple` (default: `batch_multiple`, the mesh's data x fsdp
  ways and the process count) is what every batch size must be a multiple of.
  """
  batching = config.data.get("batching", "single")
  if batching not in buckets_lib.BATCHINGS:
    raise ValueError(f"config.data.batching={batching!r} is not one of {buckets_lib.BATCHINGS}")
  tokens_of = tokens_fn(vae_cfg, tuple(config.dit.patch_size))
  if batching == "single":
    size = base_size(config)
    return [buckets_lib.Bucket(size, 1.0, int(config.data.batch_size), tokens_of(size))]
  table = config.data.get("buckets", None)
  if not table:
    raise ValueError(
      'config.data.batching="buckets" needs a table: config.data.buckets = "17x32x32=0.5:0,1x32x32=0.5:0" '
      "(SIZE=PROBABILITY:BATCH, batch 0 = scaled by tokens; configs/dit/demo_sizes.py writes one as a dict)"
    )
  return buckets_lib.resolve_buckets(
    buckets_lib.parse_table(table),
    base_batch=int(config.data.batch_size),
    base_size=base_size(config),
    tokens_of=tokens_of,
    multiple=multiple or batch_multiple(config),
  )


def batch_multiple(config) -> int:
  """What every bucket's global batch must be a multiple of: the mesh's data x fsdp ways and the process count."""
  shape = mesh_lib.resolve_mesh_shape(config.mesh.shape, jax.device_count())
  return math.lcm(shape[0] * shape[1], jax.process_count())


def buckets_for_tool(config, table: str, multiple: int = 1) -> list[buckets_lib.Bucket]:
  """The buckets a tool's --buckets names: "config" (config.data.buckets) or a table "17x32x32=0.5:32,1x32x32=0.5"
  (batch 0 or left out = data.batch_size scaled by tokens), sized with config.vae and config.dit."""
  source = config.data.get("buckets", None) if table == "config" else table
  if not source:
    raise ValueError(
      "--buckets=config but the config has no data.buckets table; pass one, e.g. 17x32x32=0.5,1x32x32=0.5"
    )
  return buckets_lib.resolve_buckets(
    buckets_lib.parse_table(source),
    base_batch=int(config.data.batch_size),
    base_size=base_size(config),
    tokens_of=tokens_fn(config.vae, tuple(config.dit.patch_size)),
    multiple=multiple,
  )


def describe(buckets: list[buckets_lib.Bucket]) -> str:
  return ", ".join(f"{b.name}: p={b.probability:.2f} batch={b.batch_size} tokens={b.tokens}" for b in buckets)


def dataset_sources(config, split: str, buckets: list[buckets_lib.Bucket]) -> dict[str, Any]:
  """{cache split name: source of uint8 clips} for each bucket; sizes the dataset holds outside the table are
  skipped with a count in the log."""
  if config.data.get("batching", "single") == "single":
    return {split: datasets.load_data_source(config.data, split)}
  wanted = [b.size for b in buckets]
  if config.data.dataset == "video_folder":
    held = datasets.load_sources_by_size(config.data, split, None)
    skipped = {size: len(src) for size, src in held.items() if size not in wanted}
    if skipped:
      log.warning(
        "%s: skipping %d clip(s) of sizes outside config.data.buckets: %s",
        split,
        sum(skipped.values()),
        ", ".join(f"{buckets_lib.size_name(s)} ({n})" for s, n in skipped.items()),
      )
    missing = [s for s in wanted if s not in held]
    if missing:
      raise ValueError(f"{split}: the dataset holds no clips of bucket size(s) {missing}; it holds {sorted(held)}")
    sources = {size: held[size] for size in wanted}
  else:
    sources = datasets.load_sources_by_size(config.data, split, wanted)
  return {latent_cache.split_name(split, size): src for size, src in sources.items()}


def cache_name(config, split: str, bucket: buckets_lib.Bucket) -> str:
  if config.data.get("batching", "single") == "single":
    return split
  return latent_cache.split_name(split, bucket.size)


@dataclasses.dataclass
class DiTData:
  """The latent cache of a DiT run, per bucket, and how to iterate over it."""

  config: Any
  buckets: list[buckets_lib.Bucket]
  train: dict[str, latent_cache.LatentCacheSource]
  eval: dict[str, latent_cache.LatentCacheSource]

  @property
  def latent_shape(self) -> tuple[int, ...]:
    """(T', H', W', C) of the base size's latents (or the first bucket's, if the base is not a bucket)."""
    base = base_size(self.config)
    bucket = next((b for b in self.buckets if b.size == base), self.buckets[0])
    return tuple(self.train[bucket.name][0]["latent_mean"].shape)

  def mean_counts(self) -> dict[str, float]:
    """Tokens and examples per step, averaged over the buckets' probabilities (for the steps/s logs)."""
    return {
      "tokens": sum(b.probability * b.batch_size * b.tokens for b in self.buckets),
      "examples": sum(b.probability * b.batch_size for b in self.buckets),
    }

  def make_train_iterator(self, seed: int):
    """Shuffled, repeated batches; one grain iterator for one size, a BucketMixture for several."""
    data_cfg = self.config.data
    iterators = {
      b.name: pipeline.make_iterator(
        self.train[b.name],
        batch_size=b.batch_size,
        seed=seed,
        worker_count=data_cfg.worker_count,
        prefetch=data_cfg.prefetch,
      )
      for b in self.buckets
    }
    if len(self.buckets) == 1 and data_cfg.get("batching", "single") == "single":
      return next(iter(iterators.values()))
    return buckets_lib.BucketMixture(iterators, {b.name: b.probability for b in self.buckets}, seed=seed)

  def eval_batches(self, bucket: buckets_lib.Bucket, max_batches: int):
    """The first `max_batches` batches of the eval split at `bucket`'s size, in order (numeric fields only)."""
    iterator = pipeline.make_iterator(
      self.eval[bucket.name], batch_size=bucket.batch_size, seed=0, shuffle=False, num_epochs=1, prefetch=0
    )
    for i, batch in enumerate(iterator):
      if i >= max_batches:
        break
      yield {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}


def build_dit_data(config, cache_dir: str, vae, text_encoder, text_params) -> DiTData:
  """Encodes (process 0) or reuses the latent cache of every bucket; the cache dir must be on shared storage."""
  buckets = resolve_buckets(config, vae.config.vae)
  if jax.process_index() == 0 and config.data.get("batching", "single") != "single":
    print(f"bucket batching: {describe(buckets)}", flush=True)
  train_split, eval_split = config.data.train_split, config.data.eval_split
  if jax.process_index() == 0:
    splits = {**dataset_sources(config, train_split, buckets), **dataset_sources(config, eval_split, buckets)}
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
  train = {b.name: latent_cache.LatentCacheSource(cache_dir, cache_name(config, train_split, b)) for b in buckets}
  held_out = {b.name: latent_cache.LatentCacheSource(cache_dir, cache_name(config, eval_split, b)) for b in buckets}
  return DiTData(config=config, buckets=buckets, train=train, eval=held_out)


def evaluate_loss(eval_loss, params, data: DiTData, max_batches: int) -> dict[str, float]:
  """Eval loss per bucket ('loss_<TxHxW>', ... with several buckets) and their probability-weighted mean.

  With one bucket the keys are those of `eval_loss` (loss, loss_t0.1, ...), as before.
  """
  results: dict[str, float] = {}
  weighted: dict[str, float] = {}
  for bucket in data.buckets:
    totals, n = {}, 0
    for i, batch in enumerate(data.eval_batches(bucket, max_batches)):
      out = jax.device_get(eval_loss(params, batch, jax.random.PRNGKey(i)))
      totals = {k: totals.get(k, 0.0) + float(v) for k, v in out.items()}
      n += 1
    means = {k: v / max(n, 1) for k, v in totals.items()}
    if len(data.buckets) == 1:
      return means
    results[f"loss_{bucket.name}"] = means.get("loss", math.nan)
    for k, v in means.items():
      weighted[k] = weighted.get(k, 0.0) + bucket.probability * v
  results.update(weighted)
  return results


def cache_dir_of(config, workdir: str) -> str:
  return config.data.latent_cache_dir or os.path.join(workdir, "latent_cache")
