"""Curves from metrics.jsonl as PNG files (matplotlib, Agg canvas: no display needed).

  plot_curves("runs/demo/vae/metrics.jsonl", ["eval/psnr"], "docs/vae_psnr.png", x="minutes")

One panel per key, stacked, sharing the x axis (training step or wall minutes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

X_AXES = {"step": "training step", "minutes": "wall time (minutes)"}


def read_metrics(jsonl_path: str | os.PathLike) -> list[dict]:
  """All records of a metrics.jsonl, skipping blank or crash-truncated lines."""
  path = Path(jsonl_path)
  if not path.exists():
    raise FileNotFoundError(
      f"no metrics file at {os.fspath(path)!r}; MetricWriter writes <workdir>/metrics.jsonl during training"
    )
  records = []
  with path.open() as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def curve(records: Sequence[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
  """(x values, key values) of the records that hold `key`, sorted by x.

  When a resumed run logs a step again, the later record wins.
  """
  points = {}
  for record in records:
    if key in record and x in record and record[key] is not None:
      points[float(record[x])] = float(record[key])
  xs = np.array(sorted(points), dtype=np.float64)
  return xs, np.array([points[v] for v in xs], dtype=np.float64)


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
  """TensorBoard-style exponential moving average (debiased)."""
  out = np.empty_like(values)
  running, norm = 0.0, 0.0
  for i, v in enumerate(values):
    running = weight * running + (1 - weight) * v
    norm = weight * norm + (1 - weight)
    out[i] = running / norm
  return out


def plot_curves(
  jsonl_path: str | os.PathLike,
  keys: Sequence[str],
  out_png: str | os.PathLike,
  *,
  x: str = "step",
  title: str | None = None,
  smoothing: float = 0.0,
  log_y: bool | Sequence[str] = False,
) -> Path:
  """Plots `keys` of a metrics.jsonl against `x` and writes a PNG.

  Args:
    jsonl_path: a metrics.jsonl written by MetricWriter.
    keys: scalar names, one panel each (e.g. ["loss", "eval/psnr"]).
    out_png: output file (parent folders are created).
    x: "step" or "minutes".
    title: figure title (default: the jsonl's folder name).
    smoothing: EMA weight in [0, 1); > 0 draws the raw curve faintly and the smoothed one on top.
    log_y: True for a log y axis on every panel, or the keys that get one.
  Returns:
    The PNG path.
  """
  if x not in X_AXES:
    raise ValueError(f"x must be one of {sorted(X_AXES)}, got {x!r}")
  if isinstance(keys, str):
    keys = [keys]
  if not keys:
    raise ValueError("keys is empty: name at least one scalar to plot")
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
  records = read_metrics(jsonl_path)
  available = sorted({k for r in records for k in r} - {"step", "time", "minutes"})
  missing = [k for k in keys if k not in available]
  if missing:
    raise ValueError(f"{os.fspath(jsonl_path)!r} has no values for {missing}; available: {available}")
  log_keys = set(keys) if log_y is True else set(log_y or ())

  figure = Figure(figsize=(7, 2.4 * len(keys) + 0.6), dpi=110)
  FigureCanvasAgg(figure)
  axes = figure.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
  for ax, key in zip(axes, keys):
    xs, ys = curve(records, key, x)
    if smoothing > 0 and len(ys) > 1:
      ax.plot(xs, ys, color="tab:blue", alpha=0.25, linewidth=1)
      ax.plot(xs, _ema(ys, smoothing), color="tab:blue", linewidth=1.8)
    else:
      ax.plot(xs, ys, color="tab:blue", linewidth=1.5, marker="o" if len(xs) < 30 else None, markersize=3)
    if key in log_keys and np.all(ys[np.isfinite(ys)] > 0):
      ax.set_yscale("log")
    finite = ys[np.isfinite(ys)]
    last = f"{finite[-1]:.4g}" if len(finite) else "n/a"
    ax.set_ylabel(key)
    ax.set_title(f"{key} (last {last})", fontsize=9, loc="right")
    ax.grid(True, alpha=0.3)
  axes[-1].set_xlabel(X_AXES[x])
  figure.suptitle(title if title is not None else Path(jsonl_path).resolve().parent.name)
  figure.tight_layout()
  out_png = Path(out_png)
  out_png.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(out_png, format="png")
  return out_png


__all__ = ["plot_curves", "read_metrics", "curve"]
