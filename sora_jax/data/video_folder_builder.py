"""TFDS builder for a folder of your own videos: the same ArrayRecord format as "shapes".

    builder, summary = import_video_folder("my_videos/", name="my_clips",
                                           captions=CsvCaptions("my_videos/captions.csv"),
                                           settings=ClipSettings(num_frames=17, height=32, width=32, fps=8))
    builder = load_builder("my_clips", data_dir)     # later, e.g. from load_data_source

Written to <data_dir>/video_folder/<name>/<version>/, with splits 'train', 'validation' and
'test' (sora_jax.data.import_splits says which footage goes where; a fraction of 0 drops
that split). Features per clip:
  video         uint8 [T, H, W, 3], zlib-compressed Tensor ([T, None, None, 3] when the
                import keeps aspect ratios with several buckets)
  caption       str
  source_path   str, the video file relative to the videos folder
  start_frame   int32, first frame of the clip in the video resampled to the target fps
  clip_index    int32, position of the clip among the clips of its video in its split
An `import_summary.json` beside the data records what was imported, how the footage was
split, what was skipped and the size of every clip (`clip_sizes`). Reading it back needs no
caption source: `load_builder` opens the folder directly.

Imports never destroy: everything is built in a hidden temporary folder beside the
datasets and moved into place only when the import succeeded, so a failed import (bad
input, no readable video, a crash) leaves any previous dataset of that name as it was and
no half folder that blocks the name. Bad input is reported before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from sora_jax.data import import_splits, importer
from sora_jax.data.shapes_builder import resolve_data_dir
from sora_jax.data.tfds_compat import LocalBuilderMixin, builder_code_path, prepare_locally

# 1.1.0: a test split, footage split by time when there are few videos, integer keys (records in
# the order they were made), keep-aspect buckets.
VERSION = "1.1.0"
RELEASE_NOTES = {"1.0.0": "Imported.", "1.1.0": "Test split, split by time for few videos, keep-aspect buckets."}
SUMMARY_FILE = "import_summary.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TEMP_PREFIX = ".importing-"  # <root>/.importing-<name>.<host>.<pid>-<random>: a build in progress
_REPLACED_PREFIX = ".replaced-"  # <root>/.replaced-<name>.<host>.<pid>: the dataset an overwrite replaces


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
  test_fraction: float = 0.1
  split_by: str = "auto"
  buckets: tuple[tuple[int, int], ...] = ()


class VideoFolder(LocalBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """Clips cut from a folder of video files, with captions from a CaptionSource."""

  name = "video_folder"
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = RELEASE_NOTES
  code_path = builder_code_path(__file__)

  def __init__(
    self,
    *,
    caption_source: importer.CaptionSource | None = None,
    plan: import_splits.SplitPlan | None = None,
    summary: importer.ImportSummary | None = None,
    **kwargs,
  ):
    self._caption_source = caption_source
    self._plan = plan
    self.summary = summary if summary is not None else importer.ImportSummary()
    super().__init__(**kwargs)

  @property
  def settings(self) -> importer.ClipSettings:
    return settings_of(self.builder_config)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg: VideoFolderConfig = self.builder_config
    sizes = self.settings.sizes
    height, width = sizes[0] if len(sizes) == 1 else (None, None)
    return self.dataset_info_from_configs(
      description=__doc__,
      disable_shuffling=True,
      features=tfds.features.FeaturesDict(
        {
          "video": tfds.features.Tensor(shape=(cfg.num_frames, height, width, 3), dtype=np.uint8, encoding="zlib"),
          "caption": tfds.features.Text(),
          "source_path": tfds.features.Text(),
          "start_frame": tfds.features.Scalar(dtype=np.int32),
          "clip_index": tfds.features.Scalar(dtype=np.int32),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    if self._caption_source is None or self._plan is None:
      raise ValueError(
        "building a video_folder dataset needs a caption source and a split plan; "
        "use import_video_folder(...) or tools/import_videos.py"
      )
    return {split: self._generate_examples(split, segments) for split, segments in self._plan.segments.items()}

  def _generate_examples(
    self, split: str, segments: list[import_splits.Segment]
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    progress = tqdm.tqdm(segments, desc=f"video_folder/{self.builder_config.name} {split}", unit="video", leave=False)
    yield from importer.import_examples(
      progress, self._caption_source, self.settings, Path(self.builder_config.videos_dir), self.summary, split
    )


def settings_of(config: VideoFolderConfig) -> importer.ClipSettings:
  return importer.ClipSettings(
    num_frames=config.num_frames,
    height=config.height,
    width=config.width,
    fps=config.fps,
    stride=config.stride,
    buckets=tuple(tuple(b) for b in config.buckets),
  )


def check_name(name: str) -> str:
  if not name or not _NAME_RE.match(name):
    raise ValueError(
      f"dataset name {name!r} is not valid: use letters, digits, '_' and '-', starting with a letter or digit "
      f"(tools/import_videos.py --name=..., config.data.builder_config=...)"
    )
  return name


def dataset_dir(name: str, data_dir: str = "") -> Path:
  """<data_dir>/video_folder/<name>: where an import called `name` lives (all versions)."""
  if not name:
    raise ValueError(
      "an imported dataset needs a name (tools/import_videos.py --name=..., config.data.builder_config=...)"
    )
  return Path(resolve_data_dir(data_dir)) / VideoFolder.name / name


# ------------------------------------------------------------------ never destroy: build aside, then swap


def _owner_tag(name: str) -> str:
  return f"{name}.{socket.gethostname()}.{os.getpid()}"


def _owner_is_gone(tag: str, name: str) -> bool:
  """True for a temp folder tag `<name>.<host>.<pid>...` left by a process of this host that no longer runs."""
  match = re.match(rf"^{re.escape(name)}\.(.+)\.(\d+)(?:-.*)?$", tag)
  if not match or match.group(1) != socket.gethostname():
    return False
  try:
    os.kill(int(match.group(2)), 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False
  return False


def _clean_up_after_crashes(root: Path, name: str, target: Path) -> None:
  """Removes build folders of crashed imports of `name`; puts back a dataset whose overwrite crashed mid-swap."""
  for leftover in sorted(root.glob(f"{_TEMP_PREFIX}{name}.*")):
    if _owner_is_gone(leftover.name[len(_TEMP_PREFIX) :], name):
      shutil.rmtree(leftover, ignore_errors=True)
  for replaced in sorted(root.glob(f"{_REPLACED_PREFIX}{name}.*")):
    if not _owner_is_gone(replaced.name[len(_REPLACED_PREFIX) :], name):
      continue
    if target.exists():
      shutil.rmtree(replaced, ignore_errors=True)  # the crash came after the new dataset was in place
    else:
      os.rename(replaced, target)
      print(f"video_folder/{name}: restored the dataset an interrupted --overwrite import had moved aside")


def _swap_in(built: Path, target: Path, name: str) -> None:
  """Moves the finished build to `target`; an existing dataset there is moved aside first and deleted last."""
  if not target.exists():
    os.rename(built, target)
    return
  aside = target.parent / f"{_REPLACED_PREFIX}{_owner_tag(name)}"
  os.rename(target, aside)
  try:
    os.rename(built, target)
  except BaseException:
    os.rename(aside, target)
    raise
  shutil.rmtree(aside, ignore_errors=True)


def import_video_folder(
  videos_dir: str | os.PathLike,
  *,
  name: str,
  captions: importer.CaptionSource,
  settings: importer.ClipSettings,
  data_dir: str = "",
  validation_fraction: float = 0.1,
  test_fraction: float = 0.1,
  split_by: str = "auto",
  overwrite: bool = False,
  verbose: bool = True,
) -> tuple[tfds.core.DatasetBuilder, importer.ImportSummary]:
  """Imports the videos of `videos_dir` as dataset `name` into `data_dir`; returns (read-only builder, summary).

  Checks everything it can before writing: the name, an existing dataset of that name
  (FileExistsError unless overwrite=True), the caption source (missing files, CSV errors),
  the fractions, and every video (probed; unreadable and too-short ones are skipped and
  named; none usable is a ValueError). Then builds in a temporary folder and swaps it in,
  so any failure leaves an existing dataset of that name untouched.
  """
  check_name(name)
  target = dataset_dir(name, data_dir)
  _clean_up_after_crashes(target.parent, name, target)
  if target.exists() and not overwrite:
    raise FileExistsError(
      f"a dataset named {name!r} already exists at {os.fspath(target)!r}; "
      f"pick another --name or pass --overwrite to replace it"
    )
  import_splits.check_fractions(validation_fraction, test_fraction)
  if split_by not in import_splits.SPLIT_METHODS:
    raise ValueError(f"split_by must be one of {import_splits.SPLIT_METHODS}, got {split_by!r}")
  videos_dir = Path(os.path.abspath(videos_dir))
  if not videos_dir.is_dir():
    raise FileNotFoundError(f"videos folder {os.fspath(videos_dir)!r} does not exist")
  paths = captions.videos(videos_dir)  # raises on missing files / CSV errors
  if not paths:
    raise ValueError(f"no videos ({', '.join(importer.VIDEO_SUFFIXES)}) found in {os.fspath(videos_dir)!r}")
  summary = importer.ImportSummary()
  start = time.time()
  usable = importer.probe_videos(paths, settings, videos_dir, summary)
  if not usable:
    raise ValueError(
      f"no clips can be made from the {len(paths)} video(s) in {os.fspath(videos_dir)!r}; nothing was written:\n"
      f"{summary.describe()}"
    )
  plan = import_splits.plan_splits(
    usable,
    settings.num_frames,
    validation_fraction=validation_fraction,
    test_fraction=test_fraction,
    method=split_by,
  )
  summary.split = plan.describe(videos_dir, settings.fps)
  config = VideoFolderConfig(
    name=name,
    version=VERSION,
    release_notes=RELEASE_NOTES,
    description=f"videos from {os.fspath(videos_dir)}, captions from {captions.describe()}",
    videos_dir=os.fspath(videos_dir),
    num_frames=settings.num_frames,
    height=settings.height,
    width=settings.width,
    fps=settings.fps,
    stride=settings.stride,
    validation_fraction=validation_fraction,
    test_fraction=test_fraction,
    split_by=split_by,
    buckets=settings.buckets,
  )
  root = target.parent
  root.mkdir(parents=True, exist_ok=True)
  temp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{_owner_tag(name)}-", dir=root))
  try:
    builder = VideoFolder(
      config=config,
      caption_source=captions,
      plan=plan,
      summary=summary,
      data_dir=os.fspath(temp),
      file_format="array_record",
    )
    prepare_locally(builder)
    with open(os.path.join(builder.data_dir, SUMMARY_FILE), "w") as f:
      record = {
        "config": dataclasses.asdict(config),
        "summary": summary.to_dict(),
        "split_plan": plan.to_dict(videos_dir),
      }
      json.dump(record, f, indent=2, default=str)
    _swap_in(temp / VideoFolder.name / name, target, name)
  finally:
    shutil.rmtree(temp, ignore_errors=True)
  builder = load_builder(name, data_dir)
  if verbose:
    print(f"video_folder/{name}: {summary.describe()}\n  built in {time.time() - start:.1f} s at {builder.data_dir}")
  return builder, summary


def load_builder(name: str, data_dir: str = "") -> tfds.core.DatasetBuilder:
  """A read-only builder for the import called `name` (newest version), without its caption source."""
  root = dataset_dir(name, data_dir)
  if not root.exists():
    _clean_up_after_crashes(root.parent, name, root)  # an overwrite killed mid-swap: put the dataset back
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


def read_summary(builder) -> dict[str, Any]:
  """The import_summary.json of a loaded import ({} for imports that have none)."""
  path = os.path.join(builder.data_dir, SUMMARY_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def clip_sizes(builder, split: str) -> np.ndarray:
  """int64 [N, 3]: (frames, height, width) of every record of `split`, in record order, without decoding them."""
  num_records = builder.info.splits[split].num_examples
  shape = builder.info.features["video"].shape
  if None not in shape[:3]:
    return np.tile(np.asarray(shape[:3], np.int64), (num_records, 1))
  runs = read_summary(builder).get("summary", {}).get("size_runs", {}).get(split)
  if runs is None:
    raise ValueError(f"{os.fspath(builder.data_dir)!r} holds clips of several sizes but no size index; re-import it")
  sizes = importer.clip_sizes(runs)
  if len(sizes) != num_records:
    raise ValueError(f"the size index of {os.fspath(builder.data_dir)!r} ({split}) does not match its records")
  return sizes
