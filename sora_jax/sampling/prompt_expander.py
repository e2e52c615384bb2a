"""Prompt expansion: rewrite short user prompts into the caption style the model was trained on.

Sora rewrites user prompts with a language model before sampling. Here the
expander is pluggable: anything with `__call__(prompt: str) -> str` works, e.g.
`CallableExpander(my_llm_rewrite)`. For the built-in "shapes" domain,
`ShapesPromptExpander` is a deterministic parser that understands synonyms, any
word order and missing parts:

  "blue box going up"        -> "a blue square moving up"
  "Triangle, green, static"  -> "a green triangle staying still"
  "a ball falling"           -> "a white circle moving down"   (missing colour -> default)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from sora_jax.data import shapes


class PromptExpander(Protocol):
  def __call__(self, prompt: str) -> str: ...


class IdentityExpander:
  """Leaves prompts unchanged (for models trained on free-form captions)."""

  def __call__(self, prompt: str) -> str:
    return prompt


class CallableExpander:
  """Wraps a user function, e.g. an LLM call `str -> str`, as an expander."""

  def __init__(self, fn: Callable[[str], str]):
    self.fn = fn

  def __call__(self, prompt: str) -> str:
    out = self.fn(prompt)
    if not isinstance(out, str) or not out.strip():
      raise ValueError(f"prompt expander {self.fn!r} returned {out!r} for {prompt!r}; it must return a non-empty str")
    return out


# Word -> canonical value. Multi-word phrases are matched before single words.
COLOR_WORDS = {
  "red": "red",
  "crimson": "red",
  "scarlet": "red",
  "green": "green",
  "lime": "green",
  "emerald": "green",
  "blue": "blue",
  "azure": "blue",
  "navy": "blue",
  "yellow": "yellow",
  "gold": "yellow",
  "golden": "yellow",
  "cyan": "cyan",
  "aqua": "cyan",
  "turquoise": "cyan",
  "teal": "cyan",
  "magenta": "magenta",
  "pink": "magenta",
  "fuchsia": "magenta",
  "purple": "magenta",
  "white": "white",
  "ivory": "white",
  "snow": "white",
  # the new concepts (shapes' new_concepts set, a LoRA fine-tune: configs/dit/lora_demo.py)
  "orange": "orange",
  "tangerine": "orange",
  "amber": "orange",
}
SHAPE_WORDS = {
  "circle": "circle",
  "circles": "circle",
  "ball": "circle",
  "disc": "circle",
  "disk": "circle",
  "dot": "circle",
  "round": "circle",
  "sphere": "circle",
  "ring": "circle",
  "square": "square",
  "squares": "square",
  "box": "square",
  "block": "square",
  "cube": "square",
  "rectangle": "square",
  "tile": "square",
  "triangle": "triangle",
  "triangles": "triangle",
  "pyramid": "triangle",
  "wedge": "triangle",
  "diamond": "diamond",
  "diamonds": "diamond",
  "rhombus": "diamond",
  "lozenge": "diamond",
}
MOTION_PHRASES = {
  "not moving": "still",
  "standing still": "still",
  "staying still": "still",
  "stays still": "still",
  "does not move": "still",
  "doesn t move": "still",
  "in place": "still",
  "to the left": "left",
  "to the right": "right",
  "towards the top": "up",
  "to the top": "up",
  "towards the bottom": "down",
  "to the bottom": "down",
}
MOTION_WORDS = {
  "left": "left",
  "leftward": "left",
  "leftwards": "left",
  "west": "left",
  "westward": "left",
  "right": "right",
  "rightward": "right",
  "rightwards": "right",
  "east": "right",
  "eastward": "right",
  "up": "up",
  "upward": "up",
  "upwards": "up",
  "rising": "up",
  "rises": "up",
  "ascending": "up",
  "climbing": "up",
  "climbs": "up",
  "north": "up",
  "top": "up",
  "down": "down",
  "downward": "down",
  "downwards": "down",
  "falling": "down",
  "falls": "down",
  "descending": "down",
  "sinking": "down",
  "sinks": "down",
  "dropping": "down",
  "drops": "down",
  "south": "down",
  "bottom": "down",
  "still": "still",
  "static": "still",
  "stationary": "still",
  "motionless": "still",
  "resting": "still",
  "idle": "still",
  "fixed": "still",
  "frozen": "still",
  "unmoving": "still",
  "staying": "still",
  "stays": "still",
  "sits": "still",
  "sitting": "still",
}


def canonical_caption(color: str, shape: str, motion: str) -> str:
  """The canonical form of DESIGN.md §4 ("an" before a vowel: "an orange diamond moving left")."""
  return shapes.canonical_caption_from(color, shape, motion)


class ShapesPromptExpander:
  """Parses colour, shape and motion from free text into the canonical shapes caption.

  Missing parts are filled with `default_color` / `default_shape` / `default_motion`.
  With `strict=True`, a prompt that names none of colour, shape or motion raises
  ValueError (nothing to expand); contradictory words (two colours) take the first.
  """

  def __init__(
    self,
    default_color: str = "white",
    default_shape: str = "circle",
    default_motion: str = "still",
    strict: bool = False,
  ):
    self.defaults = (default_color, default_shape, default_motion)
    self.strict = strict

  def parse(self, prompt: str) -> tuple[str | None, str | None, str | None]:
    """(color, shape, motion) named in the prompt, None where absent."""
    text = " " + re.sub(r"[^a-z]+", " ", prompt.lower()) + " "
    motion = None
    for phrase, value in MOTION_PHRASES.items():
      if f" {phrase} " in text:
        motion = value
        text = text.replace(f" {phrase} ", " ")
        break
    color = shape = None
    for word in text.split():
      if color is None and word in COLOR_WORDS:
        color = COLOR_WORDS[word]
      elif shape is None and word in SHAPE_WORDS:
        shape = SHAPE_WORDS[word]
      elif motion is None and word in MOTION_WORDS:
        motion = MOTION_WORDS[word]
    return color, shape, motion

  def __call__(self, prompt: str) -> str:
    parsed = self.parse(prompt)
    if self.strict and parsed == (None, None, None):
      raise ValueError(
        f"prompt {prompt!r} names no colour, shape or motion of the shapes domain (e.g. 'a red circle moving left')"
      )
    color, shape, motion = (p if p is not None else d for p, d in zip(parsed, self.defaults))
    return canonical_caption(color, shape, motion)


EXPANDERS = {"none": IdentityExpander, "shapes": ShapesPromptExpander}


def get_expander(name: str) -> PromptExpander:
  if name not in EXPANDERS:
    raise ValueError(
      f"unknown prompt expander {name!r}; choose one of {sorted(EXPANDERS)} "
      f"or pass your own callable to Pipeline(prompt_expander=...)"
    )
  return EXPANDERS[name]()
