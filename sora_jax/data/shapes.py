"""The procedural "shapes" clips behind the built-in synthetic dataset (DESIGN.md §4).

One object per clip on a black background: a circle, a square or an up-pointing
triangle in one of seven exact colours, 30-45 % of the frame's shorter side, either
moving left / right / up / down at constant velocity (travelling at least 40 % of the
frame along its direction and staying fully inside it) or staying still. A 1-frame clip
(an image) is always still.

New concepts (DESIGN.md §4, for fine-tuning; never in the default data): the colour
orange and the shape diamond (a square rotated 45 degrees whose bounding box follows
the same size rule), in NEW_COLORS / NEW_SHAPES. COLORS and SHAPES stay the default
vocabulary; ALL_COLORS / ALL_SHAPES hold both.

Everything here is plain numpy and resolution independent: a `ClipSpec` describes a
clip in normalised frame coordinates (x in [0, 1] left -> right, y in [0, 1] top ->
bottom), and `render_clip` draws it at any frame count and size, anti-aliased by
supersampling each pixel on an `ss x ss` grid and averaging (box filter). A fully
covered pixel has exactly the object's RGB; edge pixels are a fraction of it;
background pixels are exactly 0.

Captions: `canonical_caption` gives the one exact form used for evaluation ("an" before
a vowel: "an orange diamond moving left"), `paraphrase_caption` the varied training
captions, `parse_caption` reads colour / shape / motion back from either.
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

# Concepts the default data never shows, for fine-tuning (e.g. a LoRA) on something new.
NEW_COLORS: dict[str, tuple[int, int, int]] = {"orange": (255, 128, 0)}
NEW_SHAPES: tuple[str, ...] = ("diamond",)
ALL_COLORS: dict[str, tuple[int, int, int]] = {**COLORS, **NEW_COLORS}
ALL_SHAPES: tuple[str, ...] = SHAPES + NEW_SHAPES

# The prompts `make demo` samples (tools/demo.py) and the web app offers as examples.
DEMO_PROMPTS: tuple[str, ...] = (
  "a red circle moving left",
  "a blue square moving up",
  "a green triangle staying still",
  "a yellow circle moving right",
  "a magenta square moving down",
  "a cyan triangle moving left",
  "a white circle moving up",
  "a blue triangle moving right",
)

MIN_SIZE_FRAC = 0.30  # object size as a fraction of the frame's shorter side
MAX_SIZE_FRAC = 0.45
MIN_TRAVEL_FRAC = 0.40  # moving objects travel at least this fraction of the frame along their direction

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
    color: a key of ALL_COLORS (COLORS for the default data).
    shape: one of ALL_SHAPES (SHAPES for the default data).
    motion: one of MOTIONS.
    size_frac: object size (circle diameter, square side, triangle base and height,
      diamond diagonal: the side of its bounding box) as a fraction of the frame's
      shorter side.
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
    _check_choice("color", self.color, tuple(ALL_COLORS))
    _check_choice("shape", self.shape, ALL_SHAPES)
    _check_choice("motion", self.motion, MOTIONS)

  @property
  def rgb(self) -> tuple[int, int, int]:
    return ALL_COLORS[self.color]


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"ClipSpec.{field}={value!r} is not one of {choices}")


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
  return float(rng.uniform(low, high)) if high > low else float(low)


def object_extent(size_frac: float, aspect_ratio: float) -> tuple[float, float]:
  """(width, height) of an object's bounding box as fractions of the frame's width and height.

  The object's side is size_frac times the frame's shorter side; aspect_ratio = width / height.
  """
  return size_frac * min(1.0, 1.0 / aspect_ratio), size_frac * min(1.0, aspect_ratio)


def sample_clip_spec(
  rng: np.random.Generator,
  *,
  aspect_ratio: float = 1.0,
  color: str | None = None,
  shape: str | None = None,
  motion: str | None = None,
) -> ClipSpec:
  """Draws a random clip description.

  Args:
    rng: numpy Generator; the spec is a pure function of its state.
    aspect_ratio: frame width / height the clip will be rendered at (any ratio > 0:
      the object is sized on the shorter side, so it can always travel 40 % along
      either axis).
    color, shape, motion: fixed values; each one left None is drawn uniformly from
      COLORS, SHAPES and MOTIONS (the default vocabulary), in that order. Pass
      motion="still" for a 1-frame clip.
  Returns:
    A ClipSpec whose object stays fully inside the frame in every frame and, when
    moving, travels at least MIN_TRAVEL_FRAC of the frame along its direction.
  """
  if not aspect_ratio > 0:
    raise ValueError(f"aspect_ratio (frame width / height) must be > 0, got {aspect_ratio}")
  color = color if color is not None else str(rng.choice(list(COLORS)))
  shape = shape if shape is not None else str(rng.choice(SHAPES))
  motion = motion if motion is not None else str(rng.choice(MOTIONS))
  size_frac = _uniform(rng, MIN_SIZE_FRAC, MAX_SIZE_FRAC)
  # Object extent in each normalised axis; the centre can move over 1 - extent.
  extent = object_extent(size_frac, aspect_ratio)
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
  if shape == "diamond":  # a square rotated 45 degrees, its corners touching the box's sides
    return np.abs(dx) + np.abs(dy) <= half
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
  half = spec.size_frac * min(height, width) / 2
  inside = _inside_mask(spec.shape, dx, dy, half)  # [T, H*ss, W*ss]
  cov = inside.reshape(num_frames, height, ss, width, ss).sum(axis=(2, 4), dtype=np.int32)
  return cov.astype(np.float32) / (ss * ss)


def render_clip(spec: ClipSpec, num_frames: int, height: int, width: int, *, supersample: int = 4) -> np.ndarray:
  """Draws the clip: uint8 [T, H, W, 3], object colour times pixel coverage on black."""
  cov = coverage(spec, num_frames, height, width, supersample=supersample)
  rgb = np.asarray(spec.rgb, dtype=np.float32)
  return np.rint(cov[..., None] * rgb).astype(np.uint8)


# ------------------------------------------------------------------ captions


def article(word: str) -> str:
  """'an' before a vowel ('an orange'), else 'a'."""
  return "an" if word[:1].lower() in "aeiou" else "a"


def _with_articles(text: str) -> str:
  """Turns 'a' into 'an' before a word that starts with a vowel ('a orange diamond' -> 'an orange diamond')."""
  return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def canonical_caption(spec: ClipSpec) -> str:
  """The one exact caption form: 'a {color} {shape} moving {dir}' / 'a {color} {shape} staying still'."""
  return canonical_caption_from(spec.color, spec.shape, spec.motion)


def canonical_caption_from(color: str, shape: str, motion: str) -> str:
  """canonical_caption for a (color, shape, motion) triple; 'an' before a vowel ('an orange ...')."""
  action = "staying still" if motion == "still" else f"moving {motion}"
  return f"{article(color)} {color} {shape} {action}"


def canonical_captions(colors=COLORS, shapes=SHAPES, motions=MOTIONS) -> list[str]:
  """Canonical captions of every colors x shapes x motions combination, in that order."""
  return [canonical_caption_from(c, s, m) for c in colors for s in shapes for m in motions]


def all_canonical_captions() -> list[str]:
  """Every canonical caption of the default 7 x 3 x 5 grid (105), in COLORS x SHAPES x MOTIONS order."""
  return canonical_captions()


def new_concept_combinations(motions=MOTIONS) -> list[tuple[str, str, str]]:
  """Every (color, shape, motion) of ALL_COLORS x ALL_SHAPES x motions with at least one new concept.

  8 x 4 x 5 - 7 x 3 x 5 = 55 for the five motions, in ALL_COLORS x ALL_SHAPES x motions order.
  """
  return [(c, s, m) for c in ALL_COLORS for s in ALL_SHAPES for m in motions if c in NEW_COLORS or s in NEW_SHAPES]


def new_concept_captions() -> list[str]:
  """Canonical captions of new_concept_combinations() (55), e.g. 'an orange diamond moving left'."""
  return [canonical_caption_from(*combo) for combo in new_concept_combinations()]


_CANONICAL_RE = re.compile(
  rf"^an? ({'|'.join(ALL_COLORS)}) ({'|'.join(ALL_SHAPES)}) "
  r"(?:moving (left|right|up|down)|staying (still))$"
)


def parse_canonical_caption(text: str) -> tuple[str, str, str]:
  """Inverse of canonical_caption: 'a red circle moving left' -> ('red', 'circle', 'left')."""
  match = _CANONICAL_RE.match(text.strip())
  parsed = None
  if match:
    color, shape, direction, still = match.groups()
    parsed = (color, shape, direction or still)
  if parsed is None or canonical_caption_from(*parsed) != text.strip():
    raise ValueError(
      f"{text!r} is not a canonical shapes caption; expected "
      f"'a {{color}} {{shape}} moving {{left|right|up|down}}' or "
      f"'a {{color}} {{shape}} staying still' ('an' before a vowel) with color in {tuple(ALL_COLORS)} "
      f"and shape in {ALL_SHAPES}"
    )
  return parsed


# Synonyms used by the paraphrases; `parse_caption` understands all of them.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
  "circle": ("circle", "disc", "dot", "ball"),
  "square": ("square", "box", "block"),
  "triangle": ("triangle",),
  "diamond": ("diamond",),
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
# 1-frame clips (images) are also captioned without any motion phrase.
_IMAGE_TEMPLATES = (
  "a {color} {shape}",
  "{color} {shape}",
  "a {shape} in {color}",
  "a {color} {shape} on a black background",
  "a picture of a {color} {shape}",
)


def paraphrase_caption(
  spec: ClipSpec, rng: np.random.Generator, *, canonical_prob: float = 0.25, image: bool = False
) -> str:
  """A training caption: the canonical form with probability `canonical_prob`, else a paraphrase.

  Paraphrases vary the template (word order), the shape word ("box" for square,
  "disc" for circle, ...), the verb ("going", "travelling", ...), the direction
  phrase ("to the left", "upward", ...) and the still phrase ("not moving", ...).
  Colour names are never replaced, so colour stays unambiguous. image=True (a 1-frame
  clip, which must be still) also draws from templates without a motion phrase
  ("a red circle", "a picture of a red circle").
  """
  if image and spec.motion != "still":
    raise ValueError(f"a 1-frame clip (image=True) must be still, got motion {spec.motion!r}")
  if rng.uniform() < canonical_prob:
    return canonical_caption(spec)
  fields = {"color": spec.color, "shape": str(rng.choice(SHAPE_SYNONYMS[spec.shape]))}
  if spec.motion == "still":
    template = str(rng.choice(_STILL_TEMPLATES + (_IMAGE_TEMPLATES if image else ())))
    fields["still"] = str(rng.choice(STILL_PHRASES)) if "{still}" in template else ""
  else:
    template = str(rng.choice(_MOVING_TEMPLATES))
    fields["moving"] = str(rng.choice(MOVING_SYNONYMS))
    fields["direction"] = str(rng.choice(DIRECTION_PHRASES[spec.motion]))
  return _with_articles(template.format(**fields))


def _find_all(text: str, vocabulary: dict[str, tuple[str, ...]]) -> set[str]:
  """The keys of `vocabulary` whose words occur in `text` (whole words)."""
  return {key for key, words in vocabulary.items() if any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)}


def _find_unique(text: str, vocabulary: dict[str, tuple[str, ...]], what: str) -> str:
  """The single key of `vocabulary` whose words occur in `text` (whole words)."""
  found = _find_all(text, vocabulary)
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

  A caption without any motion phrase ("a red circle", how images are captioned) is
  still. Raises ValueError if the caption names no colour or shape, more than one
  of any, or a verb of motion ("moving") without a direction.
  """
  lowered = text.lower()
  color = _find_unique(lowered, {c: (c,) for c in ALL_COLORS}, "color")
  shape = _find_unique(lowered, SHAPE_SYNONYMS, "shape")
  if not _find_all(lowered, _MOTION_WORDS) and not _find_all(lowered, {"moving": MOVING_SYNONYMS}):
    return color, shape, "still"
  motion = _find_unique(lowered, _MOTION_WORDS, "motion")
  return color, shape, motion
