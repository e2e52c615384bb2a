"""Safetensors checkpoints on disk: read lazily (single file or sharded with an index), write sharded.

    ckpt = SafetensorsCheckpoint("Wan2.1-T2V-1.3B-Diffusers/transformer")
    ckpt.keys(); ckpt.shape("proj_out.weight"); ckpt.file_of("proj_out.weight")
    array = ckpt.read("proj_out.weight")            # numpy view of the memory-mapped file
    write_checkpoint(folder, "diffusion_pytorch_model", tensors, max_shard_bytes=5 << 30)

The format is an 8-byte little-endian header length, a JSON header {key: {dtype, shape,
data_offsets}} and the raw little-endian bytes. The header is parsed here and tensors are
`np.frombuffer` views of an `mmap` of the file, so nothing is read until a tensor is used,
no torch or pickle is involved, and bfloat16 / float8 tensors (which `safetensors.numpy`
cannot return) come back as `ml_dtypes` arrays. Writing goes through `safetensors.numpy`.

A folder holds either one `*.safetensors` file or an index `*.safetensors.index.json`
({"weight_map": {key: shard file}}) next to its shards, as `save_pretrained` writes them.
Every problem (no weights, a shard named by the index but missing, a truncated file, a
broken header) is an error naming the file, and the key where there is one.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable, Mapping

import ml_dtypes
import numpy as np

DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "F8_E4M3": ml_dtypes.float8_e4m3fn,
  "F8_E5M2": ml_dtypes.float8_e5m2,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}
INDEX_SUFFIX = ".safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20


class SafetensorsFile:
  """One `.safetensors` file: its header, and tensors as read-only views of the mapped file."""

  def __init__(self, path: str):
    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"safetensors file {self.path} does not exist")
    size = os.path.getsize(self.path)
    with open(self.path, "rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise ValueError(f"{self.path} is not a safetensors file (only {size} bytes, no header)")
      (header_len,) = struct.unpack("<Q", raw)
      if header_len > min(MAX_HEADER_BYTES, size - 8):
        raise ValueError(f"{self.path} is not a safetensors file (header length {header_len} for {size} bytes)")
      try:
        header = json.loads(f.read(header_len))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{self.path}: the safetensors header is not valid JSON ({e})") from None
    self.metadata = header.pop("__metadata__", None) or {}
    self._entries: dict[str, dict] = header
    self._data_start = 8 + header_len
    self._size = size
    self._mmap: mmap.mmap | None = None
    for key, entry in header.items():
      if entry.get("dtype") not in DTYPES:
        raise ValueError(f"{self.path}: tensor {key!r} has dtype {entry.get('dtype')!r}; readable: {sorted(DTYPES)}")
      begin, end = entry["data_offsets"]
      expected = int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(DTYPES[entry["dtype"]]).itemsize
      if end - begin != expected:
        raise ValueError(
          f"{self.path}: tensor {key!r} of shape {entry['shape']} {entry['dtype']} should take {expected} bytes, "
          f"its offsets give {end - begin}"
        )
      if self._data_start + end > size:
        raise ValueError(
          f"{self.path} is truncated: tensor {key!r} ends at byte {self._data_start + end} but the file has "
          f"{size} bytes (an interrupted download or copy?)"
        )

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._entries[key]["shape"])

  def dtype(self, key: str) -> np.dtype:
    return np.dtype(DTYPES[self._entries[key]["dtype"]])

  def read(self, key: str) -> np.ndarray:
    """The tensor `key`: a read-only numpy view of the mapped file (copy it to modify)."""
    if key not in self._entries:
      raise KeyError(f"{self.path} has no tensor {key!r}")
    if self._mmap is None:
      with open(self.path, "rb") as f:
        self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    entry = self._entries[key]
    begin, _ = entry["data_offsets"]
    count = int(np.prod(entry["shape"], dtype=np.int64))
    array = np.frombuffer(self._mmap, dtype=self.dtype(key), count=count, offset=self._data_start + begin)
    return array.reshape(entry["shape"])


class SafetensorsCheckpoint:
  """The weights of one model folder: a single safetensors file, or shards with an index.

  Args:
    folder: e.g. `<wan folder>/transformer`.
  Raises:
    FileNotFoundError: no weights in the folder, or a shard the index names is missing.
    ValueError: several unindexed safetensors files, or a broken file (see `SafetensorsFile`).
  """

  def __init__(self, folder: str):
    self.folder = os.fspath(folder)
    if not os.path.isdir(self.folder):
      raise FileNotFoundError(f"weights folder {self.folder} does not exist")
    names = sorted(os.listdir(self.folder))
    indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
    singles = [n for n in names if n.endswith(".safetensors")]
    if len(indexes) > 1:
      raise ValueError(f"{self.folder} holds several safetensors indexes {indexes}; keep one")
    if indexes:
      self.index_path = os.path.join(self.folder, indexes[0])
      with open(self.index_path) as f:
        try:
          weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
          raise ValueError(f"{self.index_path} is not a safetensors index (needs a 'weight_map'): {e}") from None
      missing = sorted({s for s in weight_map.values() if not os.path.isfile(os.path.join(self.folder, s))})
      if missing:
        keys = [k for k, s in weight_map.items() if s == missing[0]]
        raise FileNotFoundError(
          f"{self.index_path} names shard(s) missing from {self.folder}: {missing} (e.g. {missing[0]} holds "
          f"{len(keys)} tensors such as {keys[:3]}); copy the complete checkpoint"
        )
      self._files = {s: SafetensorsFile(os.path.join(self.folder, s)) for s in sorted(set(weight_map.values()))}
      self._where = {}
      for key, shard in weight_map.items():
        if key not in self._files[shard]._entries:
          raise ValueError(f"{self.index_path} places {key!r} in {shard}, but {shard} has no such tensor")
        self._where[key] = shard
    else:
      self.index_path = None
      if not singles:
        raise FileNotFoundError(
          f"{self.folder} holds no weights (no *.safetensors file or *{INDEX_SUFFIX}); pickled .bin/.pt "
          f"checkpoints are not read: re-save them with save_pretrained(safe_serialization=True)"
        )
      if len(singles) > 1:
        raise ValueError(f"{self.folder} holds several safetensors files {singles} but no index to tell them apart")
      self._files = {singles[0]: SafetensorsFile(os.path.join(self.folder, singles[0]))}
      self._where = {k: singles[0] for k in self._files[singles[0]].keys()}

  def keys(self) -> set[str]:
    return set(self._where)

  def file_of(self, key: str) -> str:
    """The path of the file holding `key`."""
    return self._files[self._where[key]].path

  def shape(self, key: str) -> tuple[int, ...]:
    return self._files[self._where[key]].shape(key)

  def dtype(self, key: str) -> np.dtype:
    return self._files[self._where[key]].dtype(key)

  def read(self, key: str) -> np.ndarray:
    if key not in self._where:
      raise KeyError(f"{self.folder} has no tensor {key!r}")
    return self._files[self._where[key]].read(key)

  def total_bytes(self) -> int:
    return sum(int(np.prod(self.shape(k), dtype=np.int64)) * self.dtype(k).itemsize for k in self._where)


def _shards(tensors: Mapping[str, np.ndarray], max_shard_bytes: int) -> list[list[str]]:
  """Keys grouped in order into shards of at most max_shard_bytes (a bigger tensor gets its own)."""
  groups, current, size = [], [], 0
  for key, value in tensors.items():
    nbytes = np.asarray(value).nbytes
    if current and size + nbytes > max_shard_bytes:
      groups.append(current)
      current, size = [], 0
    current.append(key)
    size += nbytes
  if current or not groups:
    groups.append(current)
  return groups


def write_checkpoint(
  folder: str,
  name: str,
  tensors: Mapping[str, np.ndarray],
  *,
  max_shard_bytes: int = 5 << 30,
  metadata: Mapping[str, str] | None = None,
) -> list[str]:
  """Writes `tensors` as `<name>.safetensors`, or as shards `<name>-0000i-of-0000n.safetensors` plus
  `<name>.safetensors.index.json` when they exceed `max_shard_bytes` (as `save_pretrained` names them).

  Returns the paths written. Files are written under a temporary name and renamed, so an
  interrupted export leaves no half file under the final name.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  os.makedirs(folder, exist_ok=True)
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  groups = _shards(tensors, max_shard_bytes)
  meta = dict(metadata or {"format": "pt"})
  paths, weight_map = [], {}
  for i, keys in enumerate(groups):
    filename = f"{name}.safetensors" if len(groups) == 1 else f"{name}-{i + 1:05d}-of-{len(groups):05d}.safetensors"
    path = os.path.join(folder, filename)
    save_file({k: tensors[k] for k in keys}, path + ".tmp", metadata=meta)
    os.replace(path + ".tmp", path)
    paths.append(path)
    weight_map.update({k: filename for k in keys})
  if len(groups) > 1:
    index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))}, "weight_map": weight_map}
    path = os.path.join(folder, name + INDEX_SUFFIX)
    with open(path + ".tmp", "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    paths.append(path)
  return paths


def describe_keys(keys: Iterable[str], limit: int = 12) -> str:
  """A short, sorted listing of keys for error messages ("a, b, c ... and 40 more")."""
  keys = sorted(keys)
  head = ", ".join(keys[:limit])
  return head + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")
