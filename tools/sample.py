r"""Generate videos from text prompts with a trained sora_jax workdir.

  python tools/sample.py --workdir=runs/demo --prompt="a red circle moving left" \
      --prompt="blue box going up" --out=runs/demo/samples

Writes, per prompt, <out>/<index>_<prompt>.mp4 (H.264) and .gif, plus
<out>/contact_sheet.png (one row per prompt, the prompt as caption) and
<out>/prompts.json (each prompt as given and as expanded). Sizes, steps, guidance and
sampler default to the trained config's; prompts are rewritten by the domain's prompt
expander (shapes: synonyms / word order / missing parts -> canonical caption) unless
--noexpand_prompts.
"""

import json
import os
import re
import time

from absl import flags

from sora_jax.configuration import run_tool
from sora_jax.sampling import flags as sampling_flags

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A trained workdir (make demo's runs/demo, or a DiT workdir), or a diffusers Wan 2.1 folder."
)
_PROMPTS = flags.DEFINE_multi_string("prompt", None, "A text prompt; repeat the flag for several.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default <workdir>/samples).")
_FRAMES = flags.DEFINE_integer("num_frames", None, "Frames per video (1+4k); default: trained config.")
_HEIGHT = flags.DEFINE_integer("height", None, "Pixels; default: trained config.")
_WIDTH = flags.DEFINE_integer("width", None, "Pixels; default: trained config.")
_SAMPLING = sampling_flags.define_sampling_flags()  # --num_steps, --guidance_scale, --sampler
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed (prompt i uses seed + i).")
_NEGATIVE = flags.DEFINE_string("negative_prompt", None, "What to steer away from; default: the empty prompt.")
_FPS = flags.DEFINE_float("fps", 8.0, "Frame rate of the written files.")
_SCALE = flags.DEFINE_integer("scale", 4, "Integer upscaling of the written mp4/GIF (32x32 is tiny on screen).")
_EXPAND = flags.DEFINE_bool("expand_prompts", True, "Rewrite prompts with the domain's prompt expander.")
flags.mark_flags_as_required(["workdir", "prompt"])


def slug(text: str, max_len: int = 40) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len] or "prompt"


def main(argv):
  del argv
  from sora_jax import Pipeline
  from sora_jax.media import contact_sheet, video_io

  out = _OUT.value or os.path.join(_WORKDIR.value, "samples")
  os.makedirs(out, exist_ok=True)
  pipe = Pipeline.from_pretrained(_WORKDIR.value)
  prompts = list(_PROMPTS.value)
  expanded = [pipe.prompt_expander(p) for p in prompts] if _EXPAND.value else prompts
  start = time.time()
  videos = pipe(
    expanded,
    num_frames=_FRAMES.value,
    height=_HEIGHT.value,
    width=_WIDTH.value,
    seed=_SEED.value,
    negative_prompt=_NEGATIVE.value,
    expand_prompts=False,
    progress=True,
    **_SAMPLING.overrides(),
  )
  seconds = time.time() - start
  files = []
  for i, (prompt, video) in enumerate(zip(prompts, videos)):
    stem = os.path.join(out, f"{i:02d}_{slug(prompt)}")
    video_io.write_mp4(stem + ".mp4", video, fps=_FPS.value, scale=_SCALE.value)
    video_io.write_gif(stem + ".gif", video, fps=_FPS.value, scale=_SCALE.value)
    files += [stem + ".mp4", stem + ".gif"]
  captions = [p if p == e else f"{p}  ->  {e}" for p, e in zip(prompts, expanded)]
  sheet = contact_sheet.save_contact_sheet(os.path.join(out, "contact_sheet.png"), videos, captions)
  with open(os.path.join(out, "prompts.json"), "w") as f:
    json.dump([{"prompt": p, "expanded": e} for p, e in zip(prompts, expanded)], f, indent=2)
  print(f"{len(prompts)} videos {videos.shape[1:]} in {seconds:.1f} s (incl. compilation)")
  print(f"contact sheet: {sheet}")
  for path in files:
    print(f"  {path}")


if __name__ == "__main__":
  run_tool(main)
