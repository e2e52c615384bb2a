"""Natural-image test videos: the photographs that ship with scikit-image, panned and zoomed into mp4s.

The shapes dataset is flat colour on black; a VAE or an importer that only ever saw it can
hide problems that real footage shows at once (texture, noise, camera motion, colour
gradients). These videos are real photographs (an astronaut, a cat, coffee, a rocket, the
Hubble deep field, gravel, grass, ...) that scikit-image ships inside its wheel, so they need
no download, and a virtual camera pans and zooms over each one like a documentary shot.

    captions_csv = write_photo_videos("videos/", num_frames=160, height=96, width=96)
    # videos/astronaut.mp4, ..., videos/captions.csv (path,caption) -> tools/import_videos.py

or from a shell (after `make install`, which installs scikit-image with the test extra):

    .venv/bin/python -m sora_jax.data.photo_videos --out_dir=videos --num_frames=160 --size=96

One video per photograph, so an import that holds out whole videos holds out whole
photographs. Each video is a chain of `moves` camera moves: from one crop window (position
and zoom) to the next, at constant speed, the crop resampled with antialiasing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (scikit-image loader, caption subject). Colour photographs first, then grey ones.
PHOTOS: dict[str, tuple[str, str]] = {
  "astronaut": ("astronaut", "an astronaut in front of a flag"),
  "chelsea": ("chelsea", "a tabby cat"),
  "coffee": ("coffee", "a cup of coffee on a saucer"),
  "rocket": ("rocket", "a rocket on its launch pad"),
  "hubble": ("hubble_deep_field", "galaxies in deep space"),
  "tissue": ("immunohistochemistry", "stained tissue under a microscope"),
  "retina": ("retina", "the back of a human eye"),
  "motorcycle": ("stereo_motorcycle", "a motorcycle in a workshop"),
  "camera": ("camera", "a black and white photo of a cameraman"),
  "brick": ("brick", "a black and white brick wall"),
  "grass": ("grass", "black and white grass"),
  "gravel": ("gravel", "black and white gravel"),
  "moon": ("moon", "the surface of the moon"),
  "coins": ("coins", "old coins on a table"),
  "clock": ("clock", "a black and white wall clock"),
  "cell": ("cell", "a cell under a microscope"),
}


def load_photo(name: str) -> np.ndarray:
  """The photograph `name` (a key of PHOTOS) as uint8 [H, W, 3] (grey photos repeated over RGB)."""
  if name not in PHOTOS:
    raise ValueError(f"unknown photo {name!r}; choose from {sorted(PHOTOS)}")
  try:
    from skimage import data
  except ImportError as e:
    raise ImportError(
      "the photo videos need scikit-image: `pip install scikit-image` (the [test] extra of sora_jax, "
      "which `make install` installs)"
    ) from e
  image = getattr(data, PHOTOS[name][0])()
  if isinstance(image, tuple):  # stereo_motorcycle -> (left, right, disparity)
    image = image[0]
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def _random_window(rng: np.random.Generator, image_hw: tuple[int, int], aspect: float) -> np.ndarray:
  """A crop window (x0, y0, x1, y1) with width / height = aspect, covering 35-90 % of the image's fitting side."""
  h, w = image_hw
  fit_h = min(h, w / aspect)  # the largest window height that fits
  win_h = fit_h * rng.uniform(0.35, 0.9)
  win_w = win_h * aspect
  x0 = rng.uniform(0, w - win_w)
  y0 = rng.uniform(0, h - win_h)
  return np.array([x0, y0, x0 + win_w, y0 + win_h])


def pan_zoom_frames(
  image: np.ndarray, num_frames: int, height: int, width: int, rng: np.random.Generator, *, moves: int = 1
) -> np.ndarray:
  """A virtual camera over `image`: uint8 [num_frames, height, width, 3].

  The camera goes through moves + 1 random crop windows (position and zoom), at constant
  speed between consecutive ones; each frame is its window resampled to height x width
  with antialiasing (PIL's Lanczos over a sub-pixel box).
  """
  if num_frames < 1 or height < 1 or width < 1 or moves < 1:
    raise ValueError(f"num_frames, height, width and moves must be >= 1, got {(num_frames, height, width, moves)}")
  picture = Image.fromarray(np.asarray(image, np.uint8))
  windows = np.stack([_random_window(rng, image.shape[:2], width / height) for _ in range(moves + 1)])
  # Frame t sits at position t / (T - 1) * moves along the chain of windows.
  positions = np.linspace(0.0, moves, num_frames) if num_frames > 1 else np.zeros(1)
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for t, position in enumerate(positions):
    k = min(int(position), moves - 1)
    box = windows[k] + (position - k) * (windows[k + 1] - windows[k])
    frames[t] = np.asarray(picture.resize((width, height), Image.Resampling.LANCZOS, box=tuple(box)))
  return frames


def write_photo_videos(
  out_dir: str | os.PathLike,
  *,
  photos: list[str] | None = None,
  num_frames: int = 160,
  height: int = 96,
  width: int = 96,
  fps: float = 8.0,
  moves: int = 4,
  seed: int = 0,
) -> Path:
  """Writes one pan-and-zoom mp4 per photograph and a captions.csv (path,caption) beside them.

  Args:
    out_dir: folder to write into (created).
    photos: keys of PHOTOS (default: all 16).
    num_frames, height, width, fps: format of each video (H.264, so height and width even).
    moves: camera moves per video.
    seed: the camera paths are a pure function of (seed, photo name).
  Returns:
    The path of captions.csv, ready for tools/import_videos.py --captions=...
  """
  from sora_jax.media import video_io

  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  names = list(PHOTOS) if photos is None else list(photos)
  lines = ["path,caption"]
  for name in names:
    image = load_photo(name)
    rng = np.random.default_rng([seed, *name.encode()])
    frames = pan_zoom_frames(image, num_frames, height, width, rng, moves=moves)
    video_io.write_mp4(out_dir / f"{name}.mp4", frames, fps=fps)
    lines.append(f'{name}.mp4,"a camera panning and zooming over {PHOTOS[name][1]}"')
  captions = out_dir / "captions.csv"
  captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return captions


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m sora_jax.data.photo_videos")
  parser.add_argument("--out_dir", required=True, help="folder for the mp4s and captions.csv")
  parser.add_argument("--num_frames", type=int, default=160, help="frames per video (default 160: 20 s at 8 fps)")
  parser.add_argument("--size", type=int, default=96, help="height and width in pixels (even; default 96)")
  parser.add_argument("--fps", type=float, default=8.0)
  parser.add_argument("--moves", type=int, default=4, help="camera moves per video")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  path = write_photo_videos(
    args.out_dir,
    num_frames=args.num_frames,
    height=args.size,
    width=args.size,
    fps=args.fps,
    moves=args.moves,
    seed=args.seed,
  )
  print(f"wrote {len(PHOTOS)} videos and {path}")


if __name__ == "__main__":
  main()
