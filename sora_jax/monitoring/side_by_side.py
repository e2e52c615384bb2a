"""Fair side-by-side timing of two implementations on a shared machine (tools/benchmarks/vs_*.py).

Each side runs in a long-lived worker process (it compiles and warms up once); the parent asks the
workers in turn for a few timed calls at a time and reverses the order every round, so machine noise
falls on both sides alike and only one side computes at a time.

The worker is the benchmark script itself, started as `SCRIPT --worker=KIND --spec=JSON`. It builds its
calls and then `serve`s them; the parent's `Worker` talks to it over stdin/stdout in JSON lines that
start with a prefix of the script's own (every other line of the worker's output is logging).

  parent:  workers = {"ours": Worker(__file__, "ours", spec, prefix=P, env=worker_env())}
           ready = {kind: w.receive() for kind, w in workers.items()}  # {"ready": [names], "info": {...}}
           times = alternate(names, rounds, lambda name: workers[...].run(name, count))
  worker:  serve(P, {"ours_b1": call, ...}, info, wait=...)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable


def worker_env(xla_flags: str | None = None) -> dict[str, str]:
  """The environment of a worker: this one with a single real XLA host device (virtual CPU devices, which tests
  set, would split the cores), plus `xla_flags` (the worker's own flag set) on top of the environment's."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
    f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f
  )
  if xla_flags is not None:
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {xla_flags}".strip()
  return env


def send(prefix: str, message: dict) -> None:
  """One protocol line on stdout (a worker's side)."""
  sys.stdout.write(prefix + json.dumps(message, default=str) + "\n")
  sys.stdout.flush()


def serve(prefix: str, calls: dict[str, Callable[[], object]], info: dict, wait: Callable[[object], object]) -> None:
  """The worker loop, once `calls` are built and warmed up: announces {"ready": names, "info": info}, then answers
  each {"run": name, "count": k} with {"name": name, "times": [k durations in s]} until {"quit": true} or EOF.
  `wait(result)` blocks until a call's result is computed (asynchronous dispatch), inside the timing."""
  send(prefix, {"ready": sorted(calls), "info": info})
  for line in sys.stdin:
    request = json.loads(line)
    if request.get("quit"):
      return
    call, times = calls[request["run"]], []
    for _ in range(request["count"]):
      start = time.perf_counter()
      wait(call())
      times.append(time.perf_counter() - start)
    send(prefix, {"name": request["run"], "times": times})


class Worker:
  """A worker subprocess (`script --worker=KIND --spec=JSON`) speaking the line protocol; its stderr goes to a
  temporary log, whose end a dead worker's error shows."""

  def __init__(self, script: str, kind: str, spec: dict, *, prefix: str, env: dict[str, str], cwd: str | None = None):
    self.kind, self.prefix = kind, prefix
    name = os.path.splitext(os.path.basename(script))[0]
    self.log = tempfile.NamedTemporaryFile("w+", prefix=f"{name}_{kind}_", suffix=".log", delete=False)
    self.proc = subprocess.Popen(
      [sys.executable, os.path.abspath(script), f"--worker={kind}", f"--spec={json.dumps(spec)}"],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self.log,
      text=True,
      env=env,
      cwd=cwd,
    )

  def receive(self) -> dict:
    """The worker's next protocol message; RuntimeError with the end of its log if it exited instead."""
    for line in self.proc.stdout:
      if line.startswith(self.prefix):
        return json.loads(line[len(self.prefix) :])
    self.log.flush()
    self.log.seek(0)
    raise RuntimeError(
      f"the {self.kind} worker exited (code {self.proc.wait()}); its log "
      f"({self.log.name}) ends with:\n{self.log.read()[-4000:]}"
    )

  def run(self, name: str, count: int) -> list[float]:
    """Durations (s) of `count` timed calls of the worker's benchmark `name`."""
    self.proc.stdin.write(json.dumps({"run": name, "count": count}) + "\n")
    self.proc.stdin.flush()
    return self.receive()["times"]

  def close(self) -> None:
    """Asks the worker to quit (kills it if it does not within a minute) and removes its log."""
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.proc.kill()
    os.unlink(self.log.name)


def schedule(names: list[str], rounds: int) -> list[list[str]]:
  """Per round, the order to run the benchmarks in: forward on even rounds, reversed on odd ones."""
  return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]


def alternate(names: list[str], rounds: int, run: Callable[[str], list[float]]) -> dict[str, list[float]]:
  """{name: every duration} from `rounds` rounds of `run(name)` (one worker request each) in `schedule` order."""
  times = {name: [] for name in names}
  for order in schedule(names, rounds):
    for name in order:
      times[name] += run(name)
  return times
