"""The web app's engine without the web: one Pipeline in memory, one request at a time, every mode, checked input.

  service = VideoService(Pipeline.from_pretrained("runs/demo"), out_dir="/tmp/sora_jax_app")
  result = service.generate(Request(mode="text", prompt="a red circle moving left"), on_progress=print)
  result.mp4, result.gif, result.sheet, result.expanded_prompt, result.seed, result.frames  # uint8 [T, H, W, 3]

Every mode of the Pipeline is one entry of MODES: text to video (`pipe(prompts, ...)`), animate an
image (`pipe.animate`), extend a video forwards or backwards (`pipe.extend`), connect two clips
(`pipe.connect`), loop (`pipe.loop`) and edit (`pipe.edit`, with a strength). A Pipeline that lacks a
mode's method answers that mode with a BadInput saying so. All input is checked before any work
(prompt, size, frames, steps, guidance, sampler, uploads) and every failure a person can cause is a
BadInput with what was wrong and what is valid; the web layer shows its text in the page.

Progress comes from the sampler's per-step callback (`StepTicker.on_step`): the pipeline runs on a
worker thread while the caller's thread reports (done, total) model evaluations; compiled functions
stay in the Pipeline's cache across requests. Nothing here imports gradio (sora_jax.app.web does).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

from sora_jax.data.shapes import DEMO_PROMPTS
from sora_jax.diffusion.sampler_names import SAMPLERS
from sora_jax.media import contact_sheet, video_io

# The largest request the app accepts; the sliders stop here too.
MAX_STEPS = 200
MAX_GUIDANCE = 20.0
# Examples: a shapes model gets the demo's prompts (sora_jax.data.shapes.DEMO_PROMPTS), other models these.
GENERIC_EXAMPLES = (
  "a red ball rolling across a wooden table",
  "waves breaking on a beach at sunset",
  "a cat walking through tall grass",
)


class BadInput(ValueError):
  """A request the app cannot serve, with a message for the person who made it."""


@dataclasses.dataclass(frozen=True)
class Mode:
  """One tab of the app. method: the Pipeline method (None = `pipe(prompts, ...)`); inputs: what it uploads."""

  title: str
  method: str | None
  inputs: tuple[str, ...] = ()
  sized: bool = True  # the size control applies (modes with an upload take the upload's size)
  description: str = ""


MODES: dict[str, Mode] = {
  "text": Mode("Text to video", None, description="A video from a prompt."),
  "animate": Mode(
    "Animate an image", "animate", ("image",), sized=False, description="The image becomes the first frame."
  ),
  "extend": Mode(
    "Extend a video",
    "extend",
    ("video",),
    sized=False,
    description="Continue a clip forwards, or backwards (what came before it).",
  ),
  "connect": Mode(
    "Connect two clips", "connect", ("start", "end"), sized=False, description="A video from one clip to the other."
  ),
  "loop": Mode("Loop", "loop", description="A video whose last frame leads back into its first."),
  "edit": Mode(
    "Edit a video",
    "edit",
    ("video",),
    sized=False,
    description="Redraw a clip after the prompt; a low strength keeps it, 1 ignores it.",
  ),
}


@dataclasses.dataclass
class Request:
  """What a person asked for. None means the model's default (seed None: a random seed)."""

  mode: str = "text"
  prompt: str = ""
  negative_prompt: str = ""
  seed: int | None = 0
  num_steps: int | None = None
  guidance_scale: float | None = None
  sampler: str | None = None
  num_frames: int | None = None
  size: str | None = None  # "HxW", one of VideoService.sizes
  image: np.ndarray | None = None  # animate: uint8 [H, W, 3] (or [H, W] / [H, W, 4])
  video: str | None = None  # extend / edit: a file path (mp4, webm, GIF, ...)
  start: str | None = None  # connect: file paths
  end: str | None = None
  backward: bool = False  # extend: what came before the clip
  strength: float = 0.7  # edit


