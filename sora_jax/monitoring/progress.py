"""Progress bars with rate and ETA for every long loop, readable both in a terminal and in CI logs.

  for step in progress_bar(range(start, steps), total=steps, initial=start, desc="train", unit="step"):
    ...

In a terminal this is a normal tqdm bar redrawn in place. When the stream is
not a TTY (CI, `make demo > log.txt`, a notebook capturing output) in-place
redraws would pile up as one enormous line of carriage returns, so the bar
prints a plain line at most every `non_tty_interval_s` seconds (default 30,
or $SORA_JAX_PROGRESS_INTERVAL), plus one at the start and one at the end:

  train: 120/400 (30%) [01:02<02:25, 1.93step/s, loss=0.0412]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, TypeVar

from tqdm import std as tqdm_std
from tqdm.auto import tqdm

T = TypeVar("T")

DEFAULT_NON_TTY_INTERVAL_S = 30.0
_INTERVAL_ENV = "SORA_JAX_PROGRESS_INTERVAL"
_TTY_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def is_interactive(stream: IO) -> bool:
  """True when `stream` is a terminal that can redraw a line in place."""
  isatty = getattr(stream, "isatty", None)
  try:
    return bool(isatty and isatty())
  except ValueError:  # closed stream
    return False


class _LineStream:
  """File-like wrapper that turns tqdm's carriage-return redraws into whole lines."""

  def __init__(self, stream: IO):
    self._stream = stream
    self._last_line = None

  def write(self, text: str) -> int:
    for part in str(text).replace("\r", "\n").split("\n"):
      part = part.rstrip()
      if part and part != self._last_line:  # a forced refresh with nothing new: skip
        self._stream.write(part + "\n")
        self._last_line = part
    return len(text)

  def flush(self) -> None:
    flush = getattr(self._stream, "flush", None)
    if flush:
      flush()

  def isatty(self) -> bool:
    return False


class _SparseTqdm(tqdm_std.tqdm):
  """tqdm whose postfix/description changes wait for the next timed line instead of printing one each."""

  def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
    super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

  def set_description(self, desc=None, refresh=False):
    super().set_description(desc, refresh=refresh)


def _non_tty_interval(value: float | None) -> float:
  if value is not None:
    return float(value)
  env = os.environ.get(_INTERVAL_ENV, "")
  try:
    return float(env) if env else DEFAULT_NON_TTY_INTERVAL_S
  except ValueError:
    raise ValueError(f"${_INTERVAL_ENV} must be a number of seconds, got {env!r}") from None


def progress_bar(
  iterable: Iterable[T] | None = None,
  *,
  total: int | float | None = None,
  desc: str = "",
  unit: str = "it",
  initial: int = 0,
  disable: bool = False,
  leave: bool = True,
  file: IO | None = None,
  non_tty_interval_s: float | None = None,
) -> tqdm:
  """A tqdm bar showing count, percentage, elapsed time, ETA and rate.

  Args:
    iterable: what to iterate over (None = update the bar by hand with `.update(n)`).
    total: expected number of items (default: `len(iterable)` when it has one).
    desc: label in front of the bar, e.g. "train" or "build shapes".
    unit: name of one item ("step", "clip", ...); the rate reads "3.2step/s".
    initial: starting count, e.g. the restored step of a resumed run (the rate
      and ETA then count only the new work).
    disable: no output at all (e.g. on processes other than 0).
    leave: keep the finished bar on screen.
    file: stream to draw on (default sys.stderr).
    non_tty_interval_s: when `file` is not a terminal, seconds between printed
      lines (default $SORA_JAX_PROGRESS_INTERVAL or 30).
  Returns:
    The tqdm object: iterate it, or call `.update(n)`, `.set_postfix(loss=...)`, `.close()`.
  """
  stream = file if file is not None else sys.stderr
  if total is None and iterable is not None and hasattr(iterable, "__len__"):
    total = len(iterable) + initial
  common = dict(total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave, dynamic_ncols=True)
  if is_interactive(stream):
    return tqdm(iterable, file=stream, bar_format=_TTY_FORMAT, **common)
  return _SparseTqdm(
    iterable,
    file=_LineStream(stream),
    mininterval=_non_tty_interval(non_tty_interval_s),
    maxinterval=float("inf"),
    ascii=True,
    bar_format=_LINE_FORMAT if total else _LINE_FORMAT_NO_TOTAL,
    **common,
  )
