"""Loading Python config files and applying `--config.key=value` overrides.

Configs are Python files under `configs/` with a `get_config()` returning an
`ml_collections.ConfigDict`. This module gives them two entry points:

* `load_config(path, overrides)` for code and tests;
* `merge_saved_config(saved)` for the config a training run saved: merged onto today's
  `configs/base.py`, so code reads every key without defaults of its own (the one place
  where configs of older runs are made current);
* `run_tool(main)` for the absl tools: it checks every `--config.key=value`
  on the command line *before* absl parses flags, so a misspelt key fails with
  a message that names the key and the closest valid ones (ml_collections on
  its own raises a bare `AttributeError`).

Types are enforced by ml_collections on assignment (an `int` field rejects
`"foo"`); `load_config` turns those failures into `ConfigError`s that name the key.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config file, key or value is wrong; the message says how to fix it."""


def _import_config_module(path: str):
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist (configs live under configs/, e.g. configs/vae/demo.py)")
  name = "sora_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} has no get_config() function")
  return module


def load_config(path: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path` (optionally `path:arg`, passed to `get_config(arg)`) and applies overrides.

  Args:
    path: a config file, e.g. "configs/dit/demo.py" or "configs/dit/video.py:wan_1_3b".
    overrides: strings "key.sub=value"; values are parsed as Python literals when
      possible ("3", "(1, 2, 2)", "True"), otherwise kept as strings.
  Returns:
    The config, unlocked values applied, locked against new keys.
  """
  path, _, arg = os.fspath(path).partition(":")
  module = _import_config_module(path)
  config = module.get_config(arg) if arg else module.get_config()
  for override in overrides:
    key, sep, value = override.partition("=")
    if not sep:
      raise ConfigError(f"override {override!r} must look like key=value, e.g. train.steps=100")
    set_value(config, key.removeprefix("--config.").removeprefix("config."), _parse_value(value))
  config.lock()
  return config


# Keys of older saved configs that no longer exist, each with the value that behaves like today's code
# (docs/experiments.md has the experiments that retired them).
REMOVED_KEYS = {
  "vae.output_activation": "none",  # the decoder's output is linear
  "vae.decoder_time_patch": 0,  # the decoder un-patchifies vae.patch_size[0] frames, like the encoder
}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def merge_saved_config(saved: dict, source: str = "the saved config") -> ml_collections.ConfigDict:
  """The config a run saved (JSON dict), merged onto today's base config (`configs/base.py`).

  Keys the run did not save (added since) take today's defaults, which behave as the code did
  before they existed. A saved key that no longer exists is dropped when it holds the value
  that behaves like today's code (`REMOVED_KEYS`); otherwise this raises ConfigError, as for a
  key that never existed: the run cannot be reproduced by this version.

  Args:
    saved: the dict of a `config.json` (lists where the config holds tuples are fine).
    source: where it came from, for error messages.
  Raises:
    ConfigError: naming each key that cannot be merged and why.
  """
  from configs import base  # the installed configs package (not a model floor: pure defaults)

  config = base.get_config()
  known = set(all_keys(config))
  problems = []
  for key, value in _flatten(_lists_to_tuples(saved)).items():
    if key in known:
      try:
        set_value(config, key, value)
      except ConfigError as e:
        problems.append(str(e))
    elif key in REMOVED_KEYS and value == REMOVED_KEYS[key]:
      continue
    elif key in REMOVED_KEYS:
      problems.append(
        f"{key}={value!r}: this setting no longer exists (today's code behaves as {REMOVED_KEYS[key]!r}; "
        "docs/experiments.md says why it was removed)"
      )
    else:
      problems.append(f"{key}={value!r}: no such config key in configs/base.py")
  if problems:
    raise ConfigError(
      f"{source} cannot be used by this version of sora_jax:\n  "
      + "\n  ".join(problems)
      + "\nRestore the run with the sora_jax version that trained it, or retrain."
    )
  return config


def _lists_to_tuples(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _lists_to_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_lists_to_tuples(v) for v in x)
  return x


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf key of `config` as a dotted path ("train.steps", ...)."""
  keys = []
  for name, value in config.items():
    dotted = f"{prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(all_keys(value, dotted + "."))
    else:
      keys.append(dotted)
  return keys


def check_key(config: ml_collections.ConfigDict, dotted_key: str) -> None:
  """Raises ConfigError naming `dotted_key` and its closest matches if it does not exist."""
  node = config
  parts = dotted_key.split(".")
  for part in parts:
    is_dict = isinstance(node, ml_collections.ConfigDict)
    if not is_dict or part not in node:
      known = all_keys(config)
      close = difflib.get_close_matches(dotted_key, known, n=3, cutoff=0.5)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(
        f"unknown config key {dotted_key!r}.{hint} Run with --helpfull or read configs/base.py for every key."
      )
    node = node[part]


def set_value(config: ml_collections.ConfigDict, dotted_key: str, value: Any) -> None:
  """Sets `config.<dotted_key> = value`, with errors that name the key."""
  check_key(config, dotted_key)
  *parents, leaf = dotted_key.split(".")
  node = config
  for part in parents:
    node = node[part]
  old = node[leaf]
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config key {dotted_key!r} expects {type(old).__name__}, got {value!r}: {e}") from e


def to_json(config: ml_collections.ConfigDict) -> str:
  """The full config as JSON (saved in every workdir so a run can be restored without its file)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """Inverse of `to_json` (JSON lists come back as tuples where a config holds tuples).

  The dict is taken as it is; for a config saved by a training run use `merge_saved_config`.
  """
  return ml_collections.ConfigDict(_lists_to_tuples(d))


def _config_path_from_argv(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_argv_overrides(argv: Sequence[str]) -> None:
  """Validates every `--config.key=value` in argv against the config file named by --config."""
  path = _config_path_from_argv(argv)
  overrides = [a[2:] for a in argv if a.startswith("--config.")]
  if not overrides:
    return
  if path is None:
    raise ConfigError("--config.<key> overrides need --config=<file> first (e.g. --config=configs/dit/demo.py)")
  load_config(path, [o.removeprefix("config.") for o in overrides])


def run_tool(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` after validating config overrides, with readable errors.

  A `sora_jax.errors.ClearError` (or ConfigError) raised by `main` is printed as one line,
  `error: <message>`, on stderr and the process exits with its exit_code (1 by default; 75
  after a preemption save). Also defaults absl logging to WARNING (pass --verbosity=0 for INFO).
  """
  from absl import app

  from sora_jax.errors import ClearError, Preempted

  def guarded(argv):
    try:
      return main(argv)
    except (ClearError, ConfigError) as e:
      sys.stdout.flush()
      label = "stopped" if isinstance(e, Preempted) else "error"
      print(f"{label}: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
      sys.exit(getattr(e, "exit_code", 1))

  try:
    check_argv_overrides(sys.argv[1:])
  except ConfigError as e:
    sys.exit(f"error: {e}")
  if not any(a.startswith(("--verbosity", "-v=", "--v=")) for a in sys.argv[1:]):
    # Orbax and friends log every checkpoint step at INFO; keep the console for our progress
    # bars and metric lines. --verbosity=0 brings INFO back.
    sys.argv.append("--verbosity=-1")
  app.run(guarded)
