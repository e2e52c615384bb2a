"""Images and videos as prompts: `Condition` and the pixel canvas the causal VAE encodes once.

    Condition(frames, frame_index=0, strength=1.0)
      frames: uint8 [B, T0, H, W, 3] (a clip) or [B, H, W, 3] / [B, 1, H, W, 3] (one frame); a
              batch of 1 is used for every prompt
      frame_index: where frames[:, 0] goes in the generated clip
      strength: in (0, 1]; 1 = the frames are kept exactly (in latent space); less = they are a
              hint that starts at noise level 1 - strength (LTX-Video) and is then re-generated

How given frames become given latent frames (`build_canvas`): every condition is painted into
one pixel canvas [B, T, H, W, 3] at its frame positions, each unknown frame filled with the first
frame of the next given segment (a still lead-in: what the causal encoder sees before a segment;
unknown frames after the last segment stay black, nothing given depends on them), the whole
canvas is encoded once by the causal VAE, and the latent frames whose pixel frames are all given
become the condition. With a causal VAE of temporal factor tf,
latent frame 0 is pixel frame 0 and latent frame j >= 1 is pixel frames tf(j-1)+1 .. tf j, so a
condition must cover whole latent frames: it starts at frame 0 with 1 + tf k frames, or at
frame 1 + tf k with a multiple of tf frames. Anything else is rejected with the valid indices
(`placement_error`). A prefix of 1 + tf k frames encodes to exactly the first 1 + k latent frames
of the clip (causality); a segment later in the clip (backward extension, connect's end) sees
the frames before it through the encoder's causal receptive field: docs/experiments.md measures
how well the canvas still reproduces it (the still lead-in is at least as good as black frames
and as encoding the segment alone).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Condition:
  """Frames the generated clip must contain: `frames` uint8 [B, T0, H, W, 3] or [B, H, W, 3] at
  `frame_index`, kept with `strength` in (0, 1] (1 = exactly, in latent space)."""

  frames: np.ndarray
  frame_index: int = 0
  strength: float = 1.0

  def __post_init__(self):
    frames = np.asarray(self.frames)
    if frames.dtype != np.uint8:
      raise ValueError(f"Condition frames must be uint8 (0..255) RGB, got dtype {frames.dtype}")
    if frames.ndim == 4:
      frames = frames[:, None]
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.shape[1] < 1:
      raise ValueError(
        "Condition frames must be uint8 [B, T0, H, W, 3] (a clip) or [B, H, W, 3] (one frame); "
        f"got shape {frames.shape}"
      )
    if isinstance(self.frame_index, bool) or not isinstance(self.frame_index, int | np.integer) or self.frame_index < 0:
      raise ValueError(f"Condition frame_index must be an int >= 0, got {self.frame_index!r}")
    if not 0.0 < float(self.strength) <= 1.0:
      raise ValueError(f"Condition strength must be in (0, 1] (1 = keep the frames exactly), got {self.strength}")
    object.__setattr__(self, "frames", frames)
    object.__setattr__(self, "frame_index", int(self.frame_index))
    object.__setattr__(self, "strength", float(self.strength))

  @property
  def num_frames(self) -> int:
    return self.frames.shape[1]


def as_clip(frames, what: str) -> np.ndarray:
  """uint8 [B, H, W, 3] or [B, T, H, W, 3] -> [B, T, H, W, 3], with an error naming `what`."""
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    raise ValueError(f"{what} must be uint8 (0..255) RGB, got dtype {frames.dtype}")
  if frames.ndim == 4:
    frames = frames[:, None]
  if frames.ndim != 5 or frames.shape[-1] != 3:
    raise ValueError(f"{what} must be uint8 [B, H, W, 3] (frames) or [B, T, H, W, 3] (clips); got shape {frames.shape}")
  return frames


def valid_starts(length: int, num_frames: int, tf: int) -> list[int]:
  """Frame indices where a segment of `length` frames covers whole latent frames of a `num_frames` clip."""
  starts = [0] if (length - 1) % tf == 0 else []
  if length % tf == 0:
    starts += list(range(1, num_frames - length + 1, tf))
  return [s for s in starts if s + length <= num_frames]


def placement_error(index: int, length: int, num_frames: int, tf: int) -> str | None:
  """None if `length` frames at `index` cover whole latent frames of the clip, else the message."""
  if index + length > num_frames:
    return f"{length} frames at frame_index={index} run past the end of a {num_frames}-frame clip"
  if index in valid_starts(length, num_frames, tf):
    return None
  valid = valid_starts(length, num_frames, tf)
  return (
    f"{length} frames at frame_index={index} do not cover whole latent frames of the causal VAE "
    f"(temporal factor {tf}: latent frame 0 is frame 0, latent frame j is frames {tf}(j-1)+1..{tf}j). "
    f"A condition starts at frame 0 with 1+{tf}k frames, or at frame 1+{tf}k with a multiple of {tf} frames; "
    f"valid frame_index for {length} frames in {num_frames}: {valid or 'none'}"
    + (f" (a single frame after frame 0: repeat it {tf} times, e.g. index {num_frames - tf})" if length == 1 else "")
  )


@dataclasses.dataclass(frozen=True)
class Canvas:
  """pixels uint8 [B, T, H, W, 3] (unknown frames: the next given frame, or black), given bool [B, T] per pixel frame,
  strength float32 [B, T'] per latent frame (0 = generated)."""

  pixels: np.ndarray
  given: np.ndarray
  strength: np.ndarray


def build_canvas(
  conditions: Sequence[Condition], batch: int, num_frames: int, height: int, width: int, temporal_factor: int
) -> Canvas:
  """Paints `conditions` into one canvas (see the module docstring); clear errors before any work."""
  tf = temporal_factor
  latent_frames = (num_frames - 1) // tf + 1
  pixels = np.zeros((batch, num_frames, height, width, 3), np.uint8)
  given = np.zeros((batch, num_frames), bool)
  strength = np.zeros((batch, latent_frames), np.float32)
  for i, c in enumerate(conditions):
    if not isinstance(c, Condition):
      raise ValueError(f"conditions[{i}] must be a sora_jax.Condition, got {type(c).__name__}")
    b, n, h, w = c.frames.shape[:4]
    if b not in (1, batch):
      raise ValueError(f"conditions[{i}] has a batch of {b} frames; give 1 (for every prompt) or {batch} (one each)")
    if (h, w) != (height, width):
      raise ValueError(
        f"conditions[{i}] frames are {h}x{w}; the model generates {height}x{width} here (pass height=/width= "
        "or resize the frames)"
      )
    error = placement_error(c.frame_index, n, num_frames, tf)
    if error:
      raise ValueError(f"conditions[{i}]: {error}")
    span = slice(c.frame_index, c.frame_index + n)
    if given[:, span].any():
      raise ValueError(f"conditions[{i}] overlaps an earlier condition at frames {span.start}..{span.stop - 1}")
    pixels[:, span] = c.frames
    given[:, span] = True
    first, last = latent_frame_span(c.frame_index, n, tf)
    strength[:, first : last + 1] = c.strength
  fill_lead_ins(pixels, given)
  return Canvas(pixels=pixels, given=given, strength=strength)


def latent_frame_span(index: int, length: int, tf: int) -> tuple[int, int]:
  """(first, last) latent frames covered by `length` frames at `index` (a valid placement)."""
  first = 0 if index == 0 else (index - 1) // tf + 1
  end = index + length - 1
  return first, (0 if end == 0 else (end - 1) // tf + 1)


def fill_lead_ins(pixels: np.ndarray, given: np.ndarray) -> None:
  """In place: every frame not given takes the next given frame of its example (a still lead-in into it)."""
  for b in range(pixels.shape[0]):
    following = None
    for t in range(pixels.shape[1] - 1, -1, -1):
      if given[b, t]:
        following = t
      elif following is not None:
        pixels[b, t] = pixels[b, following]
