"""The shapes prompt expander: synonyms, word order, missing parts, pluggable expanders."""

import numpy as np
import pytest

from sora_jax.data import shapes
from sora_jax.sampling import prompt_expander as pe


@pytest.mark.parametrize(
  "prompt, expected",
  [
    ("blue box going up", "a blue square moving up"),
    ("Triangle, green, static", "a green triangle staying still"),
    ("a ball falling", "a white circle moving down"),
    ("leftward crimson disc", "a red circle moving left"),
    ("the cube that does not move is magenta", "a magenta square staying still"),
    ("a yellow triangle travelling to the right", "a yellow triangle moving right"),
    ("a cyan circle moving left", "a cyan circle moving left"),
    ("", "a white circle staying still"),
    ("un cercle qui monte", "a white circle staying still"),  # nothing recognised -> all defaults
    # the new concepts a LoRA teaches (orange, diamond): "an" before a vowel, as the dataset writes it
    ("an orange rhombus drifting to the left", "an orange diamond moving left"),
    ("tangerine ball falls", "an orange circle moving down"),
    ("a blue diamond", "a blue diamond staying still"),
  ],
)
def test_expands_synonyms_order_and_missing_parts(prompt, expected):
  assert pe.ShapesPromptExpander()(prompt) == expected


def test_every_dataset_paraphrase_expands_to_its_canonical_caption():
  rng = np.random.default_rng(0)
  expander = pe.ShapesPromptExpander()
  for _ in range(600):
    spec = shapes.sample_clip_spec(rng)
    caption = shapes.paraphrase_caption(spec, rng, canonical_prob=0.0)
    assert expander(caption) == shapes.canonical_caption(spec), caption


def test_every_canonical_caption_is_a_fixed_point():
  expander = pe.ShapesPromptExpander()
  for caption in shapes.all_canonical_captions() + shapes.new_concept_captions():
    assert expander(caption) == caption


def test_strict_mode_rejects_prompts_outside_the_domain():
  with pytest.raises(ValueError, match="names no colour"):
    pe.ShapesPromptExpander(strict=True)("a photo of a cat")


def test_callable_expander_and_registry():
  upper = pe.CallableExpander(lambda p: p.upper())
  assert upper("a red circle") == "A RED CIRCLE"
  with pytest.raises(ValueError, match="must return a non-empty str"):
    pe.CallableExpander(lambda p: "")("x")
  assert pe.get_expander("none")("x y") == "x y"
  with pytest.raises(ValueError, match="unknown prompt expander"):
    pe.get_expander("gpt")
