"""The shapes analyzer reads ground-truth rendered clips >= 98 % right (issue 5), also blurred and noisy,
with the new concepts (orange, diamond) among its answers and on clips of them."""

import numpy as np
import pytest
from scipy import ndimage

from sora_jax.data import shapes
from sora_jax.evaluation import shapes_analyzer as sa


def _clips(count, num_frames, height, width, seed):
  rng = np.random.default_rng(seed)
  specs = [shapes.sample_clip_spec(rng) for _ in range(count)]
  return specs, [shapes.render_clip(spec, num_frames, height, width) for spec in specs]


def _degrade(video, blur_sigma, noise_std, gain, rng):
  """What a generated sample looks like: blurred, dimmer, noisy."""
  v = ndimage.gaussian_filter(video.astype(np.float32), (0, blur_sigma, blur_sigma, 0)) * gain
  v = v + rng.normal(0.0, noise_std, v.shape)
  return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def _accuracy(specs, videos):
  scores = [sa.score(sa.analyze_video(v), spec) for spec, v in zip(specs, videos)]
  return sa.accuracy(scores)


@pytest.mark.parametrize(
  "count,num_frames,size,seed",
  [
    (300, 17, 32, 0),  # the dataset default: the check issue 5 asks for
    (120, 9, 32, 1),  # short clips
    (60, 17, 64, 2),  # larger frames
  ],
)
def test_reads_ground_truth_clips(count, num_frames, size, seed):
  specs, videos = _clips(count, num_frames, size, size, seed)
  # The sample covers every value of every attribute of the default vocabulary.
  defaults = {"color": set(shapes.COLORS), "shape": set(shapes.SHAPES), "motion": set(shapes.MOTIONS)}
  for attribute in sa.ATTRIBUTES:
    assert {getattr(s, attribute) for s in specs} == defaults[attribute]
  acc = _accuracy(specs, videos)
  for attribute in (*sa.ATTRIBUTES, "all"):
    assert acc[attribute] >= 0.98, (attribute, acc)


def test_robust_to_blur_noise_and_dimming():
  specs, videos = _clips(105, 17, 32, 32, seed=3)
  rng = np.random.default_rng(0)
  degraded = [_degrade(v, blur_sigma=0.8, noise_std=12.0, gain=0.75, rng=rng) for v in videos]
  acc = _accuracy(specs, degraded)
  assert min(acc.values()) >= 0.95, acc


def _new_concept_clips(repeats, seed):
  rng = np.random.default_rng(seed)
  specs = [
    shapes.sample_clip_spec(rng, color=c, shape=s, motion=m) for c, s, m in shapes.new_concept_combinations() * repeats
  ]
  return specs, [shapes.render_clip(spec, 17, 32, 32) for spec in specs]


def test_reads_the_new_concepts():
  specs, videos = _new_concept_clips(repeats=2, seed=4)  # all 55 combinations with orange or diamond, twice
  acc = _accuracy(specs, videos)
  assert min(acc.values()) >= 0.98, acc
  rng = np.random.default_rng(0)
  degraded = [_degrade(v, blur_sigma=0.8, noise_std=12.0, gain=0.75, rng=rng) for v in videos[:55]]
  acc = _accuracy(specs[:55], degraded)
  assert min(acc.values()) >= 0.95, acc


def test_new_concepts_are_among_the_answers():
  assert set(sa.attribute_labels("color")) == set(shapes.COLORS) | {"orange"}
  assert set(sa.attribute_labels("shape")) == {"circle", "square", "triangle", "diamond"}
  spec = shapes.ClipSpec("orange", "diamond", "left", 0.4, (0.7, 0.5), (0.3, 0.5))
  result = sa.analyze_video(shapes.render_clip(spec, 9, 32, 32))
  assert (result["color"], result["shape"], result["motion"]) == ("orange", "diamond", "left")
  assert sa.score(result, "an orange diamond moving left")["all"]
  # Red and yellow, orange's neighbours, dimmed and noisy, still read as themselves.
  rng = np.random.default_rng(1)
  for color in ("red", "yellow"):
    clip = shapes.render_clip(shapes.ClipSpec(color, "square", "still", 0.4, (0.5, 0.5), (0.5, 0.5)), 5, 32, 32)
    assert sa.analyze_video(_degrade(clip, 0.8, 12.0, 0.6, rng))["color"] == color


