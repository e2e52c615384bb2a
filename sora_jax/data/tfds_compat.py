"""Workarounds that let TFDS builders run without TensorFlow and without optional extras.

TFDS 4.9 locates a builder's source file (`DatasetBuilder.code_path`, used to look
for download checksums and metadata files) through a check that lazily imports the
`importlib_resources` backport, which is not installed on Python >= 3.9 and makes
`download_and_prepare` crash with `ModuleNotFoundError`. Our builders set
`code_path = builder_code_path(__file__)` instead, which is what TFDS would compute.

Importing this module also filters out the warning TFDS logs for every builder
made from a config that is not in BUILDER_CONFIGS (all of ours: sizes come from
the config), which would otherwise repeat on every data-source open.

Builders that generate data locally derive from `LocalBuilderMixin` and are built with
`prepare_locally`, so TFDS prints no "Downloading and preparing dataset" lines.
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


class LocalBuilderMixin:
  """For builders that generate their data locally: no false "Downloading ..." lines from TFDS.

  TFDS's `download_and_prepare` prints "Downloading and preparing dataset ..." and
  "Dataset ... downloaded and prepared to ..." for every builder, although ours download
  nothing; our build functions print their own one-line report instead.
  """

  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


def prepare_locally(builder) -> None:
  """`builder.download_and_prepare()` without downloads, GCS look-ups or TFDS's progress bars.

  TFDS's own bars ("Generating train examples...", "Shuffling ...") repeat what our
  builders' per-split bars already show; they are switched off for the build only.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.utils import tqdm_utils

  was_active = tqdm_utils._active
  tqdm_utils.display_progress_bar(False)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  finally:
    tqdm_utils.display_progress_bar(was_active)
