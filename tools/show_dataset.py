r"""Writes a contact sheet (PNG) of dataset clips, building the shapes dataset first if needed.

One row per clip (frames left to right) with its caption underneath. Use it to
check what a model will be trained on.

  python tools/show_dataset.py --out=contact.png                        # shapes, defaults of configs/base.py
  python tools/show_dataset.py --data_dir=/tmp/data --num=8 --split=validation --out=val.png
  python tools/show_dataset.py --config=configs/vae/demo.py --config.data.num_frames=33 --out=c.png
  python tools/show_dataset.py --config.data.dataset=video_folder --config.data.builder_config=my_clips \
      --out=mine.png                                                     # your imported videos
  python tools/show_dataset.py --sizes=1x32x32,17x32x48,17x48x32,33x32x32 --num=2 --out=sizes.png
                                                                         # shapes at several sizes
  python tools/show_dataset.py --config.data.builder_config=new_concepts --canonical --out=new.png
                                                                         # the fine-tuning concepts

--data_dir, when given, overrides config.data.data_dir. Clips of different heights or
widths (several --sizes, a keep-aspect import) are centred on a common cell size.
"""

import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sora_jax.configuration import run_tool
from sora_jax.data import datasets
from sora_jax.media.contact_sheet import save_contact_sheet

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "base.py")
_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file whose `data` section names the dataset (default configs/base.py); "
  "override fields with --config.data.KEY=VALUE.",
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", "", "Dataset folder (overrides --config.data.data_dir; default $SORA_JAX_DATA or ~/sora_jax_data)."
)
_NUM = flags.DEFINE_integer("num", 8, "Number of clips (rows).")
_SPLIT = flags.DEFINE_string("split", "train", "Split to show: train, validation or test.")
_OUT = flags.DEFINE_string("out", "contact_sheet.png", "PNG file to write.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 0, "Show at most this many frames per clip (0 = all).")
_SCALE = flags.DEFINE_integer("scale", 3, "Integer upscaling of each frame in the sheet.")
_CANONICAL = flags.DEFINE_bool("canonical", False, "Show canonical captions (shapes) instead of training captions.")
_SIZES = flags.DEFINE_string(
  "sizes",
  "",
  "FRAMESxHEIGHTxWIDTH sizes to show --num clips of each (shapes: built if needed), e.g. 1x32x32,17x32x48.",
)


def _parse_sizes(text: str) -> list[tuple[int, int, int]]:
  sizes = []
  for item in (part.strip() for part in text.split(",") if part.strip()):
    parts = item.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
      raise ValueError(f"--sizes entry {item!r} must look like FRAMESxHEIGHTxWIDTH, e.g. 17x32x48")
    sizes.append(tuple(int(p) for p in parts))
  return sizes


def _centre_on_common_size(videos: list[np.ndarray]) -> list[np.ndarray]:
  """Pads clips of different H, W (grey, centred) to the largest, so they share one sheet."""
  height = max(v.shape[1] for v in videos)
  width = max(v.shape[2] for v in videos)
  out = []
  for v in videos:
    top, left = (height - v.shape[1]) // 2, (width - v.shape[2]) // 2
    padded = np.full((v.shape[0], height, width, 3), 40, np.uint8)
    padded[:, top : top + v.shape[1], left : left + v.shape[2]] = v
    out.append(padded)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  data_cfg = _CONFIG.value.data
  if _DATA_DIR.value:
    data_cfg.data_dir = _DATA_DIR.value
  try:
    if _SIZES.value:
      sources = list(datasets.load_sources_by_size(data_cfg, _SPLIT.value, _parse_sizes(_SIZES.value)).values())
    else:
      sources = [datasets.load_data_source(data_cfg, _SPLIT.value)]
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  examples = [source[i] for source in sources for i in range(min(_NUM.value, len(source)))]
  caption_key = "canonical_caption" if _CANONICAL.value and "canonical_caption" in examples[0] else "caption"
  labels = [
    e[caption_key] if not _SIZES.value else f"{'x'.join(map(str, e['video'].shape[:3]))}: {e[caption_key]}"
    for e in examples
  ]
  path = save_contact_sheet(
    _OUT.value,
    _centre_on_common_size([e["video"] for e in examples]),
    labels,
    max_frames=_MAX_FRAMES.value or None,
    scale=_SCALE.value,
  )
  print(f"wrote {len(examples)} clips of {', '.join(map(repr, sources))} to {path}")


if __name__ == "__main__":
  if not any(a == "--config" or a.startswith("--config=") for a in sys.argv[1:]):
    sys.argv.insert(1, f"--config={_DEFAULT_CONFIG}")  # lets --config.data.* overrides work without --config
  run_tool(main)