@dataclasses.dataclass
class Result:
  frames: np.ndarray  # uint8 [T, H, W, 3]
  mp4: str
  gif: str
  sheet: str
  expanded_prompt: str
  seed: int
  seconds: float
  message: str


def size_label(height: int, width: int) -> str:
  return f"{height}x{width}"


def parse_size(label: str) -> tuple[int, int]:
  match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(label))
  if not match:
    raise BadInput(f"size {label!r} is not HEIGHTxWIDTH, e.g. '32x32'")
  return int(match.group(1)), int(match.group(2))


def supported_sizes(pipe) -> list[tuple[int, int]]:
  """(height, width) the model makes, trained size first.

  A Pipeline that says so itself (`pipe.supported_sizes`, a list or a method returning one) wins; otherwise
  the trained config's size plus the sizes of its training buckets (config.data.buckets "FxHxW" keys).
  """
  own = getattr(pipe, "supported_sizes", None)
  if own is not None:
    sizes = own() if callable(own) else own
    return [(int(h), int(w)) for h, w in sizes]
  data = pipe.config.data
  sizes = [(int(data.height), int(data.width))]
  buckets = data.get("buckets", None) if hasattr(data, "get") else None
  for key in list(buckets.keys()) if buckets else []:
    match = re.fullmatch(r"(\d+)x(\d+)x(\d+)", str(key))
    if match and (int(match.group(2)), int(match.group(3))) not in sizes:
      sizes.append((int(match.group(2)), int(match.group(3))))
  return sizes


