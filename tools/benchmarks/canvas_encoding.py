r"""Encoding a segment that is not at the start of a clip: the canvas vs the segment alone (issue 15).

  python tools/benchmarks/canvas_encoding.py --vae_workdir=runs/demo/vae --clips=32

Prints (and writes --out as JSON) the PSNR of the segment's frames after decoding, for each way of
making its latent frames (sora_jax/evaluation/conditioning_eval.py `canvas_encoding_psnr`), on
shapes clips rendered at the VAE's training size from held-out specs. docs/experiments.md records
the result that chose the canvas.
"""

import json

import numpy as np
from absl import app, flags

_VAE = flags.DEFINE_string("vae_workdir", None, "A trained VAE workdir (runs/demo/vae).")
_CLIPS = flags.DEFINE_integer("clips", 32, "Clips to measure.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")
flags.mark_flags_as_required(["vae_workdir"])


def main(argv):
  del argv
  from sora_jax.data import shapes
  from sora_jax.evaluation import conditioning_eval
  from sora_jax.restore import restore_vae

  vae = restore_vae(_VAE.value)
  data = vae.config.data
  rng = np.random.default_rng(conditioning_eval.EVAL_SEED)
  specs = [shapes.sample_clip_spec(rng, aspect_ratio=data.width / data.height) for _ in range(_CLIPS.value)]
  clips = np.stack([shapes.render_clip(s, data.num_frames, data.height, data.width) for s in specs])
  result = conditioning_eval.canvas_encoding_psnr(vae.module, vae.params, clips, vae.config.vae.temporal_factor)
  result.update(clips=len(clips), vae_workdir=_VAE.value, step=vae.step)
  print(json.dumps(result, indent=2))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
