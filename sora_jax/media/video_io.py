"""Writing and reading video files: H.264 mp4 (PyAV), GIF (Pillow), and reading anything PyAV opens.

Frames are always `np.uint8 [T, H, W, 3]` RGB. Nothing here needs an external
ffmpeg binary: PyAV ships its own libav/libx264.

  write_mp4("out.mp4", frames, fps=8, scale=4)   # 32x32 clips upscaled so players show them
  write_gif("out.gif", frames, fps=8, scale=4)
  frames, fps = read_video("out.mp4")           # mp4 / webm / mov / gif / ...

Why the details matter:
* H.264 with `yuv420p` (the pixel format every player accepts) needs even
  height and width; odd sizes are padded by repeating the last row/column.
* GIF stores 256 colours per file. The palette always contains black and the
  seven saturated colours of the shapes dataset, so those survive a round trip
  exactly; a clip with <= 256 distinct colours is stored losslessly.
* Pillow merges identical consecutive GIF frames into one longer frame (a
  still clip becomes a single frame). `write_gif` records the frame rate in the
  GIF comment and `read_video` repeats held frames, so the frame count survives.
"""

from __future__ import annotations

import fractions
import os
import re
from pathlib import Path

import av
import numpy as np
from PIL import Image

# Black plus the seven colours of the shapes dataset (DESIGN.md §4): always in the GIF palette.
RESERVED_GIF_COLORS = (
  (0, 0, 0),
  (255, 0, 0),
  (0, 255, 0),
  (0, 0, 255),
  (255, 255, 0),
  (0, 255, 255),
  (255, 0, 255),
  (255, 255, 255),
)
_GIF_COMMENT_PREFIX = "sora_jax fps="
_GIF_SUFFIXES = (".gif",)


class VideoReadError(ValueError):
  """A video file is missing, corrupt, empty or has no video stream."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"cannot read video {self.path!r}: {reason}")


# ----------------------------------------------------------------------------- checks


def check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
  """Returns `frames` as a C-contiguous uint8 [T, H, W, 3] array or raises ValueError."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(
      f"{name} must have shape [T, H, W, 3] (RGB), got {frames.shape}; "
      "add a time axis with frames[None] for a single image"
    )
  if frames.dtype != np.uint8:
    raise ValueError(
      f"{name} must be uint8 in [0, 255], got {frames.dtype}; convert floats with "
      "sora_jax.media.convert.to_uint8(x, value_range=(-1, 1))"
    )
  if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
    raise ValueError(f"{name} is empty: shape {frames.shape}")
  return np.ascontiguousarray(frames)


