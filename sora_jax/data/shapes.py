"""The procedural "shapes" clips behind the built-in synthetic dataset (DESIGN.md §4).

One object per clip on a black background: a circle, a square or an up-pointing
triangle in one of seven exact colours, 30-45 % of the frame width, either moving
left / right / up / down at constant velocity (travelling at least 40 % of the frame
and staying fully inside it) or staying still.

Everything here is plain numpy and resolution independent: a `ClipSpec` describes a
clip in normalised frame coordinates (x in [0, 1] left -> right, y in [0, 1] top ->
bottom), and `render_clip` draws it at any frame count and size, anti-aliased by
supersampling each pixel on an `ss x ss` grid and averaging (box filter). A fully
covered pixel has exactly the object's RGB; edge pixels are a fraction of it;
background pixels are exactly 0.

Captions: `canonical_caption` gives the one exact form used for evaluation,
`paraphrase_caption` the varied training captions, `parse_caption` reads colour /
shape / motion back from either.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
  "red": (255, 0, 0),
  "green": (0, 255, 0),
  "blue": (0, 0, 255),
  "yellow": (255, 255, 0),
  "cyan": (0, 255, 255),
  "magenta": (255, 0, 255),
  "white": (255, 255, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# "still" is the stay-in-place motion; the others are directions of travel.
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")

MIN_SIZE_FRAC = 0.30  # object size as a fraction of the frame width
MAX_SIZE_FRAC = 0.45
MIN_TRAVEL_FRAC = 0.40  # moving objects travel at least this fraction of the frame

# Unit direction of travel (dx, dy) in frame coordinates (y grows downwards).
_DIRECTIONS: dict[str, tuple[int, int]] = {
  "left": (-1, 0),
  "right": (1, 0),
  "up": (0, -1),
  "down": (0, 1),
  "still": (0, 0),
}


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Everything that determines a shapes clip, independent of its resolution.

  Attributes:
    color: a key of COLORS.
    shape: one of SHAPES.
    motion: one of MOTIONS.
    size_frac: object size (circle diameter, square side, triangle base and height)
      as a fraction of the frame width.
    start_center: (x, y) of the object's bounding-box centre in the first frame,
      as fractions of frame width and height.
    end_center: (x, y) in the last frame; equal to start_center when still.
  """

  color: str
  shape: str
  motion: str
  size_frac: float
  start_center: tuple[float, float]
  end_center: tuple[float, float]

  def __post_init__(self):
    _check_choice("color", self.color, tuple(COLORS))
    _check_choice("shape", self.shape, SHAPES)
    _check_choice("motion", self.motion, MOTIONS)

  @property
  def rgb(self) -> tuple[int, int, int]:
    return COLORS[self.color]


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"ClipSpec.{field}={value!r} is not one of {choices}")


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
  return float(rng.uniform(low, high)) if high > low else float(low)


def max_size_frac(aspect_ratio: float) -> float:
  """Largest object size (fraction of width) that can still travel MIN_TRAVEL_FRAC vertically.

  MAX_SIZE_FRAC for frames up to 4:3 wide; wider frames get smaller objects, down to
  MIN_SIZE_FRAC at 2:1. Wider than 2:1 raises ValueError.
  """
  limit = (1.0 - MIN_TRAVEL_FRAC) / aspect_ratio
  if not aspect_ratio > 0 or limit < MIN_SIZE_FRAC:
    raise ValueError(
      f"shapes clips need a width/height ratio in (0, "
      f"{(1 - MIN_TRAVEL_FRAC) / MIN_SIZE_FRAC:.0f}], got {aspect_ratio}: objects "
      f"{MIN_SIZE_FRAC:.0%}+ of the width must be able to travel "
      f"{MIN_TRAVEL_FRAC:.0%} of the height"
    )
  return min(MAX_SIZE_FRAC, limit)


