"""One run per workdir: `<workdir>/.lock` holds the running process's pid, host and start time.

    with WorkdirLock(workdir):      # WorkdirLockedError if a live run holds it
      ...train...

A second run on the same workdir fails at once with a message naming the holder. A lock left by a
run that died (its pid no longer exists on this host) is taken over with a warning; a lock held from
another host cannot be checked from here, so the message says how to remove it by hand. Only
process 0 of a multi-process run takes the lock (the others write nothing the lock protects alone).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import jax

from sora_jax.errors import WorkdirLockedError

log = logging.getLogger(__name__)

LOCK_FILENAME = ".lock"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """An exclusive lock on a workdir for the lifetime of a `with` block (process 0 only)."""

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILENAME)
    self._held = False

  def _describe(self, holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')!r} (since {started})"

  def acquire(self) -> None:
    if "://" in self.workdir or jax.process_index() != 0:
      return  # cloud storage has no O_EXCL create; other processes rely on process 0's lock
    os.makedirs(self.workdir, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if holder is None or (holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1)))):
          what = "an unreadable lock" if holder is None else f"the lock of {self._describe(holder)}, which is gone"
          log.warning("%s: taking over %s", self.workdir, what)
          try:
            os.unlink(self.path)
          except FileNotFoundError:
            pass
          continue
        if holder.get("host") == me["host"]:
          how = f"wait for it to finish or stop it (kill {holder.get('pid')}), or use another --workdir"
        else:
          how = f"if that run is no longer alive, delete {self.path}; else use another --workdir"
        message = f"{self.workdir} is in use by another run: {self._describe(holder)}. To go on, {how}."
        raise WorkdirLockedError(message) from None
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self._held = True
      return
    raise WorkdirLockedError(f"could not take the lock {self.path}: another run keeps taking it; use another --workdir")

  def _read(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def release(self) -> None:
    if self._held:
      holder = self._read()
      if holder is not None and holder.get("pid") == os.getpid():
        os.unlink(self.path)
      self._held = False

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
