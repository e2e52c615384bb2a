"""Which dataset a config names, opened as a random-access source of decoded examples.

    source = load_data_source(config.data, "train")
    len(source)                 # number of clips
    source[0]                   # {'video': uint8 [T, H, W, 3], 'caption': str, ...metadata}

`config.data.dataset` picks the dataset:
  "shapes"        the built-in synthetic dataset, built into data_dir on first use
                  (sora_jax.data.shapes_builder); config.data.builder_config picks its
                  concept set: "" (default) or "new_concepts" (orange, diamond);
  "video_folder"  your own videos imported with tools/import_videos.py --name=NAME,
                  selected with config.data.builder_config=NAME.

Several sizes (native-size training):

    sources = load_sources_by_size(config.data, "train", [(17, 32, 32), (17, 32, 48), (1, 32, 32)])
    # {(17, 32, 32): source, ...}: one fixed-shape source per (frames, height, width)

shapes builds one dataset per size; an import made with --buckets (keep-aspect mode) holds
clips of several sizes, which come back grouped by size (sizes=None: all that it holds).

TFDS decodes text features to bytes; `DecodedSource` turns them into str so every
consumer sees captions as str.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sora_jax.data import shapes_builder, video_folder_builder


class DecodedSource:
  """A grain random-access source over a TFDS data source, with bytes values decoded to str.

  Picklable (grain worker processes receive a copy).
  """

  def __init__(
    self,
    source,
    description: str,
    dtypes: dict[str, np.dtype] | None = None,
    video_shape: tuple[int | None, ...] | None = None,
  ):
    self._source = source
    self.description = description
    self._dtypes = dict(dtypes or {})
    self.video_shape = video_shape  # [T, H, W, 3] as stored; None where clips differ (several sizes)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[index]
    return {key: self._decode(key, value) for key, value in example.items()}

  def _decode(self, key: str, value: Any) -> Any:
    if isinstance(value, bytes):
      return value.decode("utf-8")
    if key in self._dtypes and not isinstance(value, np.ndarray):
      return np.asarray(value, self._dtypes[key])  # TFDS gives python scalars; keep the stored dtype
    return value

  def __repr__(self) -> str:
    return f"DecodedSource({self.description}, {len(self)} examples)"


def _check_split(builder, split: str) -> None:
  available = tuple(builder.info.splits.keys())
  if split not in available:
    raise ValueError(f"dataset {builder.info.full_name!r} has no split {split!r}; available splits: {available}")


def _scalar_dtypes(builder) -> dict[str, np.dtype]:
  """np dtype of every scalar feature (TFDS decodes those to python int / float)."""
  return {
    key: np.dtype(feature.np_dtype)
    for key, feature in builder.info.features.items()
    if getattr(feature, "shape", None) == () and np.dtype(feature.np_dtype).kind in "biuf"
  }


def source_from_builder(builder, split: str, description: str) -> DecodedSource:
  """A DecodedSource over `split` of a prepared TFDS builder (ArrayRecord)."""
  _check_split(builder, split)
  video = builder.info.features["video"] if "video" in builder.info.features else None
  return DecodedSource(
    builder.as_data_source(split=split),
    f"{description}:{split}",
    _scalar_dtypes(builder),
    tuple(video.shape) if video is not None else None,
  )


def _shapes_source(data_cfg, split: str, size: tuple[int, int, int] | None = None) -> DecodedSource:
  builder = shapes_builder.build_dataset(data_cfg, size=size, verbose=False)
  return source_from_builder(builder, split, f"shapes/{builder.builder_config.name}")


def _video_folder_source(data_cfg, split: str) -> DecodedSource:
  builder = video_folder_builder.load_builder(data_cfg.builder_config, data_cfg.data_dir)
  return source_from_builder(builder, split, f"video_folder/{data_cfg.builder_config}")


class SubsetSource:
  """The records `indices` of a random-access source, in that order (e.g. the clips of one size).

  Picklable; its repr names the source and the subset so grain's saved iterator state
  matches only the same subset.
  """

  def __init__(self, source, indices: Sequence[int], description: str):
    self._source = source
    self._indices = np.asarray(indices, np.int64)
    self.description = description

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._source[int(self._indices[index])]

  def __repr__(self) -> str:
    return f"SubsetSource({self.description}, {len(self)} examples)"


def _video_folder_sources_by_size(data_cfg, split: str, sizes) -> dict[tuple[int, int, int], Any]:
  builder = video_folder_builder.load_builder(data_cfg.builder_config, data_cfg.data_dir)
  description = f"video_folder/{data_cfg.builder_config}"
  source = source_from_builder(builder, split, description)
  per_clip = video_folder_builder.clip_sizes(builder, split)  # int [N, 3]
  held = sorted({tuple(int(v) for v in size) for size in per_clip})
  wanted = held if sizes is None else list(shapes_builder.check_sizes(sizes))
  missing = [size for size in wanted if size not in held]
  if missing:
    raise ValueError(f"{description}:{split} holds no clips of size(s) {missing}; it holds {held}")
  if len(held) == 1:
    return {held[0]: source}
  return {
    size: SubsetSource(
      source,
      np.flatnonzero((per_clip == np.asarray(size)).all(axis=1)),
      f"{description}:{split}:{'x'.join(map(str, size))}",
    )
    for size in wanted
  }


_SOURCES: dict[str, Callable[[Any, str], DecodedSource]] = {
  "shapes": _shapes_source,
  "video_folder": _video_folder_source,
}


def load_data_source(data_cfg, split: str) -> DecodedSource:
  """The `split` of the dataset `data_cfg` (a `config.data` section) describes.

  Returns a random-access source of dicts: 'video' uint8 [T, H, W, 3], 'caption' str,
  plus the dataset's metadata (shapes: canonical_caption, color, shape, motion,
  size_frac, start_center, end_center, index; video_folder: source_path,
  start_frame, ...).
  """
  if data_cfg.dataset not in _SOURCES:
    raise ValueError(f"config.data.dataset={data_cfg.dataset!r} is not one of {tuple(_SOURCES)}")
  return _SOURCES[data_cfg.dataset](data_cfg, split)


def load_sources_by_size(
  data_cfg, split: str, sizes: Sequence[tuple[int, int, int]] | None = None
) -> dict[tuple[int, int, int], Any]:
  """The `split` of the dataset `data_cfg` names, as one random-access source per clip size.

  Args:
    data_cfg: a `config.data` section.
    split: "train", "validation" or "test".
    sizes: (frames, height, width) triples. shapes: the sizes to build (required; e.g.
      shapes_builder.SIZES). video_folder: None = every size the import holds, else
      only those (each must be in the import).
  Returns:
    {(frames, height, width): source} in the order of `sizes` (video_folder with
    sizes=None: by size); every example of a source has video uint8 [frames, height, width, 3].
  """
  if data_cfg.dataset == "shapes":
    if sizes is None:
      raise ValueError(
        "the shapes dataset is built per size: pass sizes, e.g. sora_jax.data.shapes_builder.SIZES "
        f"= {shapes_builder.SIZES}"
      )
    return {size: _shapes_source(data_cfg, split, size) for size in shapes_builder.check_sizes(sizes)}
  if data_cfg.dataset == "video_folder":
    return _video_folder_sources_by_size(data_cfg, split, sizes)
  raise ValueError(f"config.data.dataset={data_cfg.dataset!r} is not one of {tuple(_SOURCES)}")


def stored_video_shape(source) -> tuple[int, ...]:
  """Shape [T, H, W, 3] of the clips in `source` (read from its first example).

  Raises ValueError for a source whose clips have several sizes (a keep-aspect import):
  one shape per batch needs load_sources_by_size.
  """
  if len(source) == 0:
    raise ValueError(f"{source!r} is empty; build or import more clips")
  declared = getattr(source, "video_shape", None)
  if declared is not None and None in declared:
    raise ValueError(
      f"{source!r} holds clips of several sizes (imported with --buckets); batches need one size: "
      f"open it per size with sora_jax.data.datasets.load_sources_by_size, or re-import it at one --height/--width"
    )
  return tuple(np.shape(source[0]["video"]))
