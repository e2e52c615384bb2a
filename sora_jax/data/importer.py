"""Turning a folder of your own videos into training clips (used by tools/import_videos.py).

Each video file (mp4 / webm / mov / mkv / avi / gif) is read, resampled in time to the
target frame rate, resized and center-cropped, then cut into clips of `num_frames` frames
starting every `stride` frames. Two framings:

  square / fixed   every clip is height x width: scaled to cover it, the overflow cropped.
  keep aspect      ClipSettings(buckets=((32, 32), (32, 48), (48, 32)), ...): each video goes
                   to the bucket (H, W) nearest its own aspect ratio, scaled to cover it and
                   center-cropped, so a landscape video stays landscape (native-size training).

Every clip gets a caption from a caption source (sora_jax.data.import_captions: a CSV,
sidecar .txt files, or your function). Before anything is written, every video is probed
(`probe_videos`): a file that is not a video (a PNG renamed .mp4 is named as a PNG image)
or cannot be decoded is skipped, a video shorter than one clip is set aside, and both are
named in the ImportSummary; an import with no usable video stops with an error. The
footage is then split into train / validation / test (sora_jax.data.import_splits). The
TFDS builder that stores the clips lives in sora_jax.data.video_folder_builder.

Note: videos are decoded whole (sora_jax.media.video_io.read_video), once to probe and once
per split they feed, so a very long high-resolution file needs its decoded frames in memory;
cut such files first.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sora_jax.data import import_splits
from sora_jax.data.import_captions import (  # noqa: F401  (re-exported: the importer's public API)
  CSV_COLUMNS,
  VIDEO_SUFFIXES,
  CaptionSource,
  CsvCaptions,
  FunctionCaptions,
  SidecarCaptions,
  list_videos,
  make_caption_source,
)
from sora_jax.media import video_io

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


def nearest_bucket(height: int, width: int, buckets: Iterable[tuple[int, int]]) -> tuple[int, int]:
  """The bucket (H, W) whose aspect ratio is nearest a height x width frame's (in log ratio).

  Ties go to the larger bucket, then to the first listed, so the choice is deterministic.
  """
  buckets = list(buckets)
  if not buckets:
    raise ValueError("nearest_bucket needs at least one (height, width) bucket")
  target = math.log(width / height)
  return min(buckets, key=lambda b: (round(abs(math.log(b[1] / b[0]) - target), 9), -b[0] * b[1]))


def clip_starts(num_frames_available: int, num_frames: int, stride: int) -> list[int]:
  """Start frames of the clips cut from a video: 0, stride, 2*stride, ... (whole clips only)."""
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  return list(range(0, num_frames_available - num_frames + 1, stride))


# ------------------------------------------------------------------ settings and summary


def parse_buckets(text: str) -> tuple[tuple[int, int], ...]:
  """'32x32,32x48,48x32' -> ((32, 32), (32, 48), (48, 32)) (H x W each)."""
  buckets = []
  for item in (part.strip() for part in text.split(",") if part.strip()):
    h, sep, w = item.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit():
      raise ValueError(f"bucket {item!r} must look like HEIGHTxWIDTH, e.g. 32x48; got buckets {text!r}")
    buckets.append((int(h), int(w)))
  return tuple(buckets)


@dataclasses.dataclass(frozen=True)
class ClipSettings:
  """Target format of the imported clips.

  buckets: () = every clip is height x width (scaled to cover, centre cropped); else keep-aspect
  mode: each video's clips take the (H, W) bucket nearest its aspect ratio, and height / width
  are unused.
  """

  num_frames: int = 17
  height: int = 32
  width: int = 32
  fps: float = 8.0
  stride: int = 0  # frames between clip starts (in target-fps frames); 0 = num_frames (no overlap)
  buckets: tuple[tuple[int, int], ...] = ()

  def __post_init__(self):
    for field in ("num_frames", "height", "width"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
    if not self.fps > 0 or self.stride < 0:
      raise ValueError(f"fps must be > 0 and stride >= 0, got fps={self.fps}, stride={self.stride}")
    buckets = tuple((int(h), int(w)) for h, w in self.buckets)
    if any(min(b) < 1 for b in buckets) or len(set(buckets)) != len(buckets):
      raise ValueError(f"buckets must be distinct (height, width) pairs of positive sizes, got {self.buckets}")
    object.__setattr__(self, "buckets", buckets)

  @property
  def clip_stride(self) -> int:
    return self.stride or self.num_frames

  @property
  def sizes(self) -> tuple[tuple[int, int], ...]:
    """Every (H, W) a clip can have."""
    return self.buckets or ((self.height, self.width),)

  def frame_size(self, source_height: int, source_width: int) -> tuple[int, int]:
    """(H, W) of the clips cut from a video whose frames are source_height x source_width."""
    return nearest_bucket(source_height, source_width, self.buckets) if self.buckets else (self.height, self.width)


@dataclasses.dataclass
class ImportSummary:
  """What an import did: counts, the split (how and which footage), and every file set aside with the reason."""

  videos_read: int = 0
  clips: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # unreadable files: (path, reason)
  too_short: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # readable, shorter than one clip
  clip_frames: int = 0  # frames per clip, for the messages
  split: list[str] = dataclasses.field(default_factory=list)  # lines saying how the split was made
  # Per split, the clip sizes in record order as runs [count, frames, height, width] (see clip_sizes).
  size_runs: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def describe(self) -> str:
    counts = ", ".join(f"{split} {n}" for split, n in self.clips.items())
    lines = [f"read {self.videos_read} video(s) -> {sum(self.clips.values())} clip(s): {counts or 'none'}"]
    lines += self.split
    if self.skipped:
      lines.append(f"skipped {len(self.skipped)} unreadable file(s):")
      lines += [f"  {path}: {reason}" for path, reason in self.skipped]
    if self.too_short:
      lines.append(f"{len(self.too_short)} video(s) too short for one clip of {self.clip_frames} frames:")
      lines += [f"  {path}: {length}" for path, length in self.too_short]
    return "\n".join(lines)

  def add_clip(self, split: str, shape: tuple[int, ...]) -> None:
    """Counts one clip of `split` with video shape [T, H, W, 3], in record order."""
    self.clips[split] = self.clips.get(split, 0) + 1
    runs = self.size_runs.setdefault(split, [])
    size = [int(v) for v in shape[:3]]
    if runs and runs[-1][1:] == size:
      runs[-1][0] += 1
    else:
      runs.append([1, *size])


def clip_sizes(size_runs: list[list[int]]) -> np.ndarray:
  """Expands ImportSummary.size_runs of one split into int64 [N, 3]: (frames, height, width) per record."""
  if not size_runs:
    return np.zeros((0, 3), np.int64)
  return np.concatenate([np.tile(np.asarray(run[1:], np.int64), (run[0], 1)) for run in size_runs])


# ------------------------------------------------------------------ probing


# File signatures of things people rename to .mp4 by mistake: named instead of "cannot decode".
_NOT_VIDEO_SIGNATURES = (
  (b"\x89PNG\r\n\x1a\n", "a PNG image"),
  (b"\xff\xd8\xff", "a JPEG image"),
  (b"%PDF", "a PDF document"),
  (b"PK\x03\x04", "a ZIP archive"),
)


def not_a_video(path: Path) -> str | None:
  """What `path` is when its first bytes say it is not a video ('a PNG image', ...), else None."""
  with open(path, "rb") as f:
    head = f.read(512)
  for signature, kind in _NOT_VIDEO_SIGNATURES:
    if head.startswith(signature):
      return kind
  if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
    return "a WebP image"
  if head and b"\x00" not in head:
    try:
      head.decode("utf-8")
      return "a text file"
    except UnicodeDecodeError:
      pass
  return None


@dataclasses.dataclass(frozen=True)
class VideoProbe:
  """One video as the import sees it: frames at the target rate and source size, or why it is unusable."""

  path: Path
  frames: int = 0  # at the import's frame rate
  height: int = 0
  width: int = 0
  error: str = ""  # why it cannot be read ("" when it can)


def probe_video(path: Path, settings: ClipSettings) -> VideoProbe:
  """Decodes `path` once to learn its length at settings.fps and its frame size."""
  path = Path(path)
  kind = not_a_video(path) if path.is_file() and path.suffix.lower() not in (".gif",) else None
  if kind:
    return VideoProbe(path, error=f"not a video: the file is {kind} (renamed?)")
  try:
    frames, fps = video_io.read_video(path)
  except video_io.VideoReadError as e:
    return VideoProbe(path, error=e.reason)
  return VideoProbe(path, len(resample_indices(frames.shape[0], fps, settings.fps)), frames.shape[1], frames.shape[2])


def probe_videos(
  paths: Iterable[Path], settings: ClipSettings, videos_dir: Path, summary: ImportSummary
) -> dict[Path, int]:
  """Probes every video; returns {usable path: frames at settings.fps}, recording the others in `summary`."""
  summary.clip_frames = settings.num_frames
  usable: dict[Path, int] = {}
  for path in paths:
    probe = probe_video(path, settings)
    relative = os.path.relpath(path, videos_dir)
    if probe.error:
      summary.skipped.append((relative, probe.error))
      continue
    summary.videos_read += 1
    if probe.frames < settings.num_frames:
      summary.too_short.append((relative, f"{probe.frames} frame(s) at {settings.fps:g} fps"))
      continue
    usable[Path(path)] = probe.frames
  return usable


# ------------------------------------------------------------------ clips


def segment_clips(segment: import_splits.Segment, settings: ClipSettings) -> Iterator[tuple[int, np.ndarray]]:
  """(start frame, uint8 [T, H, W, 3]) for every clip inside one segment of a video. Raises VideoReadError."""
  frames, fps = video_io.read_video(segment.path)
  indices = resample_indices(frames.shape[0], fps, settings.fps)[segment.start : segment.stop]
  height, width = settings.frame_size(frames.shape[1], frames.shape[2])
  for offset in clip_starts(len(indices), settings.num_frames, settings.clip_stride):
    clip = frames[indices[offset : offset + settings.num_frames]]
    yield segment.start + offset, resize_center_crop(clip, height, width)


def import_examples(
  segments: Iterable[import_splits.Segment],
  captions: CaptionSource,
  settings: ClipSettings,
  videos_dir: Path,
  summary: ImportSummary,
  split: str,
) -> Iterator[tuple[int, dict[str, Any]]]:
  """(record index, example) for every clip of `segments`, in order; counted in `summary`.

  The key is the clip's index in its split, so records are stored in the order they are
  made (TFDS sorts by key when shuffling is disabled) and summary.size_runs matches them.
  """
  summary.clips.setdefault(split, 0)
  for segment in segments:
    relative = os.path.relpath(segment.path, videos_dir)
    for clip_index, (start, clip) in enumerate(segment_clips(segment, settings)):
      key = summary.clips[split]
      summary.add_clip(split, clip.shape)
      yield (
        key,
        {
          "video": clip,
          "caption": captions.caption(segment.path, clip),
          "source_path": relative,
          "start_frame": np.int32(start),
          "clip_index": np.int32(clip_index),
        },
      )
