"""TFDS builder for a folder of your own videos: the same ArrayRecord format as "shapes".

    builder, summary = import_video_folder("my_videos/", name="my_clips",
                                           captions=CsvCaptions("my_videos/captions.csv"),
                                           settings=ClipSettings(num_frames=17, height=32, width=32, fps=8))
    builder = load_builder("my_clips", data_dir)     # later, e.g. from load_data_source

Written to <data_dir>/video_folder/<name>/<version>/, with splits 'train' and (when
validation_fraction > 0 and there are >= 2 videos) 'validation', split by video.
Features per clip:
  video         uint8 [T, H, W, 3], zlib-compressed Tensor
  caption       str
  source_path   str, the video file relative to the videos folder
  start_frame   int32, first frame of the clip in the video resampled to the target fps
  clip_index    int32, position of the clip in its video
An `import_summary.json` beside the data records what was imported and skipped.
Reading it back needs no caption source: `load_builder` opens the folder directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from sora_jax.data import importer
from sora_jax.data.shapes_builder import resolve_data_dir
from sora_jax.data.tfds_compat import LocalBuilderMixin, builder_code_path, prepare_locally

VERSION = "1.0.0"
SUMMARY_FILE = "import_summary.json"


@dataclasses.dataclass(kw_only=True)
class VideoFolderConfig(tfds.core.BuilderConfig):
  """Where the videos are and the clip format; `name` is the dataset name users pick."""

  videos_dir: str = ""
  num_frames: int = 17
  height: int = 32
  width: int = 32
  fps: float = 8.0
  stride: int = 0
  validation_fraction: float = 0.1


class VideoFolder(LocalBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """Clips cut from a folder of video files, with captions from a CaptionSource."""

  name = "video_folder"
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {VERSION: "Initial release."}
  code_path = builder_code_path(__file__)

  def __init__(
    self,
    *,
    caption_source: importer.CaptionSource | None = None,
    summary: importer.ImportSummary | None = None,
    **kwargs,
  ):
    self._caption_source = caption_source
    self.summary = summary if summary is not None else importer.ImportSummary()
    super().__init__(**kwargs)

  @property
  def settings(self) -> importer.ClipSettings:
    cfg: VideoFolderConfig = self.builder_config
    return importer.ClipSettings(
      num_frames=cfg.num_frames, height=cfg.height, width=cfg.width, fps=cfg.fps, stride=cfg.stride
    )

  def _info(self) -> tfds.core.DatasetInfo:
    cfg: VideoFolderConfig = self.builder_config
    return self.dataset_info_from_configs(
      description=__doc__,
      disable_shuffling=True,
      features=tfds.features.FeaturesDict(
        {
          "video": tfds.features.Tensor(
            shape=(cfg.num_frames, cfg.height, cfg.width, 3), dtype=np.uint8, encoding="zlib"
          ),
          "caption": tfds.features.Text(),
          "source_path": tfds.features.Text(),
          "start_frame": tfds.features.Scalar(dtype=np.int32),
          "clip_index": tfds.features.Scalar(dtype=np.int32),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    if self._caption_source is None:
      raise ValueError(
        "building a video_folder dataset needs a caption_source; use import_video_folder(...) or tools/import_videos.py"
      )
    videos_dir = Path(self.builder_config.videos_dir)
    paths = self._caption_source.videos(videos_dir)  # raises on missing files / columns
    if not paths:
      raise ValueError(f"no videos ({', '.join(importer.VIDEO_SUFFIXES)}) found in {os.fspath(videos_dir)!r}")
    settings = self.settings
    splits = importer.split_videos(
      paths, self.builder_config.validation_fraction, usable=lambda path: importer.has_clips(path, settings)
    )
    return {split: self._generate_examples(split, split_paths) for split, split_paths in splits.items()}

  def _generate_examples(self, split: str, paths: list[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    progress = tqdm.tqdm(paths, desc=f"video_folder/{self.builder_config.name} {split}", unit="video", leave=False)
    yield from importer.import_examples(
      progress, self._caption_source, self.settings, Path(self.builder_config.videos_dir), self.summary, split
    )


def dataset_dir(name: str, data_dir: str = "") -> Path:
  """<data_dir>/video_folder/<name>: where an import called `name` lives (all versions)."""
  if not name:
    raise ValueError(
      "an imported dataset needs a name (tools/import_videos.py --name=..., config.data.builder_config=...)"
    )
  return Path(resolve_data_dir(data_dir)) / VideoFolder.name / name


def import_video_folder(
  videos_dir: str | os.PathLike,
  *,
  name: str,
  captions: importer.CaptionSource,
  settings: importer.ClipSettings,
  data_dir: str = "",
  validation_fraction: float = 0.1,
  overwrite: bool = False,
  verbose: bool = True,
) -> tuple[VideoFolder, importer.ImportSummary]:
  """Imports every video of `videos_dir` as dataset `name` into `data_dir`.

  Raises FileExistsError if `name` was imported before (pass overwrite=True to
  replace it), FileNotFoundError / ValueError for missing files or CSV columns.
  """
  target = dataset_dir(name, data_dir)
  if target.exists():
    if not overwrite:
      raise FileExistsError(
        f"a dataset named {name!r} already exists at {os.fspath(target)!r}; "
        f"pick another --name or pass --overwrite to replace it"
      )
    shutil.rmtree(target)
  config = VideoFolderConfig(
    name=name,
    version=VERSION,
    release_notes={VERSION: "Imported."},
    description=f"videos from {os.fspath(videos_dir)}, captions from {captions.describe()}",
    videos_dir=os.path.abspath(videos_dir),
    num_frames=settings.num_frames,
    height=settings.height,
    width=settings.width,
    fps=settings.fps,
    stride=settings.stride,
    validation_fraction=validation_fraction,
  )
  summary = importer.ImportSummary()
  start = time.time()
  builder = VideoFolder(
    config=config,
    caption_source=captions,
    summary=summary,
    data_dir=resolve_data_dir(data_dir),
    file_format="array_record",
  )
  try:
    prepare_locally(builder)
  except AssertionError as e:  # TFDS: "No examples were yielded"
    if sum(summary.clips.values()):
      raise
    raise ValueError(
      f"no clips could be made from the videos in {os.fspath(videos_dir)!r}:\n{summary.describe()}"
    ) from e
  with open(os.path.join(builder.data_dir, SUMMARY_FILE), "w") as f:
    json.dump({"config": dataclasses.asdict(config), "summary": summary.to_dict()}, f, indent=2, default=str)
  if verbose:
    print(f"video_folder/{name}: {summary.describe()}\n  built in {time.time() - start:.1f} s at {builder.data_dir}")
  return builder, summary


def load_builder(name: str, data_dir: str = "") -> tfds.core.DatasetBuilder:
  """A read-only builder for the import called `name` (newest version), without its caption source."""
  root = dataset_dir(name, data_dir)
  versions = sorted(
    (p for p in root.glob("*") if tfds.core.Version.is_valid(p.name) and (p / "dataset_info.json").exists()),
    key=lambda p: tfds.core.Version(p.name),
  )
  if not versions:
    raise FileNotFoundError(
      f"no imported dataset {name!r} under {os.fspath(root.parent)!r}; create it with "
      f"tools/import_videos.py --name={name} --videos_dir=... --data_dir=..."
    )
  return tfds.builder_from_directory(versions[-1])