def valid_frame_counts(pipe, limit: int = 8) -> list[int]:
  """The first `limit` clip lengths the VAE and the DiT patch can make (1 + temporal_factor * k, ...)."""
  tf = pipe.temporal_factor
  pt = pipe.components.denoiser.dit.patch_size[0]
  counts = (n for n in itertools.count(1) if (n - 1) % tf == 0 and ((n - 1) // tf + 1) % pt == 0)
  return list(itertools.islice(counts, limit))


def samplers_for(pipe) -> list[str]:
  """The samplers that can sample this model's diffusion process, the trained default first."""
  kind = getattr(pipe.components.process, "kind", None)
  names = [name for name, info in SAMPLERS.items() if kind is None or kind in info.processes]
  default = pipe.config.sample.sampler
  return [default] + [n for n in names if n != default] if default in names else names


def example_prompts(pipe) -> list[str]:
  return list(DEMO_PROMPTS if pipe.config.data.get("dataset", "") == "shapes" else GENERIC_EXAMPLES)


def _as_rgb(image, name: str) -> np.ndarray:
  """An uploaded image as uint8 [H, W, 3] (grey and RGBA converted), or a BadInput."""
  if image is None:
    raise BadInput(f"upload an {name} first")
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4) or 0 in image.shape:
    raise BadInput(f"the {name} could not be read as a picture (got an array of shape {image.shape})")
  if image.dtype != np.uint8:
    image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
  return image[..., :3]


class VideoService:
  """A loaded Pipeline served one request at a time (the lock), every mode, checked input, files out."""

  def __init__(self, pipe, out_dir: str | None = None, *, workdir: str = "", fps: float = 8.0, gif_size: int = 256):
    self.pipe = pipe
    self.workdir = workdir  # shown in the page
    self.out_dir = out_dir or tempfile.mkdtemp(prefix="sora_jax_app_")
    os.makedirs(self.out_dir, exist_ok=True)
    self.fps = fps
    self.gif_size = gif_size  # GIF download upscaled (nearest) to about this many pixels on its long side
    self.sizes = supported_sizes(pipe)
    # Offered lengths: every valid one up to twice the trained length (at least 33 frames).
    most = max(2 * int(pipe.config.data.num_frames), 33)
    self.frame_counts = [n for n in valid_frame_counts(pipe, limit=most) if n <= most]
    self.samplers = samplers_for(pipe)
    self.examples = example_prompts(pipe)
    self._lock = threading.Lock()
    self._steps_done = 0
    self._count = itertools.count()
    ticker = getattr(pipe, "_ticker", None)  # the StepTicker baked into every compiled sampler of this pipe
    self._has_ticker = ticker is not None and hasattr(ticker, "on_step")
    if self._has_ticker:
      ticker.on_step = self._on_step

  # ---------------------------------------------------------------- what the page offers
  @property
  def size_labels(self) -> list[str]:
    return [size_label(h, w) for h, w in self.sizes]

  @property
  def defaults(self) -> dict:
    cfg = self.pipe.config
    return {
      "num_steps": int(cfg.sample.num_steps),
      "guidance_scale": float(cfg.sample.guidance_scale),
      "sampler": self.samplers[0],
      "num_frames": int(cfg.data.num_frames),
      "size": self.size_labels[0],
      "negative_prompt": str(cfg.sample.get("negative_prompt", "") or ""),
    }

  def available(self, mode: str) -> bool:
    method = MODES[mode].method
    return method is None or callable(getattr(self.pipe, method, None))

  def sized(self, mode: str) -> bool:
    """Whether the page's size applies to `mode`: text to video, and modes whose method names height/width."""
    spec = MODES[mode]
    if not spec.sized or spec.method is None:
      return spec.sized
    method = getattr(self.pipe, spec.method, None)
    return method is not None and "height" in inspect.signature(method).parameters

  def unavailable_message(self, mode: str) -> str:
    return (
      f"'{MODES[mode].title}' is not available: this Pipeline has no `{MODES[mode].method}` method "
      "(it comes with the conditioning modes of sora_jax; update the package). Text to video works."
    )

  # ---------------------------------------------------------------- one request
  def _on_step(self):
    self._steps_done += 1

  def _check(self, request: Request) -> dict:
    """Every check that needs no sampling; returns the call's settings or raises BadInput."""
    if request.mode not in MODES:
      raise BadInput(f"mode {request.mode!r} is not one of {', '.join(MODES)}")
    if not self.available(request.mode):
      raise BadInput(self.unavailable_message(request.mode))
    prompt = (request.prompt or "").strip()
    if not prompt:
      raise BadInput("the prompt is empty: describe the video, e.g. '" + self.examples[0] + "'")
    defaults = self.defaults
    steps = defaults["num_steps"] if request.num_steps in (None, "") else request.num_steps
    if float(steps) != int(steps) or not 1 <= int(steps) <= MAX_STEPS:
      raise BadInput(f"steps={steps} must be a whole number from 1 to {MAX_STEPS}")
    guidance = defaults["guidance_scale"] if request.guidance_scale in (None, "") else float(request.guidance_scale)
    if not 0 <= guidance <= MAX_GUIDANCE:
      raise BadInput(f"guidance={guidance} must be between 0 and {MAX_GUIDANCE} (1 = no guidance; 3-7 is typical)")
    sampler = request.sampler or defaults["sampler"]
    if sampler not in self.samplers:
      raise BadInput(f"sampler {sampler!r} cannot sample this model; choose one of {', '.join(self.samplers)}")
    frames = defaults["num_frames"] if request.num_frames in (None, "") else int(request.num_frames)
    if frames not in self.frame_counts and frames != defaults["num_frames"]:
      raise BadInput(
        f"frames={frames} cannot be made by this model; choose one of {', '.join(map(str, self.frame_counts))}"
      )
    height, width = parse_size(request.size or defaults["size"])
    if (height, width) not in self.sizes:
      raise BadInput(f"size {height}x{width} is not one this model makes; choose one of {', '.join(self.size_labels)}")
    if request.mode == "edit" and not 0.0 < float(request.strength) <= 1.0:
      raise BadInput(f"strength={request.strength} must be above 0 (near 0 keeps the video) and at most 1 (ignores it)")
    seed = int(request.seed) if request.seed not in (None, "") else int(np.random.SeedSequence().entropy % 2**31)
    if not 0 <= seed < 2**31:
      raise BadInput(f"seed={seed} must be between 0 and {2**31 - 1}")
    return dict(
      prompt=prompt,
      negative_prompt=(request.negative_prompt or "").strip() or None,
      num_steps=int(steps),
      guidance_scale=guidance,
      sampler=sampler,
      num_frames=frames,
      height=height,
      width=width,
      seed=seed,
    )

  def _check_size(self, frames: np.ndarray, name: str) -> None:
    height, width = frames.shape[-3:-1]
    if (height, width) not in self.sizes:
      raise BadInput(
        f"the {name} is {height}x{width} (HxW) but this model makes {', '.join(self.size_labels)}; "
        "resize it to one of these"
      )

  def _read_clip(self, path: str | None, name: str, *, lead: bool = True, keep: str = "first") -> np.ndarray:
    """An uploaded video as uint8 [T, H, W, 3], cut to the longest length the model can encode.

    lead: the clip starts a latent sequence (1 + tf*k frames: a clip to continue, a first clip); otherwise it
    follows generated frames (a multiple of tf: a clip to extend backwards, a second clip). keep: which end of
    the upload to keep, the end that touches the generated frames ("last" for a clip continued forwards).
    """
    if not path:
      raise BadInput(f"upload the {name} first (mp4, webm or GIF)")
    try:
      frames, _ = video_io.read_video(path)
    except (ValueError, OSError) as e:  # VideoReadError is a ValueError
      raise BadInput(f"the {name} could not be read as a video: {e}") from None
    tf = self.pipe.temporal_factor
    count = frames.shape[0] if frames.ndim == 4 else 0
    if lead:
      lengths = [n for n in valid_frame_counts(self.pipe, limit=count + 1) if n <= count]
      shortest, rule = 1 + tf, f"1 + {tf}k"
    else:
      lengths = list(range(tf, count + 1, tf))
      shortest, rule = tf, f"a multiple of {tf}"
    if count < shortest or not lengths:
      raise BadInput(f"the {name} has {count} frames; it needs at least {shortest} (it is cut to {rule} frames)")
    self._check_size(frames, name)
    usable = max(lengths)
    frames = frames[:usable] if keep == "first" else frames[count - usable :]
    return np.ascontiguousarray(frames[..., :3])

  def _inputs(self, request: Request) -> dict:
    """The mode's uploads, read and checked."""
    mode = request.mode
    if mode == "animate":
      image = _as_rgb(request.image, "image")
      self._check_size(image, "image")
      return {"images": image[None]}
    if mode == "extend":  # the clip touches the new frames at its end (forwards) or its start (backwards)
      backward = bool(request.backward)
      clip = self._read_clip(request.video, "video", lead=not backward, keep="first" if backward else "last")
      return {"videos": clip[None]}
    if mode == "edit":
      return {"videos": self._read_clip(request.video, "video")[None]}
    if mode == "connect":
      start = self._read_clip(request.start, "first clip", keep="last")
      end = self._read_clip(request.end, "second clip", lead=False, keep="first")
      if start.shape[1:] != end.shape[1:]:
        raise BadInput(f"the two clips must have the same size; got {start.shape[1:3]} and {end.shape[1:3]} (HxW)")
      return {"starts": start[None], "ends": end[None]}
    return {}

  def _call(self, request: Request, settings: dict, inputs: dict) -> np.ndarray:
    """Calls the mode's Pipeline method with the settings its signature takes."""
    pipe, mode = self.pipe, MODES[request.mode]
    prompts = [settings["expanded"]]
    common = {
      k: settings[k] for k in ("num_steps", "guidance_scale", "seed", "negative_prompt", "sampler", "num_frames")
    }
    if mode.method is None:
      return pipe(prompts, height=settings["height"], width=settings["width"], expand_prompts=False, **common)
    method = getattr(pipe, mode.method)
    if request.mode == "extend":
      common["backward"] = bool(request.backward)
    if request.mode == "edit":
      common["strength"] = float(request.strength)
      common.pop("num_frames")
    params = inspect.signature(method).parameters
    if self.sized(request.mode):  # a size from the page; modes with uploads take the uploads' size
      common.update(height=settings["height"], width=settings["width"])
    # What the signature names; expand_prompts (a __call__ option) also where it takes **kwargs.
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in common.items() if k in params}
    if "expand_prompts" in params or takes_kwargs:
      kwargs["expand_prompts"] = False
    order = {"animate": ("images",), "extend": ("videos",), "edit": ("videos",), "connect": ("starts", "ends")}
    args = [inputs[name] for name in order.get(request.mode, ())]
    return method(*args, prompts, **kwargs)

  def _total_evals(self, request: Request, settings: dict) -> int:
    info = SAMPLERS[settings["sampler"]]
    total = settings["num_steps"] * info.model_evals_per_step
    if request.mode == "edit":  # SDEdit runs the last strength x num_steps steps
      total = max(1, round(total * float(request.strength)))
    if request.mode == "loop":  # a text-to-video pass for the first frame, then a connecting pass
      total *= 2
    return total

  def warm_up(self) -> Result:
    """Samples the first example at the default settings, so the first visitor does not wait for compilation."""
    return self.generate(Request(prompt=self.examples[0]))

  def generate(self, request: Request, on_progress: Callable[[int, int], None] | None = None) -> Result:
    """Serves one request (waiting for the one before); BadInput for anything the person can fix."""
    settings = self._check(request)
    inputs = self._inputs(request)
    with self._lock:
      try:
        settings["expanded"] = self.pipe.prompt_expander(settings["prompt"])
      except ValueError as e:
        raise BadInput(f"the prompt could not be read: {e}") from None
      total = self._total_evals(request, settings)
      self._steps_done = 0
      outcome: dict = {}

      def work():
        try:
          outcome["videos"] = self._call(request, settings, inputs)
        except BaseException as e:  # handed to the caller's thread
          outcome["error"] = e

      start = time.time()
      worker = threading.Thread(target=work, name="sora_jax-app-sample", daemon=True)
      worker.start()
      while worker.is_alive():
        if on_progress is not None:
          on_progress(min(self._steps_done, total), total)
        worker.join(0.1)
      seconds = time.time() - start
      if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, ValueError):  # the Pipeline's own checks (sizes, frames, conditioning lengths)
          raise BadInput(str(error)) from error
        raise error
      if on_progress is not None:
        on_progress(min(self._steps_done, total), total)  # the sampler's count, not a forced 100%
      videos = np.asarray(outcome["videos"])
      return self._write(request, settings, inputs, videos[0], seconds)

  # ---------------------------------------------------------------- files
  def _write(self, request: Request, settings: dict, inputs: dict, frames: np.ndarray, seconds: float) -> Result:
    stem = os.path.join(self.out_dir, f"{next(self._count):04d}_{request.mode}_{settings['seed']}")
    mp4 = str(video_io.write_mp4(stem + ".mp4", frames, fps=self.fps))  # native size: what the model made
    scale = max(1, self.gif_size // max(frames.shape[1:3]))
    gif = str(video_io.write_gif(stem + ".gif", frames, fps=self.fps, scale=scale))
    rows: list[np.ndarray] = []
    captions: list[str] = []
    for name, batch in inputs.items():
      clip = batch[0] if batch.ndim == 5 else batch[0][None]  # an image is a 1-frame row
      rows.append(clip)
      captions.append(f"input: {name}")
    rows.append(frames)
    prompt, expanded = settings["prompt"], settings["expanded"]
    captions.append(prompt if prompt == expanded else f"{prompt}  ->  {expanded}")
    sheet = str(contact_sheet.save_contact_sheet(stem + "_sheet.png", rows, captions, max_frames=9, scale=4))
    t, h, w = frames.shape[:3]
    message = (
      f"{MODES[request.mode].title}: {t} frames of {h}x{w} in {seconds:.1f} s "
      f"(seed {settings['seed']}, {settings['num_steps']} steps of {settings['sampler']}, "
      f"guidance {settings['guidance_scale']:g})"
    )
    return Result(frames, mp4, gif, sheet, expanded, settings["seed"], seconds, message)
