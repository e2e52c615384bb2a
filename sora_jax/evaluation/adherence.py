"""Prompt adherence on the shapes domain: generate every colour x shape x motion, read it back.

For each of the 7 x 3 x 5 = 105 canonical captions (DESIGN.md §4) the pipeline
generates `videos_per_prompt` videos; `shapes_analyzer.analyze_video` reads colour,
shape and motion back from the pixels, and the result is scored against the prompt.
The analyzer itself is validated on ground-truth dataset clips in the tests
(>= 98 % on every attribute), so a low score here is the model's, not the reader's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sora_jax.data import shapes
from sora_jax.evaluation import shapes_analyzer as analyzer
from sora_jax.monitoring.progress import progress_bar


def all_prompts() -> list[str]:
  """The 105 canonical captions, in a fixed order."""
  return shapes.all_canonical_captions()


# Named prompt sets tools/evaluate.py scores (--prompt_sets): the 105 default captions, and the 55
# with a new concept (orange, diamond) that a LoRA fine-tune (configs/dit/lora_demo.py) teaches.
PROMPT_SETS = {"canonical": all_prompts, "new_concepts": shapes.new_concept_captions}


def spread_prompts(prompts: Sequence[str], max_prompts: int = 0) -> list[str]:
  """Every k-th prompt, k chosen so at most `max_prompts` remain (0 = all): a quicker estimate that still
  spans every colour, shape and motion of the ordered canonical list."""
  prompts = list(prompts)
  if max_prompts and max_prompts < len(prompts):
    prompts = prompts[:: -(-len(prompts) // max_prompts)]
  return prompts


def prompt_set(name: str) -> list[str]:
  if name not in PROMPT_SETS:
    raise ValueError(f"unknown prompt set {name!r}; choose from {', '.join(PROMPT_SETS)}")
  return PROMPT_SETS[name]()


def evaluate_adherence(
  pipe,
  prompts: Sequence[str] | None = None,
  *,
  batch_size: int = 16,
  seed: int = 0,
  videos_per_prompt: int = 1,
  **sample_kwargs,
) -> dict[str, Any]:
  """Generates, analyses and scores; returns accuracies, per-prompt results and the videos.

  Returns:
    {"accuracy_color", "accuracy_shape", "accuracy_motion", "accuracy_all": float,
     "per_prompt": [{prompt, seed, predicted: {color, shape, motion}, correct: {...}}],
     "confusion": {attribute: int matrix as nested lists}, "labels": {attribute: [...]},
     "videos": uint8 [N, T, H, W, 3] (not JSON; dropped by callers that write JSON)}
  """
  prompts = list(prompts or all_prompts())
  # Job j uses noise seed `seed + j`: the pipeline gives example i of a call seed + i.
  jobs = [(p, seed + j) for j, p in enumerate(prompts * videos_per_prompt)]
  results, videos = [], []
  for start in progress_bar(
    range(0, len(jobs), batch_size),
    desc="evaluate adherence",
    total=(len(jobs) + batch_size - 1) // batch_size,
    unit="batch",
  ):
    chunk = jobs[start : start + batch_size]
    batch_videos = pipe([p for p, _ in chunk], seed=chunk[0][1], expand_prompts=False, **sample_kwargs)
    for (prompt, job_seed), video in zip(chunk, batch_videos):
      predicted = analyzer.analyze_video(video)
      correct = analyzer.score(predicted, prompt)
      results.append(
        {
          "prompt": prompt,
          "seed": job_seed,
          "predicted": {a: predicted[a] for a in analyzer.ATTRIBUTES},
          "correct": correct,
        }
      )
      videos.append(video)
  acc = analyzer.accuracy([r["correct"] for r in results])
  out: dict[str, Any] = {f"accuracy_{k}": v for k, v in acc.items()}
  out["num_videos"] = len(results)
  out["per_prompt"] = results
  out["labels"] = {a: list(analyzer.attribute_labels(a)) for a in analyzer.ATTRIBUTES}
  out["confusion"] = {
    a: analyzer.confusion_matrix(
      [r["predicted"][a] for r in results], [analyzer.expected_attributes(r["prompt"])[a] for r in results], a
    ).tolist()
    for a in analyzer.ATTRIBUTES
  }
  out["videos"] = np.stack(videos)
  return out


def plot_summary(result: dict[str, Any], out_png: str | os.PathLike) -> str:
  """One PNG: accuracy bars per attribute and a confusion matrix per attribute."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 4, figsize=(18, 4.5), gridspec_kw={"width_ratios": [1, 1.6, 1, 1.4]})
  names = ["color", "shape", "motion", "all"]
  values = [result[f"accuracy_{n}"] for n in names]
  bars = axes[0].bar(names, values, color=["#d62728", "#1f77b4", "#2ca02c", "#555555"])
  axes[0].set_ylim(0, 1.05)
  axes[0].set_title(f"prompt adherence ({result['num_videos']} videos)")
  for bar, v in zip(bars, values):
    axes[0].text(bar.get_x() + bar.get_width() / 2, v + 0.02, f"{v:.0%}", ha="center")
  for ax, attribute in zip(axes[1:], analyzer.ATTRIBUTES):
    matrix = np.asarray(result["confusion"][attribute])
    labels = result["labels"][attribute]
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels) + 1), labels + ["none"], rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("read back from video")
    ax.set_ylabel("prompt")
    ax.set_title(f"{attribute}: {result[f'accuracy_{attribute}']:.0%}")
    for (i, j), count in np.ndenumerate(matrix):
      if count:
        ax.text(
          j, i, str(count), ha="center", va="center", fontsize=8, color="white" if count > matrix.max() / 2 else "black"
        )
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return os.fspath(out_png)


