r"""Imports a folder of your own videos as a training dataset (same format as "shapes").

Every video (mp4 / webm / mov / mkv / avi / gif) is resampled to --fps, resized to
cover --height x --width and center-cropped, and cut into clips of --num_frames
frames starting every --stride frames. Captions come from exactly one of:

  --captions=captions.csv        a CSV with a header line `path,caption`; paths are
                                 relative to --videos_dir (or absolute). Only the
                                 listed videos are imported.
  --sidecar_captions             `clip.mp4` is captioned by `clip.txt` next to it.
  --captioner=my_pkg.mod:caption your Python function caption(clip) -> str, called
                                 with each clip as uint8 [T, H, W, 3].

Example:

  python tools/import_videos.py --videos_dir=~/my_videos --captions=~/my_videos/captions.csv \
      --name=my_clips --num_frames=17 --height=32 --width=32 --fps=8 --stride=8

then train on it with

  python tools/train_vae.py --config=configs/vae/demo.py --workdir=runs/my_vae \
      --config.data.dataset=video_folder --config.data.builder_config=my_clips

Files that cannot be decoded are skipped and listed at the end (and in
import_summary.json beside the data). A CSV without `path`/`caption` columns or a
listed file that does not exist stops the import before anything is written.
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
  "Dataset name; train with --config.data.dataset=video_folder --config.data.builder_config=NAME.",
  required=True,
)
_CAPTIONS = flags.DEFINE_string("captions", "", "CSV file with columns path,caption.")
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
_FPS = flags.DEFINE_float("fps", 8.0, "Frame rate clips are resampled to.")
_STRIDE = flags.DEFINE_integer(
  "stride",
  0,
  "Frames (at --fps) between clip starts; 0 = --num_frames (back-to-back clips); smaller values overlap clips.",
)
_VALIDATION = flags.DEFINE_float(
  "validation_fraction",
  0.1,
  "Fraction of the videos (not clips) held out as the 'validation' split; 0 = train split only.",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing dataset with the same --name.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    captions = importer.make_caption_source(
      captions_csv=os.path.expanduser(_CAPTIONS.value), sidecar=_SIDECAR.value, captioner=_CAPTIONER.value
    )
    settings = importer.ClipSettings(
      num_frames=_NUM_FRAMES.value, height=_HEIGHT.value, width=_WIDTH.value, fps=_FPS.value, stride=_STRIDE.value
    )
    builder, summary = video_folder_builder.import_video_folder(
      os.path.expanduser(_VIDEOS_DIR.value),
      name=_NAME.value,
      captions=captions,
      settings=settings,
      data_dir=_DATA_DIR.value,
      validation_fraction=_VALIDATION.value,
      overwrite=_OVERWRITE.value,
    )
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"error: {e}")
  if not sum(summary.clips.values()):
    sys.exit(f"error: no clips were imported (see the summary above); the dataset at {builder.data_dir} is empty")
  print(
    f"train with: --config.data.dataset=video_folder --config.data.builder_config={_NAME.value} "
    f"--config.data.data_dir={os.path.dirname(os.path.dirname(os.path.dirname(builder.data_dir)))} "
    f"--config.data.num_frames={settings.num_frames} --config.data.height={settings.height} "
    f"--config.data.width={settings.width}"
  )


if __name__ == "__main__":
  run_tool(main)