def sample_clip_spec(rng: np.random.Generator, *, aspect_ratio: float = 1.0) -> ClipSpec:
  """Draws a random clip description (colour, shape, motion uniformly at random).

  Args:
    rng: numpy Generator; the spec is a pure function of its state.
    aspect_ratio: frame width / height the clip will be rendered at. The object's
      size is relative to the width, so a wide frame leaves less room to move
      vertically (see max_size_frac).
  Returns:
    A ClipSpec whose object stays fully inside the frame in every frame and, when
    moving, travels at least MIN_TRAVEL_FRAC of the frame along its direction.
  """
  max_size = max_size_frac(aspect_ratio)
  color = str(rng.choice(list(COLORS)))
  shape = str(rng.choice(SHAPES))
  motion = str(rng.choice(MOTIONS))
  size_frac = _uniform(rng, MIN_SIZE_FRAC, max_size)
  # Object extent in each normalised axis; the centre can move over 1 - extent.
  extent = (size_frac, size_frac * aspect_ratio)
  room = tuple(1.0 - e for e in extent)
  start = [_uniform(rng, e / 2, 1 - e / 2) for e in extent]
  end = list(start)
  direction = _DIRECTIONS[motion]
  for axis, sign in enumerate(direction):
    if sign == 0:
      continue
    e = extent[axis]
    travel = _uniform(rng, MIN_TRAVEL_FRAC, room[axis])
    low = _uniform(rng, e / 2, 1 - e / 2 - travel)  # the smaller of start/end
    start[axis], end[axis] = (low, low + travel) if sign > 0 else (low + travel, low)
  return ClipSpec(
    color=color,
    shape=shape,
    motion=motion,
    size_frac=size_frac,
    start_center=(start[0], start[1]),
    end_center=(end[0], end[1]),
  )


def centers(spec: ClipSpec, num_frames: int) -> np.ndarray:
  """Object centre per frame, float64 [T, 2] as (x, y) fractions: constant velocity."""
  t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
  start, end = np.asarray(spec.start_center), np.asarray(spec.end_center)
  return start[None, :] + t[:, None] * (end - start)[None, :]


def _inside_mask(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
  """Boolean mask of sample points inside the object; dx, dy are offsets from its centre in pixels."""
  if shape == "circle":
    return dx * dx + dy * dy <= half * half
  if shape == "square":
    return (np.abs(dx) <= half) & (np.abs(dy) <= half)
  # Up-pointing triangle in the [-half, half]^2 box: apex at the top, base at the bottom.
  return (dy <= half) & (np.abs(dx) <= (dy + half) * 0.5)


def coverage(spec: ClipSpec, num_frames: int, height: int, width: int, *, supersample: int = 4) -> np.ndarray:
  """Fraction of each pixel covered by the object, float32 [T, H, W] in [0, 1]."""
  if min(num_frames, height, width, supersample) < 1:
    raise ValueError(
      f"num_frames, height, width and supersample must be >= 1, got {(num_frames, height, width, supersample)}"
    )
  ss = supersample
  # Sample positions in pixel units, ss per pixel along each axis.
  xs = (np.arange(width * ss, dtype=np.float32) + 0.5) / ss
  ys = (np.arange(height * ss, dtype=np.float32) + 0.5) / ss
  c = centers(spec, num_frames).astype(np.float32)
  cx, cy = c[:, 0] * width, c[:, 1] * height
  dx = xs[None, None, :] - cx[:, None, None]  # [T, 1, W*ss]
  dy = ys[None, :, None] - cy[:, None, None]  # [T, H*ss, 1]
  half = spec.size_frac * width / 2
  inside = _inside_mask(spec.shape, dx, dy, half)  # [T, H*ss, W*ss]
  cov = inside.reshape(num_frames, height, ss, width, ss).sum(axis=(2, 4), dtype=np.int32)
  return cov.astype(np.float32) / (ss * ss)


def render_clip(spec: ClipSpec, num_frames: int, height: int, width: int, *, supersample: int = 4) -> np.ndarray:
  """Draws the clip: uint8 [T, H, W, 3], object colour times pixel coverage on black."""
  cov = coverage(spec, num_frames, height, width, supersample=supersample)
  rgb = np.asarray(spec.rgb, dtype=np.float32)
  return np.rint(cov[..., None] * rgb).astype(np.uint8)


# ------------------------------------------------------------------ captions


def canonical_caption(spec: ClipSpec) -> str:
  """The one exact caption form: 'a {color} {shape} moving {dir}' / 'a {color} {shape} staying still'."""
  return canonical_caption_from(spec.color, spec.shape, spec.motion)


def canonical_caption_from(color: str, shape: str, motion: str) -> str:
  """canonical_caption for a (color, shape, motion) triple (see `all_canonical_captions`)."""
  action = "staying still" if motion == "still" else f"moving {motion}"
  return f"a {color} {shape} {action}"


def all_canonical_captions() -> list[str]:
  """Every canonical caption of the 7 x 3 x 5 grid, in COLORS x SHAPES x MOTIONS order."""
  return [canonical_caption_from(c, s, m) for c in COLORS for s in SHAPES for m in MOTIONS]


_CANONICAL_RE = re.compile(
  rf"^a ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) "
  r"(?:moving (left|right|up|down)|staying (still))$"
)


def parse_canonical_caption(text: str) -> tuple[str, str, str]:
  """Inverse of canonical_caption: 'a red circle moving left' -> ('red', 'circle', 'left')."""
  match = _CANONICAL_RE.match(text.strip())
  if not match:
    raise ValueError(
      f"{text!r} is not a canonical shapes caption; expected "
      f"'a {{color}} {{shape}} moving {{left|right|up|down}}' or "
      f"'a {{color}} {{shape}} staying still' with color in {tuple(COLORS)} "
      f"and shape in {SHAPES}"
    )
  color, shape, direction, still = match.groups()
  return color, shape, direction or still


# Synonyms used by the paraphrases; `parse_caption` understands all of them.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
  "circle": ("circle", "disc", "dot", "ball"),
  "square": ("square", "box", "block"),
  "triangle": ("triangle",),
}
MOVING_SYNONYMS = ("moving", "going", "travelling", "sliding", "drifting", "gliding")
STILL_PHRASES = (
  "staying still",
  "standing still",
  "not moving",
  "resting in place",
  "that does not move",
  "sitting still",
  "motionless",
)
# Direction phrases per motion; the first is the canonical word.
DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
  "left": ("left", "to the left", "leftward"),
  "right": ("right", "to the right", "rightward"),
  "up": ("up", "upward", "towards the top"),
  "down": ("down", "downward", "towards the bottom"),
}