def test_result_fields_and_confidences():
  spec = shapes.ClipSpec(
    color="magenta", shape="triangle", motion="right", size_frac=0.4, start_center=(0.25, 0.5), end_center=(0.75, 0.5)
  )
  result = sa.analyze_video(shapes.render_clip(spec, 17, 32, 32))
  assert (result["color"], result["shape"], result["motion"], result["found"]) == ("magenta", "triangle", "right", True)
  assert all(0.0 < c <= 1.0 for c in result["confidence"].values())
  dx, dy = result["features"]["displacement"]
  assert dx == pytest.approx(0.5, abs=0.05) and abs(dy) < 0.05
  assert result["features"]["frames_with_object"] == 17
  ious = result["features"]["shape_iou"]
  assert ious["triangle"] > 0.9 > max(ious["circle"], ious["square"], ious["diamond"])


def test_still_object_and_dim_colour():
  spec = shapes.ClipSpec(
    color="cyan", shape="square", motion="still", size_frac=0.35, start_center=(0.4, 0.6), end_center=(0.4, 0.6)
  )
  video = (shapes.render_clip(spec, 9, 32, 32).astype(np.float32) * 0.5).astype(np.uint8)
  result = sa.analyze_video(video)
  assert (result["color"], result["shape"], result["motion"]) == ("cyan", "square", "still")


def test_black_video_finds_nothing_and_scores_wrong():
  result = sa.analyze_video(np.zeros((5, 16, 16, 3), np.uint8))
  assert result["found"] is False and result["color"] is None
  assert sa.score(result, "a red circle moving left") == {"color": False, "shape": False, "motion": False, "all": False}


def test_score_accepts_captions_specs_tuples_and_dicts():
  predicted = {"color": "red", "shape": "circle", "motion": "left"}
  spec = shapes.ClipSpec(
    color="red", shape="circle", motion="up", size_frac=0.3, start_center=(0.5, 0.7), end_center=(0.5, 0.3)
  )
  assert sa.score(predicted, "a red circle moving left")["all"]
  assert sa.score(predicted, "the red ball is going to the left")["all"]  # paraphrase
  assert sa.score(predicted, spec) == {"color": True, "shape": True, "motion": False, "all": False}
  assert sa.score(predicted, ("blue", "circle", "left")) == {
    "color": False,
    "shape": True,
    "motion": True,
    "all": False,
  }
  assert sa.score(predicted, predicted)["all"]
  with pytest.raises(ValueError, match="lack"):
    sa.score(predicted, {"color": "red"})


def test_accuracy_and_confusion_matrix():
  scores = [
    {"color": True, "shape": True, "motion": False, "all": False},
    {"color": True, "shape": False, "motion": True, "all": False},
  ]
  assert sa.accuracy(scores) == {"color": 1.0, "shape": 0.5, "motion": 0.5, "all": 0.0}
  matrix = sa.confusion_matrix(["circle", "square", None], ["circle", "triangle", "square"], "shape")
  assert matrix.shape == (4, 5)  # circle, square, triangle, diamond (+ nothing found)
  assert matrix[0, 0] == 1 and matrix[2, 1] == 1 and matrix[1, 4] == 1 and matrix.sum() == 3
  with pytest.raises(ValueError, match="attribute"):
    sa.confusion_matrix([], [], "size")


def test_rejects_wrong_input():
  with pytest.raises(ValueError, match="uint8"):
    sa.analyze_video(np.zeros((5, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    sa.analyze_video(np.zeros((16, 16, 3), np.uint8))
