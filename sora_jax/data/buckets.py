"""Bucket batching: every batch holds clips of one size, the sizes drawn from a table in config.

The table (Open-Sora style, keyed by "TxHxW" in pixels and frames):

    BUCKETS = {"17x32x32": (0.4, 32), "17x32x48": (0.2, 0), "1x32x32": (0.1, 0)}
    #          size         probability, batch size (0 = scaled by tokens)
    config.data.batching = "buckets"
    config.data.buckets = format_table(BUCKETS)   # "17x32x32=0.5714285714285714:32,..." (a string field, so
                                                  # --config.data.buckets=... overrides it and config.json keeps it)

A batch size of 0 is `data.batch_size` scaled by the size's DiT tokens against the base
size (data.num_frames x height x width), so every step costs about the same: a 1-frame
image bucket gets ~5x the batch of a 17-frame clip of the same area. Scaled sizes are
rounded down to a multiple of `multiple` (the devices a batch is split over) and at least
that multiple.

    table = parse_table(config.data.buckets)                     # {(17, 32, 32): (0.4, 32), ...}
    buckets = resolve_buckets(table, base_batch=32, base_size=(17, 32, 32), tokens_of=fn)
    it = BucketMixture({size: iterator, ...}, probabilities, seed=0)
    batch = next(it)          # one size; which one is a pure function of (seed, batch index)
    state = it.get_state()    # bytes: the batch index + every bucket's grain state
    it.set_state(state)       # the next batch is the one an uninterrupted run would have seen

Each bucket's iterator is an ordinary `pipeline.make_iterator` (grain, shuffled, repeated,
sharded by JAX process), so multi-host sharding works as for one size: every process draws
the same bucket at the same step and loads its share of that bucket's batch.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Size = tuple[int, int, int]  # (frames, height, width) in pixels

BATCHINGS = ("single", "buckets")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$")


def parse_size(text: str | Size) -> Size:
  """'17x32x48' (frames x height x width) -> (17, 32, 48)."""
  if not isinstance(text, str):
    size = tuple(int(v) for v in text)
    if len(size) != 3 or min(size) < 1:
      raise ValueError(f"a clip size is (frames, height, width) of positive ints, got {text!r}")
    return size
  match = _SIZE_RE.match(text)
  if not match:
    raise ValueError(f"bucket size {text!r} is not FRAMESxHEIGHTxWIDTH, e.g. '17x32x48'")
  return parse_size(tuple(int(g) for g in match.groups()))


def size_name(size: Size) -> str:
  return "x".join(str(int(v)) for v in size)


def parse_table(table: Mapping[str, Any] | str) -> dict[Size, tuple[float, int]]:
  """A bucket table -> {(frames, height, width): (probability, batch_size)}, probabilities normalised.

  Accepts a mapping {"TxHxW": (probability, batch_size)} (a config's ConfigDict too) or the
  command-line form "17x32x32=0.4:32,1x32x32=0.1:0" (batch size optional, 0 = scaled by tokens).
  Raises ValueError naming the wrong entry.
  """
  if isinstance(table, str):
    entries = {}
    for item in filter(None, (p.strip() for p in table.split(","))):
      key, _, value = item.partition("=")
      prob, _, batch = value.partition(":")
      if not prob:
        raise ValueError(f"bucket {item!r} needs a probability: SIZE=PROBABILITY[:BATCH], e.g. 17x32x32=0.5:32")
      entries[key] = (float(prob), int(batch or 0))
    table = entries
  out: dict[Size, tuple[float, int]] = {}
  for key, value in dict(table).items():
    size = parse_size(key)
    try:
      prob, batch = (float(value[0]), int(value[1])) if len(value) == 2 else (None, None)
    except (TypeError, ValueError):
      prob = None
    if prob is None or prob < 0 or batch < 0:
      raise ValueError(f"bucket {key!r}: {value!r} must be (probability >= 0, batch_size >= 0; 0 = scaled by tokens)")
    if size in out:
      raise ValueError(f"bucket {size_name(size)} is listed twice")
    out[size] = (prob, batch)
  if not out:
    raise ValueError("the bucket table is empty: give at least one 'TxHxW': (probability, batch_size)")
  total = sum(p for p, _ in out.values())
  if total <= 0:
    raise ValueError(f"bucket probabilities sum to {total}; at least one must be > 0")
  return {size: (p / total, b) for size, (p, b) in out.items()}


def format_table(table: Mapping[str, Any] | str) -> str:
  """A bucket table in the string form config.data.buckets holds: "17x32x32=0.5:0,1x32x32=0.5:0" (normalised)."""
  return ",".join(f"{size_name(size)}={prob!r}:{batch}" for size, (prob, batch) in parse_table(table).items())


@dataclasses.dataclass(frozen=True)
class Bucket:
  """One size of the mixture: how often it is drawn, its global batch size and tokens per clip."""

  size: Size
  probability: float
  batch_size: int
  tokens: int

  @property
  def name(self) -> str:
    return size_name(self.size)


def resolve_buckets(
  table: Mapping[Size, tuple[float, int]],
  *,
  base_batch: int,
  base_size: Size,
  tokens_of: Callable[[Size], int],
  multiple: int = 1,
) -> list[Bucket]:
  """Buckets with batch sizes filled in: 0 = base_batch x tokens(base_size) / tokens(size), rounded down
  to a multiple of `multiple` (at least `multiple`); a given batch size must be a multiple of it."""
  base_tokens = tokens_of(tuple(base_size))
  buckets = []
  for size, (prob, batch) in table.items():
    tokens = tokens_of(size)
    if batch == 0:
      batch = max(multiple, int(base_batch * base_tokens / tokens) // multiple * multiple)
    elif batch % multiple:
      raise ValueError(
        f"bucket {size_name(size)}: batch size {batch} must be a multiple of {multiple} "
        f"(the devices / processes a batch is split over); use {max(multiple, batch // multiple * multiple)}"
      )
    buckets.append(Bucket(size=size, probability=prob, batch_size=batch, tokens=tokens))
  return buckets


def bucket_for_step(seed: int, index: int, probabilities: np.ndarray) -> int:
  """Which bucket batch `index` comes from: a pure function of (seed, index), the same on every process."""
  u = np.random.default_rng([int(seed), int(index), 0x5B0C4E7]).random()
  return int(min(np.searchsorted(np.cumsum(probabilities), u, side="right"), len(probabilities) - 1))


class BucketMixture:
  """Batches drawn from one grain iterator per size; resumable exactly (see module docstring).

  iterators: {name: iterator with __next__, get_state() -> bytes, set_state(bytes)}; their
  states are saved together with the number of batches returned, which fixes the next draw.
  """

  def __init__(self, iterators: Mapping[str, Any], probabilities: Mapping[str, float], seed: int):
    if set(iterators) != set(probabilities):
      raise ValueError(f"iterators {sorted(iterators)} and probabilities {sorted(probabilities)} differ")
    self.names = list(iterators)
    self._iterators = dict(iterators)
    self._probabilities = np.asarray([probabilities[n] for n in self.names], np.float64)
    self._seed = int(seed)
    self._index = 0
    self.counts = dict.fromkeys(self.names, 0)  # batches returned per bucket (this session)

  def __iter__(self) -> BucketMixture:
    return self

  def next_name(self) -> str:
    """The bucket the next batch comes from."""
    return self.names[bucket_for_step(self._seed, self._index, self._probabilities)]

  def __next__(self) -> dict[str, np.ndarray]:
    name = self.next_name()
    batch = next(self._iterators[name])
    self._index += 1
    self.counts[name] += 1
    return batch

  def get_state(self) -> bytes:
    states = {}
    for name, it in self._iterators.items():
      state = it.get_state()
      states[name] = state.decode("utf-8") if isinstance(state, (bytes, bytearray)) else state
    return json.dumps({"index": self._index, "seed": self._seed, "buckets": states}, sort_keys=True).encode()

  def set_state(self, state: bytes) -> None:
    saved = json.loads(state)
    if sorted(saved["buckets"]) != sorted(self.names):
      raise ValueError(
        f"the saved data state has buckets {sorted(saved['buckets'])} but config.data.buckets has "
        f"{sorted(self.names)}; resume with the bucket table the run was started with"
      )
    for name, it in self._iterators.items():
      s = saved["buckets"][name]
      it.set_state(s.encode("utf-8") if isinstance(s, str) else s)
    self._index = int(saved["index"])

  def close(self) -> None:
    for it in self._iterators.values():
      close = getattr(it, "close", None)
      if close is not None:
        close()


def trained_sizes(config) -> list[Size]:
  """The clip sizes a run trained on: its bucket table's (data.batching="buckets") or its one size."""
  data = config.data
  if data.get("batching", "single") == "buckets" and data.get("buckets", None):
    return list(parse_table(data.buckets))
  return [(int(data.num_frames), int(data.height), int(data.width))]


def parse_sizes(text: str) -> list[Size]:
  """'17x32x32,1x32x32' -> [(17, 32, 32), (1, 32, 32)]."""
  return [parse_size(part) for part in text.split(",") if part.strip()]
