"""Contact sheets: a grid of clips x frames with a caption under each clip, as a PNG or an array.

  save_contact_sheet("sheet.png", videos, captions)          # one row per clip
  save_comparison_sheet("recon.png", originals, recons, captions)  # original row above reconstruction
  grid = make_grid_image(videos, captions)                   # uint8 [H, W, 3] for TensorBoard
  save_contact_sheet("modes.png", videos, captions, marks=given)  # given [N, T] bool: frames outlined (prompt frames)

Frames go left to right, separated by a thin gap; the caption is written in
white on the dark gray background under its clip, wrapped to the row width.
Videos are uint8 [N, T, H, W, 3] (or a list of [T_i, H, W, 3] clips, rows of
different length are allowed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sora_jax.media.video_io import check_frames, upscale

BACKGROUND = (40, 40, 40)  # dark gray
TEXT_COLOR = (255, 255, 255)  # white
LABEL_COLOR = (170, 170, 170)  # row labels ("original", "reconstruction")
FRAME_OUTLINE = (110, 110, 110)  # 1-px outline around each frame, so black frames read as cells
MARK_OUTLINE = (255, 170, 0)  # thicker orange outline: a marked frame (e.g. a given frame of an image/video prompt)


def _as_clip_list(videos, name: str) -> list[np.ndarray]:
  """[N, T, H, W, 3] array or list of [T, H, W, 3] -> list of checked uint8 clips."""
  if isinstance(videos, np.ndarray) and videos.ndim == 5:
    clips = list(videos)
  elif isinstance(videos, (list, tuple)):
    clips = list(videos)
  else:
    videos = np.asarray(videos)
    if videos.ndim != 5:
      raise ValueError(f"{name} must be uint8 [N, T, H, W, 3] or a list of [T, H, W, 3], got shape {videos.shape}")
    clips = list(videos)
  if not clips:
    raise ValueError(f"{name} is empty: need at least one clip")
  clips = [check_frames(clip, f"{name}[{i}]") for i, clip in enumerate(clips)]
  sizes = {clip.shape[1:3] for clip in clips}
  if len(sizes) != 1:
    raise ValueError(f"all clips in {name} must share H and W, got sizes {sorted(sizes)}")
  return clips


def select_frames(clip: np.ndarray, max_frames: int | None) -> np.ndarray:
  """Up to `max_frames` frames of [T, H, W, 3], evenly spaced, always keeping the first and last."""
  if max_frames is None or clip.shape[0] <= max_frames:
    return clip
  if max_frames < 1:
    raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
  indices = np.unique(np.round(np.linspace(0, clip.shape[0] - 1, max_frames)).astype(int))
  return clip[indices]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
    return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, max_width: int) -> list[str]:
  """Greedy word wrap of `text` into lines at most `max_width` pixels wide (long words kept whole)."""
  lines = []
  for paragraph in text.splitlines() or [""]:
    words = paragraph.split()
    line = ""
    for word in words:
      candidate = f"{line} {word}".strip()
      if line and draw.textlength(candidate, font=font) > max_width:
        lines.append(line)
        line = word
      else:
        line = candidate
    lines.append(line)
  return lines


class _Layout:
  """Sizes (in output pixels) shared by every block of a sheet."""

  def __init__(self, frame_h: int, frame_w: int, scale: int, font_size: int | None):
    self.frame_h = frame_h * scale
    self.frame_w = frame_w * scale
    self.gap = max(4, 2 * scale)
    self.margin = 2 * self.gap
    self.font = _font(font_size or max(10, min(16, self.frame_h // 4 + 6)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top, bottom = probe.textbbox((0, 0), "Ag", font=self.font)[1::2]
    self.line_height = bottom - top + 3


def _render_blocks(
  blocks: list[tuple[list[np.ndarray], list[str], str]],
  *,
  scale: int,
  font_size: int | None,
  label_width: int = 0,
  marks: list[np.ndarray] | None = None,
) -> np.ndarray:
  """Lays out blocks of (rows of frames [T, H, W, 3], row labels, caption) top to bottom;
  marks[i] (bool per frame of block i's rows) outlines frames in MARK_OUTLINE."""
  first_row = blocks[0][0][0]
  layout = _Layout(first_row.shape[1], first_row.shape[2], scale, font_size)
  max_frames = max(len(row) for rows, _, _ in blocks for row in rows)
  strip_w = max_frames * layout.frame_w + (max_frames - 1) * layout.gap
  width = 2 * layout.margin + label_width + strip_w
  text_w = width - 2 * layout.margin
  probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  wrapped = [_wrap(probe, caption, layout.font, text_w) if caption else [] for _, _, caption in blocks]
  heights = [
    len(rows) * (layout.frame_h + layout.gap) + len(lines) * layout.line_height + layout.margin
    for (rows, _, _), lines in zip(blocks, wrapped)
  ]
  height = layout.margin + sum(heights)
  sheet = Image.new("RGB", (width, height), BACKGROUND)
  draw = ImageDraw.Draw(sheet)
  y = layout.margin
  for b, ((rows, labels, _), lines) in enumerate(zip(blocks, wrapped)):
    for row, label in zip(rows, labels):
      if label:
        draw.text((layout.margin, y + layout.frame_h // 2), label, font=layout.font, fill=LABEL_COLOR, anchor="lm")
      big = upscale(row, scale)
      for t, frame in enumerate(big):
        x = layout.margin + label_width + t * (layout.frame_w + layout.gap)
        marked = marks is not None and t < len(marks[b]) and bool(marks[b][t])
        if marked:
          width_px = max(2, layout.gap // 2)
          box = (x - width_px, y - width_px, x + layout.frame_w + width_px - 1, y + layout.frame_h + width_px - 1)
          draw.rectangle(box, outline=MARK_OUTLINE, width=width_px)
        else:
          draw.rectangle((x - 1, y - 1, x + layout.frame_w, y + layout.frame_h), outline=FRAME_OUTLINE)
        sheet.paste(Image.fromarray(frame), (x, y))
      y += layout.frame_h + layout.gap
    for line in lines:
      draw.text((layout.margin, y), line, font=layout.font, fill=TEXT_COLOR)
      y += layout.line_height
    y += layout.margin
  return np.asarray(sheet)


def _check_captions(captions: Sequence[str] | None, count: int) -> list[str]:
  if captions is None:
    return [""] * count
  if isinstance(captions, str):
    raise ValueError("captions must be a list of strings (one per clip), not a single string")
  captions = [str(c) for c in captions]
  if len(captions) != count:
    raise ValueError(f"got {len(captions)} captions for {count} clips; pass one caption per clip")
  return captions


def make_grid_image(
  videos,
  captions: Sequence[str] | None = None,
  *,
  max_frames: int | None = None,
  scale: int = 1,
  font_size: int | None = None,
  marks=None,
) -> np.ndarray:
  """Contact sheet as an array: one row per clip, caption under each row.

  Args:
    videos: uint8 [N, T, H, W, 3], or a list of [T_i, H, W, 3].
    captions: N strings, or None for no captions.
    max_frames: show at most this many evenly spaced frames per clip.
    scale: integer nearest-neighbour upscale of every frame.
    font_size: caption font size in pixels (None = picked from the frame size).
    marks: None, or per clip a bool per frame [N, T]: frames drawn with a thick orange outline
      (the given frames of an image or video prompt). Needs max_frames=None (frames as given).
  Returns:
    uint8 [sheet_H, sheet_W, 3] (e.g. for `MetricWriter.write_images`).
  """
  clips = _as_clip_list(videos, "videos")
  captions = _check_captions(captions, len(clips))
  if marks is not None:
    marks = [np.asarray(m, bool).reshape(-1) for m in marks]
    if len(marks) != len(clips) or any(len(m) != len(c) for m, c in zip(marks, clips)):
      raise ValueError("marks must give one bool per frame of every clip ([N, T])")
    if max_frames is not None:
      raise ValueError("marks need every frame shown: leave max_frames=None")
  blocks = [([select_frames(clip, max_frames)], [""], caption) for clip, caption in zip(clips, captions)]
  return _render_blocks(blocks, scale=scale, font_size=font_size, marks=marks)


def make_comparison_image(
  originals,
  reconstructions,
  captions: Sequence[str] | None = None,
  *,
  max_frames: int | None = None,
  scale: int = 2,
  font_size: int | None = None,
  labels: tuple[str, str] = ("original", "reconstruction"),
) -> np.ndarray:
  """Sheet array with, per clip, the original row above the reconstruction row, then the caption."""
  originals = _as_clip_list(originals, "originals")
  reconstructions = _as_clip_list(reconstructions, "reconstructions")
  if len(originals) != len(reconstructions):
    raise ValueError(f"got {len(originals)} originals but {len(reconstructions)} reconstructions")
  if originals[0].shape[1:3] != reconstructions[0].shape[1:3]:
    raise ValueError(
      f"originals are {originals[0].shape[1:3]} but reconstructions are "
      f"{reconstructions[0].shape[1:3]} (H, W); they must match"
    )
  captions = _check_captions(captions, len(originals))
  blocks = [
    ([select_frames(o, max_frames), select_frames(r, max_frames)], list(labels), caption)
    for o, r, caption in zip(originals, reconstructions, captions)
  ]
  probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  font = _Layout(1, 1, 1, font_size or max(10, min(16, originals[0].shape[1] * scale // 4 + 6))).font
  label_width = int(max(probe.textlength(label, font=font) for label in labels)) + 8 if any(labels) else 0
  return _render_blocks(blocks, scale=scale, font_size=font_size, label_width=label_width)


def _save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path, format="PNG")
  return path


def save_contact_sheet(
  path: str | os.PathLike,
  videos,
  captions: Sequence[str] | None = None,
  *,
  max_frames: int | None = None,
  scale: int = 2,
  font_size: int | None = None,
  marks=None,
) -> Path:
  """Writes a contact-sheet PNG (one row per clip, frames left to right, caption below).

  Args: as `make_grid_image` (marks: given frames outlined); `path` gets a PNG (parent folders are created).
  Returns: the path written.
  """
  image = make_grid_image(videos, captions, max_frames=max_frames, scale=scale, font_size=font_size, marks=marks)
  return _save_png(path, image)


def save_comparison_sheet(
  path: str | os.PathLike,
  originals,
  reconstructions,
  captions: Sequence[str] | None = None,
  *,
  max_frames: int | None = None,
  scale: int = 2,
  font_size: int | None = None,
) -> Path:
  """Writes a PNG with each original clip's row above its reconstruction's row (VAE grids)."""
  return _save_png(
    path,
    make_comparison_image(
      originals, reconstructions, captions, max_frames=max_frames, scale=scale, font_size=font_size
    ),
  )


def make_sizes_image(clips: Sequence[np.ndarray], captions: Sequence[str], *, max_frames: int = 5, scale: int = 3):
  """Clips of different sizes side by side, as uint8 [H, W, 3]: one column per clip (up to `max_frames` evenly
  spaced frames top to bottom, its caption below), columns top-aligned. clips: uint8 [T_i, H_i, W_i, 3]."""
  captions = _check_captions(captions, len(clips))
  if not clips:
    raise ValueError("need at least one clip")
  columns = []
  for i, (clip, caption) in enumerate(zip(clips, captions)):
    frames = select_frames(check_frames(clip, f"clips[{i}]"), max_frames)
    labels = [""] * (len(frames) - 1) + [caption]
    columns.append(make_grid_image(list(frames[:, None]), labels, scale=scale))
  height = max(c.shape[0] for c in columns)
  sheet = np.empty((height, sum(c.shape[1] for c in columns), 3), np.uint8)
  sheet[:] = BACKGROUND
  x = 0
  for column in columns:
    sheet[: column.shape[0], x : x + column.shape[1]] = column
    x += column.shape[1]
  return sheet


def save_sizes_sheet(path: str | os.PathLike, clips: Sequence[np.ndarray], captions: Sequence[str], **kwargs) -> Path:
  """Writes `make_sizes_image(clips, captions, **kwargs)` as a PNG; returns the path."""
  return _save_png(path, make_sizes_image(clips, captions, **kwargs))
