r"""Export a Wan-architecture run (a fine-tune of Wan 2.1) as a diffusers folder WanPipeline loads.

  python tools/export_wan.py --workdir=runs/wan13b_ft --out=exports/wan13b_ft
  python -c "import diffusers; diffusers.WanPipeline.from_pretrained('exports/wan13b_ft')"

The transformer comes from the run (its EMA params when it kept them); the VAE, umT5 text
encoder, tokenizer and scheduler are copied from the Wan folder the run started from (its
config.init_from) or from --base. The output directory must be new or empty.
"""

from absl import flags

from sora_jax.configuration import run_tool

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to export (tools/train_dit.py with configs/dit/wan21.py).")
_OUT = flags.DEFINE_string("out", None, "The diffusers folder to write (new or empty).")
_BASE = flags.DEFINE_string("base", "", "The Wan 2.1 folder to take the other components from (default: init_from).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the written weights.")
_EMA = flags.DEFINE_bool("use_ema", True, "Export the EMA params when the run kept them.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  from sora_jax.recipes import wan

  out = wan.export(_WORKDIR.value, _OUT.value, base_folder=_BASE.value, dtype=_DTYPE.value, use_ema=_EMA.value)
  print(f"exported {_WORKDIR.value} -> {out}")


if __name__ == "__main__":
  run_tool(main)
