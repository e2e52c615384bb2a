"""Turning a folder of your own videos into training clips (used by tools/import_videos.py).

Each video file (mp4 / webm / mov / mkv / avi / gif) is read, resampled in time to
the target frame rate, resized so it covers the target H x W and center-cropped,
then cut into clips of `num_frames` frames starting every `stride` frames. Every
clip gets a caption from a pluggable caption source:

  CsvCaptions("captions.csv")      columns `path` (relative to the videos folder or
                                   absolute) and `caption`; the CSV lists the videos.
  SidecarCaptions()                `clip.mp4` is captioned by `clip.txt` next to it.
  FunctionCaptions("pkg.mod:fn")   your Python callable fn(clip uint8 [T, H, W, 3]) -> str.

A video that cannot be decoded is skipped and named in the ImportSummary; a CSV
without the needed columns, or a listed file that does not exist, is an error
before anything is written. The TFDS builder that stores the clips lives in
sora_jax.data.video_folder_builder.

Note: videos are decoded whole (sora_jax.media.video_io.read_video), so a very long
high-resolution file needs its decoded frames in memory; cut such files first.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from sora_jax.media import video_io

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
CSV_COLUMNS = ("path", "caption")


# ------------------------------------------------------------------ frames


def resample_indices(num_source_frames: int, source_fps: float, target_fps: float) -> np.ndarray:
  """Source frame index shown at each tick of the target clock, int64 [N'].

  Nearest frame at times k / target_fps, k = 0, 1, ... up to the last source frame's
  time; lower target_fps drops frames, higher repeats them. A source without a
  known rate (fps <= 0) is taken to be at the target rate already.
  """
  if target_fps <= 0:
    raise ValueError(f"target fps must be > 0, got {target_fps}")
  if num_source_frames < 1:
    return np.zeros((0,), np.int64)
  if source_fps <= 0:
    source_fps = target_fps
  ratio = source_fps / target_fps  # source frames per target frame
  count = int(math.floor((num_source_frames - 1) / ratio + 1e-9)) + 1
  indices = np.floor(np.arange(count) * ratio + 0.5).astype(np.int64)
  return np.minimum(indices, num_source_frames - 1)


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [T, h, w, 3] -> uint8 [T, height, width, 3]: scale to cover, then crop the centre.

  The scale factor is the larger of height/h and width/w, so the whole target is
  covered and only the overflowing side is cropped (aspect ratio kept).
  """
  frames = np.asarray(frames)
  _, h, w, _ = frames.shape
  scale = max(height / h, width / w)
  new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
  top, left = (new_h - height) // 2, (new_w - width) // 2
  box = (left, top, left + width, top + height)
  out = np.empty((frames.shape[0], height, width, 3), np.uint8)
  for i, frame in enumerate(frames):
    image = Image.fromarray(frame)
    if (new_h, new_w) != (h, w):
      image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    out[i] = np.asarray(image.crop(box))
  return out


def clip_starts(num_frames_available: int, num_frames: int, stride: int) -> list[int]:
  """Start frames of the clips cut from a video: 0, stride, 2*stride, ... (whole clips only)."""
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  return list(range(0, num_frames_available - num_frames + 1, stride))


# ------------------------------------------------------------------ captions


class CaptionSource(Protocol):
  """Where captions come from: which videos to import and the caption of each clip."""

  def videos(self, videos_dir: Path) -> list[Path]:
    """The video files to import (each must exist)."""

  def caption(self, path: Path, clip: np.ndarray) -> str:
    """The caption of `clip` (uint8 [T, H, W, 3] at the target size) cut from `path`."""

  def describe(self) -> str:
    """One line for logs and dataset descriptions."""


def list_videos(videos_dir: Path) -> list[Path]:
  """Every file under `videos_dir` (recursively) with a VIDEO_SUFFIXES suffix, sorted."""
  videos_dir = Path(videos_dir)
  if not videos_dir.is_dir():
    raise FileNotFoundError(f"videos folder {os.fspath(videos_dir)!r} does not exist")
  return sorted(p for p in videos_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


class CsvCaptions:
  """Captions from a CSV with columns `path` and `caption` (extra columns are ignored)."""

  def __init__(self, csv_path: str | os.PathLike):
    self.csv_path = Path(csv_path)
    if not self.csv_path.is_file():
      raise FileNotFoundError(f"captions CSV {os.fspath(self.csv_path)!r} does not exist")
    with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      columns = [c.strip() for c in (reader.fieldnames or [])]
      missing = [c for c in CSV_COLUMNS if c not in columns]
      if missing:
        raise ValueError(
          f"captions CSV {os.fspath(self.csv_path)!r} lacks column(s) {missing}; "
          f"it has {columns}. Expected a header line 'path,caption'."
        )
      rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    self._rows = rows
    self._captions: dict[Path, str] = {}

  def videos(self, videos_dir: Path) -> list[Path]:
    paths, missing = [], []
    for line, row in enumerate(self._rows, start=2):
      if not row["path"]:
        raise ValueError(f"{os.fspath(self.csv_path)!r} line {line}: empty path")
      if not row["caption"]:
        raise ValueError(f"{os.fspath(self.csv_path)!r} line {line}: empty caption for {row['path']!r}")
      path = Path(row["path"]) if os.path.isabs(row["path"]) else Path(videos_dir) / row["path"]
      if not path.is_file():
        missing.append(row["path"])
      self._captions[path.resolve()] = row["caption"]
      paths.append(path)
    if missing:
      raise FileNotFoundError(
        f"{len(missing)} file(s) listed in {os.fspath(self.csv_path)!r} do not "
        f"exist under {os.fspath(videos_dir)!r}: {missing[:10]}"
      )
    return paths

  def caption(self, path: Path, clip: np.ndarray) -> str:
    del clip
    return self._captions[Path(path).resolve()]

  def describe(self) -> str:
    return f"csv:{os.fspath(self.csv_path)}"


class SidecarCaptions:
  """Caption of `video.mp4` = the text of `video.txt` beside it (whitespace stripped)."""

  def videos(self, videos_dir: Path) -> list[Path]:
    paths = list_videos(videos_dir)
    missing = [os.fspath(p.with_suffix(".txt")) for p in paths if not p.with_suffix(".txt").is_file()]
    if missing:
      raise FileNotFoundError(f"{len(missing)} video(s) have no sidecar caption file: {missing[:10]}")
    return paths

  def caption(self, path: Path, clip: np.ndarray) -> str:
    del clip
    text = Path(path).with_suffix(".txt").read_text(encoding="utf-8").strip()
    if not text:
      raise ValueError(f"sidecar caption {os.fspath(Path(path).with_suffix('.txt'))!r} is empty")
    return text

  def describe(self) -> str:
    return "sidecar .txt files"


class FunctionCaptions:
  """Captions from a user function given as 'package.module:function', called as fn(clip) -> str."""

  def __init__(self, spec: str):
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
      raise ValueError(f"captioner {spec!r} must look like 'package.module:function'")
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ValueError(f"captioner {spec!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?") from e
    function = getattr(module, function_name, None)
    if not callable(function):
      raise ValueError(f"captioner {spec!r}: module {module_name!r} has no callable {function_name!r}")
    self.spec = spec
    self._function: Callable[[np.ndarray], str] = function

  def videos(self, videos_dir: Path) -> list[Path]:
    return list_videos(videos_dir)

  def caption(self, path: Path, clip: np.ndarray) -> str:
    text = self._function(clip)
    if not isinstance(text, str) or not text.strip():
      raise ValueError(
        f"captioner {self.spec!r} returned {text!r} for a clip of {os.fspath(path)!r}; it must return a non-empty str"
      )
    return text.strip()

  def describe(self) -> str:
    return f"function:{self.spec}"


def make_caption_source(*, captions_csv: str = "", sidecar: bool = False, captioner: str = "") -> CaptionSource:
  """The one caption source chosen by the import flags (exactly one must be given)."""
  chosen = {"captions_csv": bool(captions_csv), "sidecar": sidecar, "captioner": bool(captioner)}
  if sum(chosen.values()) != 1:
    raise ValueError(
      f"choose exactly one caption source (--captions=FILE.csv, --sidecar_captions or "
      f"--captioner=module:function); got {[k for k, v in chosen.items() if v] or 'none'}"
    )
  if captions_csv:
    return CsvCaptions(captions_csv)
  if sidecar:
    return SidecarCaptions()
  return FunctionCaptions(captioner)


# ------------------------------------------------------------------ clips


@dataclasses.dataclass(frozen=True)
class ClipSettings:
  """Target format of the imported clips."""

  num_frames: int = 17
  height: int = 32
  width: int = 32
  fps: float = 8.0
  stride: int = 0  # frames between clip starts (in target-fps frames); 0 = num_frames (no overlap)

  def __post_init__(self):
    for field in ("num_frames", "height", "width"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
    if self.fps <= 0 or self.stride < 0:
      raise ValueError(f"fps must be > 0 and stride >= 0, got fps={self.fps}, stride={self.stride}")

  @property
  def clip_stride(self) -> int:
    return self.stride or self.num_frames


@dataclasses.dataclass
class ImportSummary:
  """What an import did: counts, and every skipped file with the reason."""

  videos_read: int = 0
  clips: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # unreadable files
  too_short: list[str] = dataclasses.field(default_factory=list)  # fewer frames than one clip

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def describe(self) -> str:
    lines = [f"read {self.videos_read} video(s) -> {sum(self.clips.values())} clip(s) {self.clips}"]
    if self.skipped:
      lines.append(f"skipped {len(self.skipped)} unreadable file(s):")
      lines += [f"  {path}: {reason}" for path, reason in self.skipped]
    if self.too_short:
      lines.append(f"{len(self.too_short)} video(s) too short for one clip: {self.too_short}")
    return "\n".join(lines)


def video_clips(path: Path, settings: ClipSettings) -> Iterator[tuple[int, np.ndarray]]:
  """(start frame, uint8 [T, H, W, 3]) for every clip of one video. Raises VideoReadError."""
  frames, fps = video_io.read_video(path)
  indices = resample_indices(frames.shape[0], fps, settings.fps)
  for start in clip_starts(len(indices), settings.num_frames, settings.clip_stride):
    clip = frames[indices[start : start + settings.num_frames]]
    yield start, resize_center_crop(clip, settings.height, settings.width)


def import_examples(
  paths: Iterable[Path],
  captions: CaptionSource,
  settings: ClipSettings,
  videos_dir: Path,
  summary: ImportSummary,
  split: str,
) -> Iterator[tuple[str, dict[str, Any]]]:
  """(unique key, example) for every clip of `paths`; unreadable files are recorded in `summary`."""
  summary.clips.setdefault(split, 0)
  for path in paths:
    try:
      clips = list(video_clips(path, settings))
    except video_io.VideoReadError as e:
      summary.skipped.append((os.fspath(path), e.reason))
      continue
    summary.videos_read += 1
    relative = os.path.relpath(path, videos_dir)
    if not clips:
      summary.too_short.append(relative)
      continue
    for clip_index, (start, clip) in enumerate(clips):
      summary.clips[split] += 1
      yield (
        f"{relative}#{start}",
        {
          "video": clip,
          "caption": captions.caption(path, clip),
          "source_path": relative,
          "start_frame": np.int32(start),
          "clip_index": np.int32(clip_index),
        },
      )


def has_clips(path: Path, settings: ClipSettings) -> bool:
  """True if `path` decodes and is long enough for at least one clip."""
  try:
    frames, fps = video_io.read_video(path)
  except video_io.VideoReadError:
    return False
  return (
    len(
      clip_starts(len(resample_indices(frames.shape[0], fps, settings.fps)), settings.num_frames, settings.clip_stride)
    )
    > 0
  )


def split_videos(
  paths: list[Path], validation_fraction: float, usable: Callable[[Path], bool] = lambda path: True
) -> dict[str, list[Path]]:
  """Deterministic split by video, so clips of one video never straddle splits.

  round(validation_fraction * N) videos (at least one when the fraction is > 0 and
  N >= 2; always leaving one for training) go to 'validation': evenly spaced ones in
  sorted order, skipping any for which `usable(path)` is False (unreadable or too
  short, which would leave the split empty), replaced by the next usable ones.
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  paths = sorted(paths)
  num_val = round(validation_fraction * len(paths))
  if validation_fraction > 0 and len(paths) >= 2:
    num_val = max(1, num_val)
  num_val = max(0, min(num_val, len(paths) - 1))
  spaced = [int(i * len(paths) / num_val) for i in range(num_val)] if num_val else []
  candidates = spaced + [i for i in range(len(paths)) if i not in set(spaced)]
  chosen: set[int] = set()
  for i in candidates:
    if len(chosen) == num_val:
      break
    if usable(paths[i]):
      chosen.add(i)
  splits = {"train": [p for i, p in enumerate(paths) if i not in chosen]}
  if chosen:
    splits["validation"] = [p for i, p in enumerate(paths) if i in chosen]
  return splits
