"""ClearError: a failure the user can act on, printed by the tools as one line (no traceback).

    raise ClearError("loss NaN for 10 steps in a row (step 120); lower --config.train.learning_rate")

A tool main run through `configuration.run_tool` catches it and exits with `error: <message>` and
code 1 (or `exit_code`, e.g. 75 after a preemption save). Subclass it (or raise it `from` the low-level
error) where a failure has one cause and one fix; keep programming errors as ordinary exceptions.
"""

from __future__ import annotations


class ClearError(Exception):
  """An error whose message alone says what went wrong and what to do; tools print it as one line.

  Attributes:
    exit_code: the process exit code a tool ends with (default 1).
  """

  exit_code: int = 1

  def __init__(self, message: str, *, exit_code: int | None = None):
    super().__init__(message)
    if exit_code is not None:
      self.exit_code = exit_code

  def one_line(self) -> str:
    return " ".join(str(self).split())


# The exit code of a run stopped by SIGTERM / SIGINT after saving a checkpoint (EX_TEMPFAIL: try again).
EXIT_PREEMPTED = 75


class NonFiniteError(ClearError):
  """The training loss or gradient went NaN/Inf (train.nonfinite='stop', or too many skipped steps in a row)."""


class WorkdirLockedError(ClearError):
  """Another live run holds the workdir's lock."""


class ConfigMismatchError(ClearError):
  """The checkpoint was written with a different model config than the one given."""


class Preempted(ClearError):
  """The run saved a checkpoint after SIGTERM / SIGINT and stopped (exit code 75)."""

  exit_code = EXIT_PREEMPTED


class InputError(ValueError, ClearError):
  """A bad argument, flag or file given by the user (a ValueError too, for callers that catch those)."""


class RunNotFoundError(FileNotFoundError, ClearError):
  """A path given as a trained run holds none (the message says what to pass)."""
