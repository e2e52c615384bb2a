"""Which footage of an import goes to train, validation and test (used by sora_jax.data.importer).

Held-out clips must never share a frame with training clips, and the split must still
work when a user imports three videos. Two ways, chosen per import:

  by video  whole videos go to validation / test (none of their frames is trained on):
            used when there are enough usable videos that each held-out fraction is at
            least one whole video (10 videos at the default 10 % + 10 %).
  by time   with fewer videos, the end of every video is held out instead: its last
            frames form the test part, the frames before them the validation part, the
            rest the training part, each cut into clips on its own so no clip crosses a
            boundary. Held-out parts are whole clips, taken from the videos with the most
            footage left, and every video keeps at least one training clip.

`plan_splits` returns a SplitPlan: per split, the (video, first frame, end frame) segments
to cut clips from (frames counted at the import's frame rate), and a description a user
reads to see which footage was held out and why.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

HELD_OUT_SPLITS = ("validation", "test")
SPLIT_METHODS = ("auto", "video", "time")


@dataclasses.dataclass(frozen=True)
class Segment:
  """Frames [start, stop) of one video (at the import's frame rate) that one split cuts clips from."""

  path: Path
  start: int
  stop: int


@dataclasses.dataclass
class SplitPlan:
  """The segments of every split, and how and why they were chosen."""

  method: str  # "video" or "time"
  reason: str
  segments: dict[str, list[Segment]]

  def describe(self, videos_dir: Path, fps: float) -> list[str]:
    """Lines for the import summary: the method, why, and the held-out footage of each video."""
    lines = [f"split by {self.method}: {self.reason}"]

    def rel(path: Path) -> str:
      return os.path.relpath(path, videos_dir)

    if self.method == "video":
      for split in HELD_OUT_SPLITS:
        if split in self.segments:
          names = [rel(s.path) for s in self.segments[split]]
          lines.append(f"  {split} ({len(names)} video(s)): {', '.join(names)}")
      lines.append(f"  train: the other {len(self.segments['train'])} video(s)")
      return lines
    by_video: dict[Path, dict[str, Segment]] = {}
    for split, segments in self.segments.items():
      for segment in segments:
        by_video.setdefault(segment.path, {})[split] = segment
    for path, parts in by_video.items():
      text = ", ".join(
        f"{split} {_seconds(parts[split], fps)}" for split in ("train", *HELD_OUT_SPLITS) if split in parts
      )
      lines.append(f"  {rel(path)}: {text}")
    return lines

  def to_dict(self, videos_dir: Path) -> dict[str, Any]:
    return {
      "method": self.method,
      "reason": self.reason,
      "segments": {
        split: [{"path": os.path.relpath(s.path, videos_dir), "start": s.start, "stop": s.stop} for s in segments]
        for split, segments in self.segments.items()
      },
    }


def _seconds(segment: Segment, fps: float) -> str:
  return f"frames {segment.start}-{segment.stop - 1} ({segment.start / fps:.1f}-{segment.stop / fps:.1f} s)"


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
  for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{name} must be in [0, 1), got {value}")
  if validation_fraction + test_fraction >= 1.0:
    raise ValueError(
      f"validation_fraction + test_fraction must leave footage for training (< 1), "
      f"got {validation_fraction} + {test_fraction}"
    )


def plan_splits(
  frames: dict[Path, int],
  num_frames: int,
  *,
  validation_fraction: float,
  test_fraction: float,
  method: str = "auto",
) -> SplitPlan:
  """Assigns the footage of the usable videos to train / validation / test.

  Args:
    frames: usable video -> its number of frames at the import's frame rate (each >= num_frames).
    num_frames: frames per clip.
    validation_fraction, test_fraction: share of the footage to hold out for each (0 = no such split).
    method: "video", "time", or "auto" (by video when each requested held-out split gets at least
      one whole video, else by time).
  Returns:
    A SplitPlan with a 'train' split and each held-out split whose fraction is > 0.
  Raises:
    ValueError when a requested held-out split cannot get a single clip (too little footage).
  """
  check_fractions(validation_fraction, test_fraction)
  if method not in SPLIT_METHODS:
    raise ValueError(f"split method must be one of {SPLIT_METHODS}, got {method!r}")
  paths = sorted(frames)
  if not paths:
    raise ValueError("no usable videos to split")
  fractions = {"validation": validation_fraction, "test": test_fraction}
  wanted = {split: f for split, f in fractions.items() if f > 0}
  count = len(paths)
  whole_videos = all(f * count >= 1 for f in wanted.values())
  if method == "auto":
    method = "video" if whole_videos else "time"
    needed = max((math.ceil(1 / f - 1e-9) for f in wanted.values()), default=1)
    reason = (
      f"{count} usable videos, enough that every held-out fraction is whole videos"
      if whole_videos
      else f"only {count} usable video(s): whole-video splits need {needed} at these fractions "
      f"({', '.join(f'{s} {f:g}' for s, f in wanted.items())}), so the end of every video is held out, "
      f"never overlapping its training frames"
    )
  else:
    reason = f"as asked (--split_by={method})"
  if not wanted:
    return SplitPlan(method, "nothing held out (both fractions are 0)", {"train": _whole(paths, frames)})
  if method == "video":
    return _plan_by_video(paths, frames, wanted, reason)
  return _plan_by_time(paths, frames, num_frames, wanted, reason)


def _whole(paths: list[Path], frames: dict[Path, int]) -> list[Segment]:
  return [Segment(p, 0, frames[p]) for p in paths]


def _plan_by_video(paths: list[Path], frames: dict[Path, int], wanted: dict[str, float], reason: str) -> SplitPlan:
  count = len(paths)
  sizes = {split: max(1, round(f * count)) for split, f in wanted.items()}
  total = sum(sizes.values())
  if total >= count:
    raise ValueError(
      f"cannot hold out {total} whole video(s) of {count} and keep one for training; lower the fractions "
      f"or use --split_by=time"
    )
  # Evenly spaced picks over the sorted videos, dealt out to the splits in proportion (Bresenham):
  # pick j goes to the first split when its running share of that split's size steps up.
  picks = [int((j + 0.5) * count / total) for j in range(total)]
  first, *rest = sizes
  labels = [first if (j + 1) * sizes[first] // total > j * sizes[first] // total else rest[0] for j in range(total)]
  held = {split: [paths[i] for i, label in zip(picks, labels) if label == split] for split in sizes}
  chosen = {p for ps in held.values() for p in ps}
  segments = {"train": _whole([p for p in paths if p not in chosen], frames)}
  segments.update({split: _whole(ps, frames) for split, ps in held.items()})
  return SplitPlan("video", reason, segments)


def _plan_by_time(
  paths: list[Path], frames: dict[Path, int], num_frames: int, wanted: dict[str, float], reason: str
) -> SplitPlan:
  capacity = {p: frames[p] // num_frames for p in paths}  # non-overlapping clips per video
  total = sum(capacity.values())
  targets = {split: max(1, round(f * total)) for split, f in wanted.items()}
  held = {p: {split: 0 for split in wanted} for p in paths}
  given = dict.fromkeys(wanted, 0)
  # Deal held-out clips one at a time, alternating splits, each to the video with the most clips left;
  # a video keeps at least one clip for training.
  while True:
    progress = False
    for split in ("test", "validation"):
      if split not in wanted or given[split] >= targets[split]:
        continue
      left = {p: capacity[p] - sum(held[p].values()) for p in paths}
      best = max(paths, key=lambda p: (left[p], -paths.index(p)))
      if left[best] < 2:
        continue
      held[best][split] += 1
      given[split] += 1
      progress = True
    if not progress:
      break
  empty = [split for split in wanted if given[split] == 0]
  if empty:
    raise ValueError(
      f"too little footage to hold out a {' or '.join(empty)} split: the {len(paths)} usable video(s) hold "
      f"{total} clip(s) of {num_frames} frames, and each keeps one for training. Add or lengthen videos, "
      f"lower --num_frames, or pass --{empty[0]}_fraction=0"
    )
  segments: dict[str, list[Segment]] = {"train": [], **{split: [] for split in wanted}}
  for p in paths:
    end = frames[p]
    for split in ("test", "validation"):  # the test part is the very end, validation just before it
      if split in wanted and held[p][split]:
        start = end - held[p][split] * num_frames
        segments[split].append(Segment(p, start, end))
        end = start
    segments["train"].append(Segment(p, 0, end))
  return SplitPlan("time", reason, segments)
