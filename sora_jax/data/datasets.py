"""Which dataset a config names, opened as a random-access source of decoded examples.

    source = load_data_source(config.data, "train")
    len(source)                 # number of clips
    source[0]                   # {'video': uint8 [T, H, W, 3], 'caption': str, ...metadata}

`config.data.dataset` picks the dataset:
  "shapes"        the built-in synthetic dataset, built into data_dir on first use
                  (sora_jax.data.shapes_builder);
  "video_folder"  your own videos imported with tools/import_videos.py --name=NAME,
                  selected with config.data.builder_config=NAME.

TFDS decodes text features to bytes; `DecodedSource` turns them into str so every
consumer sees captions as str.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sora_jax.data import shapes_builder, video_folder_builder


class DecodedSource:
  """A grain random-access source over a TFDS data source, with bytes values decoded to str.

  Picklable (grain worker processes receive a copy).
  """

  def __init__(self, source, description: str, dtypes: dict[str, np.dtype] | None = None):
    self._source = source
    self.description = description
    self._dtypes = dict(dtypes or {})

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
  return DecodedSource(builder.as_data_source(split=split), f"{description}:{split}", _scalar_dtypes(builder))


def _shapes_source(data_cfg, split: str) -> DecodedSource:
  builder = shapes_builder.build_dataset(data_cfg, verbose=False)
  return source_from_builder(builder, split, f"shapes/{builder.builder_config.name}")


def _video_folder_source(data_cfg, split: str) -> DecodedSource:
  builder = video_folder_builder.load_builder(data_cfg.builder_config, data_cfg.data_dir)
  return source_from_builder(builder, split, f"video_folder/{data_cfg.builder_config}")


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


def stored_video_shape(source) -> tuple[int, ...]:
  """Shape [T, H, W, 3] of the clips in `source` (read from its first example)."""
  if len(source) == 0:
    raise ValueError(f"{source!r} is empty; build or import more clips")
  return tuple(np.shape(source[0]["video"]))
