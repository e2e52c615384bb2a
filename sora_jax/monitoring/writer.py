"""MetricWriter: one call logs scalars to TensorBoard, a plain-text line, and an append-only metrics.jsonl.

  writer = MetricWriter(workdir, process_index=jax.process_index())
  writer.write_scalars(step, {"loss": 0.1234, "psnr": 28.1, "steps/s": 3.2})
  # prints: step 100 | loss 0.1234 | psnr 28.1 | steps/s 3.2
  writer.write_images(step, {"reconstructions": grid_uint8_hwc})
  writer.close()

Files under `logdir`: TensorBoard event files (`tensorboard --logdir DIR`) and
`metrics.jsonl`, one JSON object per `write_scalars` call:
`{"step": 100, "time": <unix s>, "minutes": 3.52, "loss": 0.1234, ...}`.
"minutes" is wall time spent in runs writing to this logdir: a resumed run
continues from the last recorded value, so curves against minutes leave out
the time between runs. Only process 0 of a multi-host job writes anything;
on the other processes every method is a no-op.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

METRICS_FILENAME = "metrics.jsonl"
_RESERVED_KEYS = ("step", "time", "minutes")


def format_value(value: float) -> str:
  """Short human-readable number: ints as ints, floats with 4 significant digits (0.1234, 28.1, 3.2)."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return str(int(value))
  value = float(value)
  if math.isfinite(value) and value == int(value) and abs(value) < 1e6:
    return f"{value:.1f}" if abs(value) < 10 else str(int(value))
  return f"{value:.4g}"


def format_line(step: int, scalars: Mapping[str, Any]) -> str:
  """`step 100 | loss 0.1234 | psnr 28.1 | steps/s 3.2` (keys in the order given)."""
  parts = [f"step {int(step)}"] + [f"{key} {format_value(value)}" for key, value in scalars.items()]
  return " | ".join(parts)


def _to_python_scalar(key: str, value: Any) -> float | int:
  """Host scalar from a Python/numpy/JAX scalar; errors name the key."""
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(
      f"scalar {key!r} must hold one value, got shape {array.shape}; reduce it (e.g. .mean()) before logging"
    )
  item = array.reshape(()).item()
  if isinstance(item, bool) or not isinstance(item, (int, float)):
    item = float(item)
  return item


def _last_minutes(path: Path) -> float:
  """The "minutes" of the last record of an existing metrics.jsonl (0 if none)."""
  if not path.exists():
    return 0.0
  last = 0.0
  with path.open() as f:
    for line in f:
      try:
        last = float(json.loads(line).get("minutes", last))
      except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
        continue  # a line cut short by a crash
  return last


class MetricWriter:
  """Writes scalars and images of a training run; only on process 0.

  Args:
    logdir: folder for event files and metrics.jsonl (created).
    process_index: this process's index (`jax.process_index()`); only 0 writes.
    print_lines: print a text line per `write_scalars` call.
    tensorboard: also write TensorBoard event files (tensorboardX).
  """

  def __init__(
    self, logdir: str | os.PathLike, process_index: int = 0, *, print_lines: bool = True, tensorboard: bool = True
  ):
    self.logdir = Path(logdir)
    self.active = process_index == 0
    self.print_lines = print_lines
    self.metrics_path = self.logdir / METRICS_FILENAME
    self._summary = None
    if not self.active:
      return
    self.logdir.mkdir(parents=True, exist_ok=True)
    self._start_time = time.time()
    self._minutes_offset = _last_minutes(self.metrics_path)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._summary = SummaryWriter(logdir=str(self.logdir), flush_secs=30)

  def minutes(self) -> float:
    """Wall minutes logged in this logdir so far (earlier runs included)."""
    if not self.active:
      return 0.0
    return self._minutes_offset + (time.time() - self._start_time) / 60.0

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs `{name: scalar}` at `step` to TensorBoard, metrics.jsonl and one printed line.

    Values may be Python, numpy or JAX scalars (fetched to the host here).
    Names may contain "/" to group them in TensorBoard ("eval/psnr").
    """
    if not self.active:
      return
    clash = [key for key in scalars if key in _RESERVED_KEYS]
    if clash:
      raise ValueError(f"scalar names {clash} are reserved in metrics.jsonl; rename them")
    values = {str(key): _to_python_scalar(key, value) for key, value in scalars.items()}
    now = time.time()
    record = {"step": int(step), "time": round(now, 3), "minutes": round(self.minutes(), 4), **values}
    with self.metrics_path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self._summary is not None:
      for key, value in values.items():
        self._summary.add_scalar(key, value, global_step=int(step), walltime=now)
    if self.print_lines:
      tqdm.write(format_line(step, values))  # tqdm.write keeps progress bars intact

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Logs uint8 images [H, W, 3] (or [N, H, W, 3]) to TensorBoard, e.g. contact-sheet grids."""
    if not self.active or self._summary is None:
      return
    for key, image in images.items():
      image = np.asarray(image)
      if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
          f"image {key!r} must be uint8 [H, W, C] or [N, H, W, C] with C in 1/3/4, got {image.dtype} {image.shape}"
        )
      if image.ndim == 3:
        self._summary.add_image(key, image, global_step=int(step), dataformats="HWC")
      else:
        self._summary.add_images(key, image, global_step=int(step), dataformats="NHWC")

  def write_text(self, step: int, name: str, text: str) -> None:
    """Logs a text block (e.g. the config JSON or sample prompts) to TensorBoard."""
    if self.active and self._summary is not None:
      self._summary.add_text(name, text, global_step=int(step))

  def flush(self) -> None:
    if self._summary is not None:
      self._summary.flush()

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()
      self._summary = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
