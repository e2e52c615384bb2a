r"""Which colours survive the VAE: shapes clips of every colour (the new concepts' orange included), encoded and
decoded, read back by the shapes analyzer.

  python tools/benchmarks/vae_colors.py --vae_workdir=runs/demo_s4/vae --clips_per_color=8

A LoRA on the DiT cannot make a colour the decoder does not produce. This measures the ceiling a VAE puts
on a new-colour fine-tune (README "Fine-tune with LoRA"). Prints (and writes --out as) JSON: per colour,
the analyzer's reading of the inputs and of their reconstructions, and the mean object colour of the
reconstructions' middle frame.
"""

import collections
import json

import numpy as np
from absl import app, flags

_VAE = flags.DEFINE_string("vae_workdir", None, "A trained VAE workdir (runs/demo/vae).")
_CLIPS = flags.DEFINE_integer("clips_per_color", 8, "Clips per colour (random shape, motion and place).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")
flags.mark_flags_as_required(["vae_workdir"])


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp

  from sora_jax.data import shapes
  from sora_jax.evaluation import shapes_analyzer
  from sora_jax.models import vae as vae_lib
  from sora_jax.restore import restore_vae

  vae = restore_vae(_VAE.value)
  data = vae.config.data

  @jax.jit
  def roundtrip(video):
    mean = vae_lib.encode_video(vae.module, vae.params, video.astype(jnp.float32) / 127.5 - 1.0)[0]
    pixels = vae_lib.decode_latents(vae.module, vae.params, mean)
    return jnp.clip(jnp.round((pixels + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

  rng = np.random.default_rng(0)
  result: dict = {"vae_workdir": _VAE.value, "step": vae.step, "colors": {}}
  for color in shapes.ALL_COLORS:
    specs = [shapes.sample_clip_spec(rng, color=color) for _ in range(_CLIPS.value)]
    clips = np.stack([shapes.render_clip(s, data.num_frames, data.height, data.width) for s in specs])
    recon = np.asarray(roundtrip(jnp.asarray(clips)))
    middle = recon[:, data.num_frames // 2].reshape(-1, 3).astype(np.float64)
    result["colors"][color] = {
      "rgb": list(shapes.ALL_COLORS[color]),
      "read_inputs": dict(collections.Counter(shapes_analyzer.analyze_video(v)["color"] for v in clips)),
      "read_reconstructions": dict(collections.Counter(shapes_analyzer.analyze_video(v)["color"] for v in recon)),
      "reconstructed_rgb": middle[middle.max(axis=1) > 60].mean(axis=0).round(1).tolist(),
    }
  print(json.dumps(result, indent=2))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
