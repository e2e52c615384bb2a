"""Where the captions of imported videos come from (used by sora_jax.data.importer).

  CsvCaptions("captions.csv")      columns `path` (relative to the videos folder or
                                   absolute) and `caption`; the CSV lists the videos.
  SidecarCaptions()                `clip.mp4` is captioned by `clip.txt` next to it.
  FunctionCaptions("pkg.mod:fn")   your Python callable fn(clip uint8 [T, H, W, 3]) -> str.

Every source checks its input when it is made or asked for its videos, before an import
writes anything: a CSV that is missing, empty, not UTF-8 (the error names the line), has
unknown or missing columns, a row with too many fields (an unquoted comma), an empty
path or caption, or lists a file twice or a file that does not exist.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
CSV_COLUMNS = ("path", "caption")


class CaptionSource(Protocol):
  """Where captions come from: which videos to import and the caption of each clip."""

  def videos(self, videos_dir: Path) -> list[Path]:
    """The video files to import (each must exist)."""

  def caption(self, path: Path, clip: np.ndarray) -> str:
    """The caption of `clip` (uint8 [T, H, W, 3] at the target size) cut from `path`."""

  def describe(self) -> str:
    """One line for logs and dataset descriptions."""


def list_videos(videos_dir: Path) -> list[Path]:
  """Every file under `videos_dir` (recursively) with a VIDEO_SUFFIXES suffix, sorted."""
  videos_dir = Path(videos_dir)
  if not videos_dir.is_dir():
    raise FileNotFoundError(f"videos folder {os.fspath(videos_dir)!r} does not exist")
  return sorted(p for p in videos_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def _read_utf8(path: Path) -> str:
  """The text of `path`, or a ValueError naming the line and byte that are not UTF-8."""
  data = path.read_bytes()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise ValueError(
      f"captions CSV {os.fspath(path)!r} is not UTF-8: line {line}, column {column} holds byte "
      f"0x{data[e.start]:02x}. Save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`, "
      f"or 'CSV UTF-8' in a spreadsheet program)"
    ) from None


class CsvCaptions:
  """Captions from a CSV with exactly the columns `path` and `caption` (a header line, one row per video)."""

  def __init__(self, csv_path: str | os.PathLike):
    self.csv_path = Path(csv_path)
    name = os.fspath(self.csv_path)
    if not self.csv_path.is_file():
      raise FileNotFoundError(f"captions CSV {name!r} does not exist")
    text = _read_utf8(self.csv_path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
      raise ValueError(
        f"captions CSV {name!r} is empty; it needs a header line 'path,caption' and one line per video, "
        f"e.g. 'clip1.mp4,a red ball bouncing'"
      )
    columns = [c.strip() for c in header]
    missing = [c for c in CSV_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if missing or unknown or len(set(columns)) != len(columns):
      raise ValueError(
        f"captions CSV {name!r} has the columns {columns}; it must have exactly {list(CSV_COLUMNS)} "
        f"(missing: {missing or 'none'}, unknown: {unknown or 'none'}). The header line is 'path,caption'."
      )
    self._rows: list[tuple[int, str, str]] = []  # (line, path, caption)
    for row in reader:
      line = reader.line_num
      if not any(cell.strip() for cell in row):
        continue  # blank line
      if len(row) != len(columns):
        raise ValueError(
          f"{name!r} line {line}: {len(row)} fields, but the header has {len(columns)}; "
          f'put a caption that contains a comma in double quotes: clip.mp4,"a red ball, bouncing"'
        )
      cells = dict(zip(columns, (cell.strip() for cell in row)))
      self._rows.append((line, cells["path"], cells["caption"]))
    if not self._rows:
      raise ValueError(f"captions CSV {name!r} lists no videos: it has a header line but no rows")
    self._captions: dict[Path, str] = {}

  def videos(self, videos_dir: Path) -> list[Path]:
    name = os.fspath(self.csv_path)
    paths, missing, first_line = [], [], {}
    for line, path_text, caption in self._rows:
      if not path_text:
        raise ValueError(f"{name!r} line {line}: empty path")
      if not caption:
        raise ValueError(f"{name!r} line {line}: empty caption for {path_text!r}")
      path = Path(path_text) if os.path.isabs(path_text) else Path(videos_dir) / path_text
      key = path.resolve()
      if key in first_line:
        raise ValueError(f"{name!r} lists {path_text!r} twice (lines {first_line[key]} and {line})")
      first_line[key] = line
      if not path.is_file():
        missing.append(path_text)
      self._captions[key] = caption
      paths.append(path)
    if missing:
      raise FileNotFoundError(
        f"{len(missing)} file(s) listed in {name!r} do not exist under {os.fspath(videos_dir)!r}: {missing[:10]}"
      )
    return paths

  def caption(self, path: Path, clip: np.ndarray) -> str:
    del clip
    return self._captions[Path(path).resolve()]

  def describe(self) -> str:
    return f"csv:{os.fspath(self.csv_path)}"


class SidecarCaptions:
  """Caption of `video.mp4` = the text of `video.txt` beside it (whitespace stripped)."""

  def videos(self, videos_dir: Path) -> list[Path]:
    paths = list_videos(videos_dir)
    missing = [os.fspath(p.with_suffix(".txt")) for p in paths if not p.with_suffix(".txt").is_file()]
    if missing:
      raise FileNotFoundError(f"{len(missing)} video(s) have no sidecar caption file: {missing[:10]}")
    empty = [os.fspath(p.with_suffix(".txt")) for p in paths if not self._read(p)]
    if empty:
      raise ValueError(f"{len(empty)} sidecar caption file(s) are empty: {empty[:10]}")
    return paths

  @staticmethod
  def _read(path: Path) -> str:
    sidecar = Path(path).with_suffix(".txt")
    try:
      return sidecar.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
      raise ValueError(f"sidecar caption {os.fspath(sidecar)!r} is not UTF-8; save it as UTF-8") from None

  def caption(self, path: Path, clip: np.ndarray) -> str:
    del clip
    return self._read(path)

  def describe(self) -> str:
    return "sidecar .txt files"


class FunctionCaptions:
  """Captions from a user function given as 'package.module:function', called as fn(clip) -> str."""

  def __init__(self, spec: str):
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
      raise ValueError(f"captioner {spec!r} must look like 'package.module:function'")
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ValueError(f"captioner {spec!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?") from e
    function = getattr(module, function_name, None)
    if not callable(function):
      raise ValueError(f"captioner {spec!r}: module {module_name!r} has no callable {function_name!r}")
    self.spec = spec
    self._function: Callable[[np.ndarray], str] = function

  def videos(self, videos_dir: Path) -> list[Path]:
    return list_videos(videos_dir)

  def caption(self, path: Path, clip: np.ndarray) -> str:
    text = self._function(clip)
    if not isinstance(text, str) or not text.strip():
      raise ValueError(
        f"captioner {self.spec!r} returned {text!r} for a clip of {os.fspath(path)!r}; it must return a non-empty str"
      )
    return text.strip()

  def describe(self) -> str:
    return f"function:{self.spec}"


def make_caption_source(*, captions_csv: str = "", sidecar: bool = False, captioner: str = "") -> CaptionSource:
  """The one caption source chosen by the import flags (exactly one must be given)."""
  chosen = {"captions_csv": bool(captions_csv), "sidecar": sidecar, "captioner": bool(captioner)}
  if sum(chosen.values()) != 1:
    raise ValueError(
      f"choose exactly one caption source (--captions=FILE.csv, --sidecar_captions or "
      f"--captioner=module:function); got {[k for k, v in chosen.items() if v] or 'none'}"
    )
  if captions_csv:
    return CsvCaptions(captions_csv)
  if sidecar:
    return SidecarCaptions()
  return FunctionCaptions(captioner)
