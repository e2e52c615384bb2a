r"""Writes a contact sheet (PNG) of dataset clips, building the shapes dataset first if needed.

One row per clip (frames left to right) with its caption underneath. Use it to
check what a model will be trained on.

  python tools/show_dataset.py --out=contact.png                        # shapes, defaults of configs/base.py
  python tools/show_dataset.py --data_dir=/tmp/data --num=8 --split=validation --out=val.png
  python tools/show_dataset.py --config=configs/vae/demo.py --config.data.num_frames=33 --out=c.png
  python tools/show_dataset.py --config.data.dataset=video_folder --config.data.builder_config=my_clips \
      --out=mine.png                                                     # your imported videos

--data_dir, when given, overrides config.data.data_dir.
"""

import os
import sys

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  data_cfg = _CONFIG.value.data
  if _DATA_DIR.value:
    data_cfg.data_dir = _DATA_DIR.value
  try:
    source = datasets.load_data_source(data_cfg, _SPLIT.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  count = min(_NUM.value, len(source))
  examples = [source[i] for i in range(count)]
  caption_key = "canonical_caption" if _CANONICAL.value and "canonical_caption" in examples[0] else "caption"
  path = save_contact_sheet(
    _OUT.value,
    [e["video"] for e in examples],
    [e[caption_key] for e in examples],
    max_frames=_MAX_FRAMES.value or None,
    scale=_SCALE.value,
  )
  print(f"wrote {count} clips of {source!r} to {path}")


if __name__ == "__main__":
  if not any(a == "--config" or a.startswith("--config=") for a in sys.argv[1:]):
    sys.argv.insert(1, f"--config={_DEFAULT_CONFIG}")  # lets --config.data.* overrides work without --config
  run_tool(main)