def image_prompts() -> list[str]:
  """The 21 colour x shape prompts of an image (a 1-frame clip): 'a red circle'."""
  return [f"{shapes.article(c)} {c} {s}" for c in shapes.COLORS for s in shapes.SHAPES]


def evaluate_sizes(
  pipe,
  sizes: Sequence[tuple[int, int, int]],
  *,
  batch_size: int = 16,
  seed: int = 0,
  max_prompts: int = 0,
  **sample_kwargs,
) -> dict[str, Any]:
  """Adherence and framing at each (frames, height, width): one JSON-able section per size, plus one video each.

  Videos use the 105 canonical prompts, images (1 frame) the 21 colour x shape ones (their motion reads
  "still"); `max_prompts` > 0 takes every k-th prompt so that many remain (a quicker estimate). Framing
  (`shapes_analyzer.framing`): the fraction of clips whose object is wholly inside every frame, and of
  moving-prompt clips whose object travels >= MIN_TRAVEL of the frame.

  Returns:
    {"TxHxW": {"size", "num_videos", "accuracy_color", "accuracy_shape", "accuracy_motion", "accuracy_all",
     "framing_inside", "framing_travel", "mean_travel"}, ...} and "videos": {"TxHxW": uint8 [T, H, W, 3] (first
     prompt's sample; not JSON)}.
  """
  out: dict[str, Any] = {}
  firsts: dict[str, np.ndarray] = {}
  for frames, height, width in sizes:
    name = f"{frames}x{height}x{width}"
    prompts = spread_prompts(image_prompts() if frames == 1 else all_prompts(), max_prompts)
    result = evaluate_adherence(
      pipe,
      prompts,
      batch_size=batch_size,
      seed=seed,
      num_frames=frames,
      height=height,
      width=width,
      **sample_kwargs,
    )
    videos = result.pop("videos")
    framed = [analyzer.framing(v) for v in videos]
    moving = [
      f for f, r in zip(framed, result["per_prompt"]) if analyzer.expected_attributes(r["prompt"])["motion"] != "still"
    ]
    section = {"size": [frames, height, width], "num_videos": result["num_videos"]}
    section.update({k: v for k, v in result.items() if k.startswith("accuracy_")})
    section["framing_inside"] = float(np.mean([f["inside"] for f in framed]))
    section["framing_travel"] = float(np.mean([f["travels_enough"] for f in moving])) if moving else None
    section["mean_travel"] = float(np.mean([f["travel"] for f in moving])) if moving else None
    out[name] = section
    firsts[name] = videos[0]
  out["videos"] = firsts
  return out
