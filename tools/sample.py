r"""Generate videos from text prompts with a trained sora_jax workdir.

  python tools/sample.py --workdir=runs/demo --prompt="a red circle moving left" \
      --prompt="blue box going up" --out=runs/demo/samples

Images and videos as prompts (one model; --mode, default text):

  python tools/sample.py --workdir=runs/demo --mode=animate --image=first.png --prompt="a red circle moving left"
  python tools/sample.py --workdir=runs/demo --mode=extend --video=clip.mp4 --num_frames=17 --prompt=...
  python tools/sample.py --workdir=runs/demo --mode=extend_backward --video=last8.gif --prompt=...
  python tools/sample.py --workdir=runs/demo --mode=connect --image=start.png --end=end.png --prompt=...
  python tools/sample.py --workdir=runs/demo --mode=loop --prompt="a blue square moving up"
  python tools/sample.py --workdir=runs/demo --mode=edit --video=clip.mp4 --strength=0.7 --prompt="a blue ..."

(--image/--end: PNG or JPEG, --video: mp4 or GIF, at the model's size; every prompt gets the
same given frames). The contact sheet outlines the given frames in orange.

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

import numpy as np
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
MODES = ("text", "animate", "extend", "extend_backward", "connect", "loop", "edit")
_MODE = flags.DEFINE_enum(
  "mode",
  "text",
  MODES,
  "text: text-to-video; animate: --image is frame 0; extend / extend_backward: --video is the start / the end; "
  "connect: from --image (or --video) to --end; loop: a clip that plays on repeat; edit: --video re-made under "
  "the prompt (SDEdit, --strength).",
)
_IMAGE = flags.DEFINE_string("image", None, "PNG/JPEG: the image to animate, or connect's start frame.")
_VIDEO = flags.DEFINE_string("video", None, "mp4/GIF: the clip to extend or edit, or connect's start clip.")
_END = flags.DEFINE_string("end", None, "PNG/JPEG (a frame) or mp4/GIF (a clip): connect's end.")
_STRENGTH = flags.DEFINE_float("strength", 0.7, "edit: the fraction of the denoising trajectory re-run, in (0, 1].")
flags.mark_flags_as_required(["workdir", "prompt"])

NEEDS = {
  "animate": ("image",),
  "extend": ("video",),
  "extend_backward": ("video",),
  "connect": ("end",),
  "edit": ("video",),
}


def read_frames(path: str) -> np.ndarray:
  """uint8 [T, H, W, 3] from a PNG/JPEG (T = 1) or an mp4/GIF."""
  from PIL import Image

  from sora_jax.media import video_io

  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist")
  if path.lower().endswith((".png", ".jpg", ".jpeg")):
    return np.asarray(Image.open(path).convert("RGB"), np.uint8)[None]
  return video_io.read_video(path)[0]


def check_mode_flags(mode: str, image: str | None, video: str | None, end: str | None) -> None:
  """Clear errors for missing or contradictory prompt files, before any work."""
  given = {"image": image, "video": video, "end": end}
  for name in NEEDS.get(mode, ()):
    if not given[name]:
      raise ValueError(f"--mode={mode} needs --{name}=PATH")
  if mode == "connect" and not (image or video):
    raise ValueError("--mode=connect needs its start: --image=PATH (a frame) or --video=PATH (a clip)")
  if mode in ("text", "loop") and any(given.values()):
    raise ValueError(f"--mode={mode} takes no --image/--video/--end (use animate, extend, connect or edit)")


def slug(text: str, max_len: int = 40) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len] or "prompt"


def main(argv):
  del argv
  from sora_jax import Pipeline
  from sora_jax.errors import ClearError
  from sora_jax.media import contact_sheet, video_io

  mode = _MODE.value
  check_mode_flags(mode, _IMAGE.value, _VIDEO.value, _END.value)
  if not os.path.isdir(_WORKDIR.value):  # checked before anything is created (a typo must not make a folder)
    raise ClearError(f"--workdir={_WORKDIR.value!r} does not exist: pass a trained workdir (make demo's runs/demo)")
  out = _OUT.value or os.path.join(_WORKDIR.value, "samples")
  pipe = Pipeline.from_pretrained(_WORKDIR.value)
  prompts = list(_PROMPTS.value)
  if _EXPAND.value:
    pipe.check_prompts(prompts)
  try:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ".write_test"), "w"):
      pass
    os.remove(os.path.join(out, ".write_test"))
  except OSError as e:
    raise ClearError(f"cannot write to --out={out!r} ({e.strerror}); pass a folder you can write to") from e
  expanded = [pipe.prompt_expander(p) for p in prompts] if _EXPAND.value else prompts
  start = time.time()
  common = dict(
    seed=_SEED.value, negative_prompt=_NEGATIVE.value, expand_prompts=False, progress=True, **_SAMPLING.overrides()
  )
  videos, marks = sample_mode(pipe, mode, expanded, common)
  seconds = time.time() - start
  files = []
  for i, (prompt, video) in enumerate(zip(prompts, videos)):
    stem = os.path.join(out, f"{i:02d}_{slug(prompt)}")
    video_io.write_mp4(stem + ".mp4", video, fps=_FPS.value, scale=_SCALE.value)
    video_io.write_gif(stem + ".gif", video, fps=_FPS.value, scale=_SCALE.value)
    files += [stem + ".mp4", stem + ".gif"]
  captions = [p if p == e else f"{p}  ->  {e}" for p, e in zip(prompts, expanded)]
  sheet = contact_sheet.save_contact_sheet(os.path.join(out, "contact_sheet.png"), videos, captions, marks=marks)
  with open(os.path.join(out, "prompts.json"), "w") as f:
    json.dump([{"prompt": p, "expanded": e} for p, e in zip(prompts, expanded)], f, indent=2)
  print(f"{len(prompts)} videos {videos.shape[1:]} in {seconds:.1f} s (incl. compilation)")
  print(f"contact sheet: {sheet}")
  for path in files:
    print(f"  {path}")


def sample_mode(pipe, mode: str, prompts: list[str], common: dict) -> tuple[np.ndarray, np.ndarray]:
  """(videos uint8 [B, T, H, W, 3], given-frame flags [B, T]) of `mode` with the flags' files."""
  frames = _FRAMES.value
  tf = pipe.temporal_factor
  batch = len(prompts)

  def clip(path):
    return read_frames(path)[None]

  if mode == "text":
    videos = pipe(prompts, num_frames=frames, height=_HEIGHT.value, width=_WIDTH.value, **common)
    given = []
  elif mode == "animate":
    videos = pipe.animate(clip(_IMAGE.value)[:, 0], prompts, num_frames=frames, **common)
    given = [0]
  elif mode in ("extend", "extend_backward"):
    source = clip(_VIDEO.value)
    backward = mode == "extend_backward"
    videos = pipe.extend(source, prompts, num_frames=frames, backward=backward, **common)
    t, t0 = videos.shape[1], source.shape[1]
    given = list(range(t - t0, t)) if backward else list(range(t0))
  elif mode == "connect":
    start = clip(_IMAGE.value) if _IMAGE.value else clip(_VIDEO.value)
    end = clip(_END.value)
    videos = pipe.connect(start, end, prompts, num_frames=frames, **common)
    t, end_len = videos.shape[1], (tf if end.shape[1] == 1 else end.shape[1])
    given = list(range(start.shape[1])) + list(range(t - end_len, t))
  elif mode == "loop":
    videos = pipe.loop(prompts, num_frames=frames, **common)
    given = [0] + list(range(videos.shape[1] - tf, videos.shape[1]))
  else:  # edit
    videos = pipe.edit(clip(_VIDEO.value), prompts, strength=_STRENGTH.value, **common)
    given = []
  marks = np.zeros((batch, videos.shape[1]), bool)
  marks[:, given] = True
  return videos, marks


if __name__ == "__main__":
  run_tool(main)
