"""A web app for a trained system: every Pipeline mode in the browser, with progress.

  python tools/app.py --workdir=runs/demo [--host=127.0.0.1 --port=7860]     # or: make app

Opens a Gradio page with one tab per mode (text to video, animate an image, extend a video, connect two
clips, loop, edit), results as mp4 + GIF + contact sheet. Needs the [app] extra: pip install '.[app]'.
"""

import os

from absl import flags

from sora_jax.configuration import run_tool

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A trained workdir (make demo's runs/demo, or a DiT workdir), or a diffusers Wan 2.1 folder."
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (0.0.0.0 to serve the network).")
_PORT = flags.DEFINE_integer("port", 7860, "Port to serve on.")
_OUT = flags.DEFINE_string("out", None, "Folder for the generated files (default: a new temporary folder).")
_WARMUP = flags.DEFINE_bool(
  "warmup", True, "Sample once at the default settings before serving, so the first request does not compile."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  if not os.path.isdir(_WORKDIR.value):
    raise SystemExit(f"error: --workdir={_WORKDIR.value} is not a folder; train one first (make demo -> runs/demo)")
  try:
    from sora_jax.app import web
  except ImportError as e:
    raise SystemExit(f"error: the web app needs gradio ({e}); install it with: pip install '.[app]'") from None
  web.launch(_WORKDIR.value, host=_HOST.value, port=_PORT.value, out_dir=_OUT.value, warm_up=_WARMUP.value)


if __name__ == "__main__":
  run_tool(main)
