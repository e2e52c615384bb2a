"""The grain input pipeline: shuffle, repeat, augment, batch, prefetch; resumable and multi-host.

Generic, for any random-access source (datasets, the latent cache):

    it = make_iterator(source, batch_size=64, seed=0, transforms=[...])
    batch = next(it)                 # dict of numpy arrays, leading axis = per-process batch
    state = it.get_state()           # bytes; save with the checkpoint
    it.set_state(state)              # a resumed run sees exactly the batches it would have seen

For videos (what VAE training and evaluation use):

    it = make_train_iterator(config.data, seed=config.seed)
    batch = next(it)   # {'video': float32 [B, T, H, W, 3] in [-1, 1], 'caption': str [B], metadata...}
    arrays = sora_jax.sharding.partitioning.shard_batch(batch, mesh)  # global jax.Arrays over ('data', 'fsdp')

`batch_size` is always the GLOBAL batch; each process reads `batch_size /
process_count` examples from its own shard of the records (grain ShardByJaxProcess).
Random augmentations are grain `RandomMap`s, whose generator grain seeds per record
from (seed, record position), so a restored iterator repeats them exactly.

The iterator is compatible with `grain.checkpoint.CheckpointSave/CheckpointRestore`
(Orbax): it has get_state() -> bytes, set_state(bytes) and start_prefetch().
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from sora_jax.data import datasets

# ------------------------------------------------------------------ transforms


_SWAP = {"left": "right", "right": "left"}
_LEFT_RIGHT_RE = re.compile(r"\b(left|right)(wards?)?\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
  """'a red circle moving left' -> '... moving right' (and leftward <-> rightward), keeping case."""

  def swap(match: re.Match) -> str:
    word = match.group(1)
    swapped = _SWAP[word.lower()]
    if word.isupper():
      swapped = swapped.upper()
    elif word[0].isupper():
      swapped = swapped.capitalize()
    return swapped + (match.group(2) or "")

  return _LEFT_RIGHT_RE.sub(swap, text)


class HorizontalFlip(grain.transforms.RandomMap):
  """Mirrors 'video' [T, H, W, C] left-right with probability `probability`, fixing the labels.

  A mirrored clip that moved left now moves right, so 'left'/'right' are swapped in
  every caption-like string field ('caption', 'canonical_caption'), 'motion'
  left <-> right, and the x of 'start_center'/'end_center' becomes 1 - x.
  """

  _TEXT_KEYS = ("caption", "canonical_caption")

  def __init__(self, probability: float = 0.5):
    if not 0.0 <= probability <= 1.0:
      raise ValueError(f"flip probability must be in [0, 1], got {probability}")
    self.probability = probability

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if rng.uniform() >= self.probability:
      return element
    return flip_example(element)


def flip_example(element: dict[str, Any]) -> dict[str, Any]:
  """The example mirrored left-right, with captions and motion metadata swapped to match."""
  out = dict(element)
  out["video"] = np.ascontiguousarray(np.asarray(element["video"])[..., ::-1, :])
  for key in HorizontalFlip._TEXT_KEYS:
    if key in out:
      out[key] = swap_left_right(out[key])
  if "motion" in out:
    out["motion"] = _SWAP.get(out["motion"], out["motion"])
  for key in ("start_center", "end_center"):
    if key in out:
      center = np.array(out[key], dtype=np.float32)
      center[0] = 1.0 - center[0]
      out[key] = center
  return out


class TemporalCrop(grain.transforms.RandomMap):
  """Cuts 'video' [T, H, W, C] to `num_frames` frames: at a random offset, or the first ones.

  Raises ValueError if a stored clip is shorter than `num_frames`.
  """

  def __init__(self, num_frames: int, random_offset: bool = True):
    self.num_frames = num_frames
    self.random_offset = random_offset

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    video = element["video"]
    extra = video.shape[0] - self.num_frames
    if extra < 0:
      raise ValueError(
        f"clip has {video.shape[0]} frames but config.data.num_frames="
        f"{self.num_frames}; lower num_frames or re-import with more frames"
      )
    start = int(rng.integers(0, extra + 1)) if self.random_offset else 0
    out = dict(element)
    out["video"] = video[start : start + self.num_frames]
    out["start_frame_offset"] = np.int32(start)
    return out


class VideoToFloat(grain.transforms.Map):
  """'video' uint8 [T, H, W, C] in [0, 255] -> float32 in [-1, 1]."""

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    out = dict(element)
    out["video"] = np.asarray(element["video"], np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
    return out


# ------------------------------------------------------------------ iterator


class _End:
  """Queue marker: the underlying iterator is exhausted."""


class _Failure:
  """Queue marker: the underlying iterator raised."""

  def __init__(self, error: BaseException):
    self.error = error


def _produce(iterator, out: queue.Queue, stop: threading.Event) -> None:
  """Prefetch thread: puts (batch, state after it) into `out` until stopped or exhausted.

  A plain function (no reference to the DataIterator), so an iterator that is
  dropped early is garbage-collected and its __del__ stops this thread.
  """
  while not stop.is_set():
    try:
      batch = next(iterator)
      item = (batch, iterator.get_state())
    except StopIteration:
      item = _End()
    except BaseException as e:  # re-raised in the consumer thread
      item = _Failure(e)
    while not stop.is_set():
      try:
        out.put(item, timeout=0.1)
        break
      except queue.Full:
        continue
    if not isinstance(item, tuple):
      return


class DataIterator:
  """Batches from a grain DataLoader, prefetched on a background thread, with exact state.

  get_state() is the state after the last batch *returned* (not the last one
  prefetched), so restoring it continues with the batch that would have come next.
  """

  def __init__(self, loader: grain.DataLoader, prefetch: int):
    self._iterator = iter(loader)
    self._prefetch = max(0, int(prefetch))
    self._state = self._iterator.get_state()
    self._queue: queue.Queue | None = None
    self._thread: threading.Thread | None = None
    self._stop = threading.Event()
    self._exhausted = False

  def __iter__(self) -> DataIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._exhausted:
      raise StopIteration
    if self._prefetch == 0:
      try:
        batch = next(self._iterator)
      except StopIteration:
        self._exhausted = True
        raise
      self._state = self._iterator.get_state()
      return batch
    self.start_prefetch()
    item = self._queue.get()
    if isinstance(item, _End):
      self._exhausted = True
      raise StopIteration
    if isinstance(item, _Failure):
      self._exhausted = True
      raise item.error
    batch, self._state = item
    return batch

  def start_prefetch(self) -> None:
    """Starts the background thread (done lazily by next(); grain's Orbax handler calls it)."""
    if self._prefetch == 0 or self._thread is not None:
      return
    self._stop.clear()
    self._queue = queue.Queue(maxsize=self._prefetch)
    self._thread = threading.Thread(
      target=_produce, args=(self._iterator, self._queue, self._stop), name="sora_jax-data-prefetch", daemon=True
    )
    self._thread.start()

  def _stop_prefetch(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread, self._queue = None, None

  def get_state(self) -> bytes:
    """Opaque state (grain JSON bytes) after the last returned batch."""
    return self._state

  def set_state(self, state: bytes) -> None:
    """Continues from `state` (from get_state of an iterator over the same source and settings)."""
    self._stop_prefetch()
    self._iterator.set_state(state)
    self._state = state
    self._exhausted = False

  def close(self) -> None:
    """Stops the prefetch thread; next() would continue after the last returned batch."""
    if self._thread is not None:
      self._stop_prefetch()
      self._iterator.set_state(self._state)

  def __del__(self):
    stop = getattr(self, "_stop", None)  # absent if __init__ failed
    if stop is not None:
      stop.set()  # lets an orphaned prefetch thread exit


class _StableReprSource:
  """Wraps a source whose repr() holds a memory address (the default object repr).

  grain stores repr(source) in the iterator state and refuses to restore into a
  source with a different repr, so an address would make every resume fail.
  """

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    return self._source[index]

  def __repr__(self) -> str:
    return f"{type(self._source).__module__}.{type(self._source).__qualname__}(len={len(self._source)})"


def _with_stable_repr(source):
  return _StableReprSource(source) if re.search(r" at 0x[0-9a-f]+", repr(source)) else source


def _allow_grain_workers_outside_absl() -> None:
  """grain worker processes read absl flags; outside `app.run` they must be marked parsed."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def per_process_batch_size(batch_size: int, shard_by_process: bool = True) -> int:
  """The part of the global `batch_size` one process loads."""
  import jax

  processes = jax.process_count() if shard_by_process else 1
  if batch_size < 1 or batch_size % processes:
    raise ValueError(
      f"global batch_size={batch_size} must be a positive multiple of the number of processes ({processes})"
    )
  return batch_size // processes


def make_iterator(
  source,
  *,
  batch_size: int,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  transforms: Sequence[Any] = (),
  worker_count: int = 0,
  prefetch: int = 2,
  shard_by_process: bool = True,
  drop_remainder: bool = True,
  read_threads: int = 2,
) -> DataIterator:
  """A resumable iterator of batches over any random-access `source`.

  Args:
    source: has __len__ and __getitem__(int) -> dict of numpy arrays / str. Its
      repr() is part of the saved state (a default repr with an address is replaced).
    batch_size: GLOBAL batch size; each process gets batch_size / process_count.
    seed: shuffle order and per-record seeds of random transforms.
    shuffle: reshuffle every epoch (False = record order).
    num_epochs: passes over the data; None = repeat forever.
    transforms: grain Map / RandomMap / Filter instances applied per example, in order
      (top-level picklable classes when worker_count > 0).
    worker_count: grain worker processes (0 = load in this process).
    prefetch: batches prepared ahead on a background thread (0 = none).
    shard_by_process: each JAX process reads its own 1/process_count of the records.
    drop_remainder: drop a last incomplete batch (keeps shapes static for jit). A source with
      fewer than num_epochs x batch_size records is then read round again to fill one batch.
    read_threads: grain threads reading and decoding records.
  Returns:
    A DataIterator of dicts of numpy arrays with a leading per-process batch axis
    (strings become numpy str arrays).
  """
  if len(source) == 0:
    raise ValueError(f"cannot iterate over an empty source: {source!r}")
  local_batch = per_process_batch_size(batch_size, shard_by_process)
  if drop_remainder and num_epochs is not None and num_epochs * len(source) < batch_size:
    # A held-out split smaller than one batch (a small import's) would give no batch at all and
    # fail an evaluation at the end of a run: read it round again to fill one batch.
    num_epochs = -(-batch_size // len(source))
    logging.warning(
      "%r holds %d record(s), fewer than one batch of %d: reading it %d times to fill a batch",
      source,
      len(source),
      batch_size,
      num_epochs,
    )
  shard_options = (
    grain.sharding.ShardByJaxProcess(drop_remainder=True) if shard_by_process else grain.sharding.NoSharding()
  )
  source = _with_stable_repr(source)
  sampler = grain.samplers.IndexSampler(
    num_records=len(source), shard_options=shard_options, shuffle=shuffle, num_epochs=num_epochs, seed=seed
  )
  if worker_count > 0:
    _allow_grain_workers_outside_absl()
  loader = grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[*transforms, grain.transforms.Batch(local_batch, drop_remainder=drop_remainder)],
    worker_count=worker_count,
    read_options=grain.ReadOptions(
      num_threads=max(1, read_threads), prefetch_buffer_size=max(1, prefetch) * local_batch
    ),
  )
  return DataIterator(loader, prefetch)


# ------------------------------------------------------------------ videos


def video_transforms(data_cfg, stored_num_frames: int, *, train: bool) -> list[Any]:
  """Per-example transforms for clips stored with `stored_num_frames` frames."""
  ops: list[Any] = []
  if stored_num_frames != data_cfg.num_frames:
    ops.append(TemporalCrop(data_cfg.num_frames, random_offset=train and data_cfg.random_temporal_crop))
  if train and data_cfg.random_flip:
    ops.append(HorizontalFlip())
  ops.append(VideoToFloat())
  return ops


def _check_stored_size(data_cfg, stored_shape: tuple[int, ...], description: str) -> None:
  _, height, width, _ = stored_shape
  if (height, width) != (data_cfg.height, data_cfg.width):
    raise ValueError(
      f"{description} stores {height}x{width} clips but config.data asks for "
      f"{data_cfg.height}x{data_cfg.width}; set config.data.height/width to match "
      f"or build/import the dataset at that size"
    )


def make_video_iterator(
  data_cfg,
  split: str,
  *,
  seed: int,
  train: bool = True,
  extra_transforms: Sequence[Any] = (),
  batch_size: int | None = None,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
) -> DataIterator:
  """Batches of `split`: {'video': float32 [B, T, H, W, 3] in [-1, 1], 'caption': str [B], metadata}.

  train=True: shuffled, repeated forever, with the augmentations config.data enables
  (random_flip, random_temporal_crop). train=False: record order, `num_epochs` passes
  (default 1), no random augmentation. batch_size defaults to config.data.batch_size (global).
  """
  source = datasets.load_data_source(data_cfg, split)
  stored_shape = datasets.stored_video_shape(source)
  _check_stored_size(data_cfg, stored_shape, repr(source))
  return make_iterator(
    source,
    batch_size=batch_size or data_cfg.batch_size,
    seed=seed,
    shuffle=train,
    num_epochs=num_epochs if num_epochs is not None or train else 1,
    transforms=[*video_transforms(data_cfg, stored_shape[0], train=train), *extra_transforms],
    worker_count=data_cfg.worker_count,
    prefetch=data_cfg.prefetch,
    drop_remainder=drop_remainder,
  )


def make_train_iterator(data_cfg, split: str | None = None, *, seed: int, **kwargs) -> DataIterator:
  """Training batches of `split` (default config.data.train_split); see make_video_iterator."""
  return make_video_iterator(data_cfg, split or data_cfg.train_split, seed=seed, train=True, **kwargs)


def make_eval_iterator(data_cfg, split: str | None = None, *, seed: int = 0, **kwargs) -> DataIterator:
  """One pass over `split` (default config.data.eval_split) in order; see make_video_iterator."""
  return make_video_iterator(data_cfg, split or data_cfg.eval_split, seed=seed, train=False, **kwargs)
