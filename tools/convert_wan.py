r"""Convert a diffusers Wan 2.1 folder into a sora_jax workdir (Orbax), read by every sora_jax tool.

  python tools/convert_wan.py --folder=/data/Wan2.1-T2V-1.3B-Diffusers --workdir=runs/wan13b

The workdir holds config.json (configs/dit/wan21.py with the folder's sizes and scheduler) and
the transformer's weights as an Orbax checkpoint (step 0) that restores onto any mesh shard by
shard; the VAE and the umT5 text encoder stay in the folder, which the config names. Then:

  python -c "from sora_jax import Pipeline; Pipeline.from_pretrained('runs/wan13b')(['a cat'])"
  python tools/train_dit.py --config=configs/dit/wan21.py:1.3b --config.init_from=runs/wan13b --workdir=...

(Both also take the folder itself; converting reads the safetensors once instead of on every load.)
"""

import os

from absl import flags

from sora_jax.configuration import run_tool

_FOLDER = flags.DEFINE_string("folder", None, "A diffusers Wan 2.1 T2V folder (model_index.json, transformer/, ...).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The new sora_jax workdir to write.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the stored weights.")
flags.mark_flags_as_required(["folder", "workdir"])


def main(argv):
  del argv
  from sora_jax.recipes import wan

  path = wan.convert(_FOLDER.value, os.path.abspath(_WORKDIR.value), dtype=_DTYPE.value)
  print(f"converted {_FOLDER.value} -> {path}")


if __name__ == "__main__":
  run_tool(main)