# Templates: {color} {shape} {moving} {direction} for moving clips, {still} for still ones.
_MOVING_TEMPLATES = (
  "a {color} {shape} {moving} {direction}",
  "the {color} {shape} is {moving} {direction}",
  "{color} {shape} {moving} {direction}",
  "a {shape} in {color}, {moving} {direction}",
  "a {color} {shape} {moving} {direction} on a black background",
  "{moving} {direction}: a {color} {shape}",
  "a single {color} {shape} that keeps {moving} {direction}",
)
_STILL_TEMPLATES = (
  "a {color} {shape} {still}",
  "the {color} {shape} is {still}",
  "{color} {shape}, {still}",
  "a {shape} in {color}, {still}",
  "a {color} {shape} {still} on a black background",
  "a single {color} {shape} {still} in the frame",
)


def paraphrase_caption(spec: ClipSpec, rng: np.random.Generator, *, canonical_prob: float = 0.25) -> str:
  """A training caption: the canonical form with probability `canonical_prob`, else a paraphrase.

  Paraphrases vary the template (word order), the shape word ("box" for square,
  "disc" for circle, ...), the verb ("going", "travelling", ...), the direction
  phrase ("to the left", "upward", ...) and the still phrase ("not moving", ...).
  Colour names are never replaced, so colour stays unambiguous.
  """
  if rng.uniform() < canonical_prob:
    return canonical_caption(spec)
  fields = {"color": spec.color, "shape": str(rng.choice(SHAPE_SYNONYMS[spec.shape]))}
  if spec.motion == "still":
    template = str(rng.choice(_STILL_TEMPLATES))
    fields["still"] = str(rng.choice(STILL_PHRASES))
  else:
    template = str(rng.choice(_MOVING_TEMPLATES))
    fields["moving"] = str(rng.choice(MOVING_SYNONYMS))
    fields["direction"] = str(rng.choice(DIRECTION_PHRASES[spec.motion]))
  return template.format(**fields)


def _find_unique(text: str, vocabulary: dict[str, tuple[str, ...]], what: str) -> str:
  """The single key of `vocabulary` whose words occur in `text` (whole words)."""
  found = {key for key, words in vocabulary.items() if any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)}
  if len(found) != 1:
    raise ValueError(f"cannot read the {what} from caption {text!r}: found {sorted(found) or 'none'}")
  return found.pop()


_MOTION_WORDS: dict[str, tuple[str, ...]] = {
  "left": ("left", "leftward"),
  "right": ("right", "rightward"),
  "up": ("up", "upward", "top"),
  "down": ("down", "downward", "bottom"),
  "still": ("still", "not moving", "in place", "does not move", "motionless"),
}


def parse_caption(text: str) -> tuple[str, str, str]:
  """(color, shape, motion) from a canonical caption or any paraphrase above.

  Raises ValueError if the caption names no colour / shape / motion or more than one.
  """
  lowered = text.lower()
  color = _find_unique(lowered, {c: (c,) for c in COLORS}, "color")
  shape = _find_unique(lowered, SHAPE_SYNONYMS, "shape")
  motion = _find_unique(lowered, _MOTION_WORDS, "motion")
  return color, shape, motion
