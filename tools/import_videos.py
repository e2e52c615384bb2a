r"""Imports a folder of your own videos as a training dataset (same format as "shapes").

Every video (mp4 / webm / mov / mkv / avi / gif) is resampled to --fps, resized to
cover --height x --width and center-cropped (or, with --buckets, kept at its own aspect
ratio), and cut into clips of --num_frames frames starting every --stride frames.
Captions come from exactly one of:

  --captions=captions.csv        a UTF-8 CSV with the header line `path,caption` and one
                                 line per video; paths are relative to --videos_dir (or
                                 absolute); quote captions that contain commas. Only the
                                 listed videos are imported.
  --sidecar_captions             `clip.mp4` is captioned by `clip.txt` next to it.
  --captioner=my_pkg.mod:caption your Python function caption(clip) -> str, called
                                 with each clip as uint8 [T, H, W, 3].

Example (from the repository root, after `make install`):

  .venv/bin/python tools/import_videos.py --videos_dir=~/my_videos --captions=~/my_videos/captions.csv \
      --name=my_clips --num_frames=17 --height=64 --width=64 --fps=8 --stride=8

It prints the command-line overrides that train on it, e.g.

  .venv/bin/python tools/train_vae.py --config=configs/vae/natural.py --workdir=runs/my_vae \
      --config.data.dataset=video_folder --config.data.builder_config=my_clips ...

Splits: 'train', 'validation' and 'test' (what the training tools evaluate on). With
enough videos, whole videos are held out (--validation_fraction / --test_fraction of them);
with fewer (under 10 at the default 10 % + 10 %), the end of every video is held out
instead, never overlapping its training frames. The summary names the held-out footage.

Keep-aspect mode (native-size training): --buckets=32x32,32x48,48x32 puts each video in
the bucket nearest its aspect ratio (scaled to cover it, centre cropped) instead of a
square; read it per size with sora_jax.data.datasets.load_sources_by_size.

Nothing is written until the input checks out (a missing or malformed CSV, a listed file
that does not exist, no readable video are errors); files that cannot be decoded (or are
not videos, e.g. a PNG renamed .mp4) and videos shorter than one clip are skipped and
listed. The dataset is built in a temporary folder and swapped in at the end, so a failed
import, with or without --overwrite, leaves an existing dataset of that name intact.
"""

import os
import sys

from absl import app, flags

from sora_jax.configuration import run_tool
from sora_jax.data import importer, video_folder_builder

_VIDEOS_DIR = flags.DEFINE_string("videos_dir", None, "Folder holding the video files.", required=True)
_NAME = flags.DEFINE_string(
  "name",
  None,
  "Dataset name (letters, digits, _ and -); train with --config.data.dataset=video_folder "
  "--config.data.builder_config=NAME.",
  required=True,
)
_CAPTIONS = flags.DEFINE_string("captions", "", "UTF-8 CSV file with the header line path,caption.")
_SIDECAR = flags.DEFINE_bool("sidecar_captions", False, "Read each caption from a .txt beside its video.")
_CAPTIONER = flags.DEFINE_string("captioner", "", "'module:function' called as function(clip) -> str.")
_DATA_DIR = flags.DEFINE_string(
  "data_dir",
  "",
  "Where datasets live (default $SORA_JAX_DATA or ~/sora_jax_data); "
  "use the same value as --config.data.data_dir when training.",
)
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 17, "Frames per clip (1 + 4k for the causal VAE).")
_HEIGHT = flags.DEFINE_integer("height", 32, "Clip height in pixels.")
_WIDTH = flags.DEFINE_integer("width", 32, "Clip width in pixels.")
_BUCKETS = flags.DEFINE_string(
  "buckets",
  "",
  "Keep-aspect mode: HxW sizes, e.g. 32x32,32x48,48x32; each video takes the one nearest its aspect "
  "ratio (instead of --height x --width).",
)
_FPS = flags.DEFINE_float("fps", 8.0, "Frame rate clips are resampled to.")
_STRIDE = flags.DEFINE_integer(
  "stride",
  0,
  "Frames (at --fps) between clip starts; 0 = --num_frames (back-to-back clips); smaller values overlap clips.",
)
_VALIDATION = flags.DEFINE_float(
  "validation_fraction", 0.1, "Share of the footage held out as the 'validation' split (0 = none)."
)
_TEST = flags.DEFINE_float(
  "test_fraction", 0.1, "Share of the footage held out as the 'test' split, for final evaluations (0 = none)."
)
_SPLIT_BY = flags.DEFINE_enum(
  "split_by",
  "auto",
  ["auto", "video", "time"],
  "Hold out whole videos ('video'), the end of every video ('time'), or choose by the number of videos ('auto').",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing dataset with the same --name.")


def _settings() -> importer.ClipSettings:
  buckets = importer.parse_buckets(_BUCKETS.value)
  if buckets and (flags.FLAGS["height"].present or flags.FLAGS["width"].present):
    raise ValueError("pass either --buckets (keep the aspect ratio) or --height/--width (one size), not both")
  return importer.ClipSettings(
    num_frames=_NUM_FRAMES.value,
    height=_HEIGHT.value,
    width=_WIDTH.value,
    fps=_FPS.value,
    stride=_STRIDE.value,
    buckets=buckets,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    settings = _settings()
    captions = importer.make_caption_source(
      captions_csv=os.path.expanduser(_CAPTIONS.value), sidecar=_SIDECAR.value, captioner=_CAPTIONER.value
    )
    video_folder_builder.import_video_folder(
      os.path.expanduser(_VIDEOS_DIR.value),
      name=_NAME.value,
      captions=captions,
      settings=settings,
      data_dir=_DATA_DIR.value,
      validation_fraction=_VALIDATION.value,
      test_fraction=_TEST.value,
      split_by=_SPLIT_BY.value,
      overwrite=_OVERWRITE.value,
    )
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"error: {e}")
  data_dir = video_folder_builder.dataset_dir(_NAME.value, _DATA_DIR.value).parent.parent
  size = (
    f"--config.data.height={settings.height} --config.data.width={settings.width}"
    if not settings.buckets
    else "(clips of several sizes: read them per size with sora_jax.data.datasets.load_sources_by_size)"
  )
  print(
    f"train with: --config.data.dataset=video_folder --config.data.builder_config={_NAME.value} "
    f"--config.data.data_dir={data_dir} --config.data.num_frames={settings.num_frames} {size}"
  )


if __name__ == "__main__":
  run_tool(main)