def _check_fps(fps: float) -> None:
  if not fps > 0:
    raise ValueError(f"fps must be > 0, got {fps}")


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour integer upscale of [..., H, W, C] -> [..., H*scale, W*scale, C]."""
  if int(scale) != scale or scale < 1:
    raise ValueError(f"scale must be a positive integer, got {scale}")
  if scale == 1:
    return frames
  return np.repeat(np.repeat(frames, scale, axis=-3), scale, axis=-2)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
  """Pads [T, H, W, 3] by repeating the last row/column so H and W are even (yuv420p)."""
  pad_h = frames.shape[1] % 2
  pad_w = frames.shape[2] % 2
  if not pad_h and not pad_w:
    return frames
  return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _prepare_output_path(path: str | os.PathLike) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  return path


# ----------------------------------------------------------------------------- mp4


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 8, *, scale: int = 1, crf: int = 18) -> Path:
  """Writes uint8 [T, H, W, 3] frames as an H.264 (libx264, yuv420p) mp4.

  Args:
    path: output file; parent folders are created. Written to a temporary file
      first and renamed, so a crash never leaves a half-written video at `path`.
    frames: uint8 [T, H, W, 3] RGB.
    fps: frames per second (may be fractional).
    scale: integer nearest-neighbour upscale before encoding; tiny clips
      (32x32) are hard to see in players and suffer from chroma subsampling,
      so use e.g. scale=4 for viewing. Default 1 keeps the original size.
    crf: x264 constant rate factor (0 = lossless luma, 18 = visually lossless,
      23 = x264 default). Lower is larger and better.
  Returns:
    The path written. The stored size is [H*scale, W*scale], each padded up to
    an even number by repeating the last row/column (yuv420p needs even sizes);
    `read_video` returns the padded size.
  """
  frames = check_frames(frames)
  _check_fps(fps)
  frames = _pad_to_even(upscale(frames, scale))
  path = _prepare_output_path(path)
  tmp_path = path.with_name(path.name + ".partial")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  try:
    with av.open(str(tmp_path), mode="w", format="mp4") as container:
      stream = container.add_stream("libx264", rate=rate)
      stream.width = frames.shape[2]
      stream.height = frames.shape[1]
      stream.pix_fmt = "yuv420p"
      stream.options = {"crf": str(int(crf)), "preset": "medium"}
      for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
          container.mux(packet)
      for packet in stream.encode():  # flush the encoder
        container.mux(packet)
    os.replace(tmp_path, path)
  finally:
    if tmp_path.exists():
      tmp_path.unlink()
  return path


# ----------------------------------------------------------------------------- gif


def _nearest_palette_indices(pixels: np.ndarray, palette: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
  """Index of the nearest palette colour (squared RGB distance) for each pixel in [N, 3]."""
  palette = palette.astype(np.int32)
  out = np.empty(len(pixels), dtype=np.uint8)
  for start in range(0, len(pixels), chunk):
    block = pixels[start : start + chunk].astype(np.int32)
    dist = ((block[:, None, :] - palette[None, :, :]) ** 2).sum(-1)
    out[start : start + chunk] = dist.argmin(-1)
  return out


def _gif_palette_and_indices(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One global palette for the whole clip and the palette index of every pixel.

  Returns (palette uint8 [P, 3] with P <= 256, indices uint8 [T, H, W]). With
  <= 256 distinct colours the palette is exact. Otherwise it is the reserved
  colours plus a median-cut palette of the clip, and every pixel maps to its
  nearest entry (no dithering: dithering flickers between frames).
  """
  pixels = frames.reshape(-1, 3)
  colors, inverse = np.unique(pixels, axis=0, return_inverse=True)
  if len(colors) <= 256:
    return colors.astype(np.uint8), inverse.reshape(frames.shape[:3]).astype(np.uint8)
  reserved = np.array(RESERVED_GIF_COLORS, dtype=np.uint8)
  num_free = 256 - len(reserved)
  # Median cut over a sample of the clip laid out as one tall image.
  step = max(1, len(pixels) // (1 << 18))
  sample = pixels[::step]
  mosaic = Image.fromarray(sample.reshape(-1, 1, 3))
  quantized = mosaic.quantize(colors=num_free, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
  learned = np.array(quantized.getpalette()[: 3 * num_free], dtype=np.uint8).reshape(-1, 3)
  palette = np.concatenate([reserved, learned], axis=0)
  palette = np.unique(palette, axis=0)[:256]
  indices = _nearest_palette_indices(colors, palette)[inverse]
  return palette, indices.reshape(frames.shape[:3])


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float = 8, *, scale: int = 1) -> Path:
  """Writes uint8 [T, H, W, 3] frames as a looping GIF with one global palette.

  Black and the seven saturated shapes colours are always exact; clips with at
  most 256 distinct colours are stored losslessly. GIF delays are multiples of
  10 ms, so the stored rate is rounded (8 fps -> 120 ms per frame); the exact
  `fps` is kept in the GIF comment for `read_video`. `scale` is an integer
  nearest-neighbour upscale, as in `write_mp4`.
  """
  frames = check_frames(frames)
  _check_fps(fps)
  frames = upscale(frames, scale)
  palette, indices = _gif_palette_and_indices(frames)
  flat_palette = np.zeros((256, 3), dtype=np.uint8)
  flat_palette[: len(palette)] = palette
  images = []
  for frame_indices in indices:
    image = Image.fromarray(frame_indices, mode="P")
    image.putpalette(flat_palette.reshape(-1).tolist())
    images.append(image)
  path = _prepare_output_path(path)
  tmp_path = path.with_name(path.name + ".partial")
  try:
    images[0].save(
      tmp_path,
      format="GIF",
      save_all=True,
      append_images=images[1:],
      duration=int(round(1000.0 / fps)),
      loop=0,
      optimize=False,
      disposal=1,
      comment=f"{_GIF_COMMENT_PREFIX}{float(fps)!r} frames={len(images)}",
    )
    os.replace(tmp_path, path)
  finally:
    if tmp_path.exists():
      tmp_path.unlink()
  return path


# ----------------------------------------------------------------------------- reading


def _gif_fps_from_comment(comment) -> float | None:
  if isinstance(comment, bytes):
    comment = comment.decode("utf-8", errors="replace")
  match = re.search(re.escape(_GIF_COMMENT_PREFIX) + r"([0-9.eE+-]+)", comment or "")
  return float(match.group(1)) if match else None


def _read_gif(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
  """Reads a GIF with Pillow, repeating frames held for several frame intervals."""
  try:
    image = Image.open(path)
    image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise VideoReadError(path, f"not a readable GIF ({e})") from e
  with image:
    fps = _gif_fps_from_comment(image.info.get("comment"))
    frames, durations = [], []
    try:
      for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frames.append(np.asarray(image.convert("RGB")))
        durations.append(image.info.get("duration", 0) or 0)
    except (OSError, EOFError, SyntaxError, ValueError) as e:
      if not frames:
        raise VideoReadError(path, f"corrupt GIF ({e})") from e
  if not frames:
    raise VideoReadError(path, "the GIF has no frames")
  positive = [d for d in durations if d > 0]
  if fps is None:
    fps = 1000.0 / min(positive) if positive else 10.0  # browsers show 0-delay GIFs at ~10 fps
  interval_ms = 1000.0 / fps
  counts = [max(1, int(round(d / interval_ms))) if d > 0 else 1 for d in durations]
  video = np.repeat(np.stack(frames), counts, axis=0)
  if max_frames is not None:
    video = video[:max_frames]
  return video, float(fps)


def _read_with_pyav(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
  try:
    container = av.open(str(path), mode="r")
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoReadError(path, f"not a video file PyAV can open ({e})") from e
  frames = []
  with container:
    if not container.streams.video:
      raise VideoReadError(path, "the file has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    try:
      for frame in container.decode(stream):
        frames.append(frame.to_ndarray(format="rgb24"))
        if max_frames is not None and len(frames) >= max_frames:
          break
    except (av.FFmpegError, OSError, ValueError) as e:
      if not frames:
        raise VideoReadError(path, f"corrupt video data ({e})") from e
  if not frames:
    raise VideoReadError(path, "the video stream has no decodable frames")
  return np.stack(frames), fps


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
  """Reads a video file (mp4, webm, mov, mkv, avi, gif, ...) into RGB frames.

  Args:
    path: the file.
    max_frames: stop after this many frames (None = all).
  Returns:
    (frames uint8 [T, H, W, 3], fps). A file whose tail is truncated returns the
    frames decoded before the damage. GIFs are read with Pillow (exact palette
    colours); a GIF frame held for n frame intervals is repeated n times, so
    the result always has a constant frame rate.
  Raises:
    VideoReadError (a ValueError) naming the path and the reason when the file
    is missing, is not a video, has no video stream or has no decodable frame.
  """
  path = Path(path)
  if max_frames is not None and max_frames < 1:
    raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
  if not path.exists():
    raise VideoReadError(path, "the file does not exist")
  if not path.is_file():
    raise VideoReadError(path, "not a regular file")
  if path.stat().st_size == 0:
    raise VideoReadError(path, "the file is empty (0 bytes)")
  if path.suffix.lower() in _GIF_SUFFIXES:
    return _read_gif(path, max_frames)
  return _read_with_pyav(path, max_frames)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8, *, scale: int = 1) -> Path:
  """Writes mp4 or GIF depending on the file suffix (".mp4" or ".gif")."""
  writers = {".mp4": write_mp4, ".gif": write_gif}
  suffix = Path(path).suffix.lower()
  if suffix not in writers:
    raise ValueError(f"cannot write {os.fspath(path)!r}: the suffix must be one of {sorted(writers)}")
  return writers[suffix](path, frames, fps, scale=scale)


__all__ = [
  "VideoReadError",
  "read_video",
  "write_mp4",
  "write_gif",
  "write_video",
  "check_frames",
  "upscale",
  "RESERVED_GIF_COLORS",
]
