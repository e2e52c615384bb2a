"""Workarounds that let TFDS builders run without TensorFlow and without optional extras.

TFDS 4.9 locates a builder's source file (`DatasetBuilder.code_path`, used to look
for download checksums and metadata files) through a check that lazily imports the
`importlib_resources` backport, which is not installed on Python >= 3.9 and makes
`download_and_prepare` crash with `ModuleNotFoundError`. Our builders set
`code_path = builder_code_path(__file__)` instead, which is what TFDS would compute.

Importing this module also filters out the warning TFDS logs for every builder
made from a config that is not in BUILDER_CONFIGS (all of ours: sizes come from
the config), which would otherwise repeat on every data-source open.
"""

from __future__ import annotations

import logging

from etils import epath


class _ClassConstant:
  """A read-only class attribute that shadows TFDS's `code_path` classproperty."""

  def __init__(self, value):
    self._value = value

  def __get__(self, instance, owner):
    return self._value


def builder_code_path(module_file: str) -> _ClassConstant:
  """`code_path` class attribute for a builder defined in the module at `module_file`."""
  return _ClassConstant(epath.Path(module_file))


class _DropCustomConfigWarnings(logging.Filter):
  """Drops TFDS's per-builder "Using custom data configuration" / "Variant folder" warnings."""

  _PREFIXES = ("Using custom data configuration", "Variant folder")

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self._PREFIXES)


def install_log_filter() -> None:
  """Installs the filter once on the absl logger (TFDS logs through absl)."""
  logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropCustomConfigWarnings) for f in logger.filters):
    logger.addFilter(_DropCustomConfigWarnings())


install_log_filter()
