"""sora_jax/monitoring/side_by_side.py: the worker processes and alternated rounds of tools/benchmarks/vs_*.py.

Real subprocesses speaking the line protocol, with plain-Python calls (no JAX, no torch): seconds.
"""

import os
import textwrap

import pytest

from sora_jax.monitoring import side_by_side

PREFIX = "@@test "
WORKER = textwrap.dedent(
  """
  import json, sys, time
  from sora_jax.monitoring import side_by_side

  kind = sys.argv[1].split("=", 1)[1]
  spec = json.loads(sys.argv[2].split("=", 1)[1])
  if spec.get("crash"):
    print("the worker could not start", file=sys.stderr)
    sys.exit(3)
  print("a log line that is not the protocol's")
  calls = {f"{kind}_sleep": lambda: time.sleep(spec["sleep_s"]), f"{kind}_value": lambda: 7}
  side_by_side.serve(PREFIX, calls, {"kind": kind, "xla_flags": __import__("os").environ["XLA_FLAGS"]}, wait=repr)
  """
).replace("PREFIX", repr(PREFIX))


@pytest.fixture
def script(tmp_path):
  path = tmp_path / "worker.py"
  path.write_text(WORKER)
  return str(path)


def test_schedule_reverses_every_other_round_and_alternate_follows_it():
  assert side_by_side.schedule(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
  asked = []
  times = side_by_side.alternate(["a", "b"], 3, lambda name: asked.append(name) or [len(asked)])
  assert asked == ["a", "b", "b", "a", "a", "b"]
  assert times == {"a": [1, 4, 5], "b": [2, 3, 6]}


def test_worker_env_keeps_one_host_device_and_adds_the_flag_set(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_use_onednn=false")
  assert side_by_side.worker_env()["XLA_FLAGS"] == "--xla_cpu_use_onednn=false"
  assert side_by_side.worker_env("--xla_foo=1")["XLA_FLAGS"] == "--xla_cpu_use_onednn=false --xla_foo=1"


def test_workers_answer_timed_requests_in_turn_and_quit(script, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  spec = {"sleep_s": 0.02}
  workers = {
    kind: side_by_side.Worker(script, kind, spec, prefix=PREFIX, env=side_by_side.worker_env(), cwd=os.getcwd())
    for kind in ("ours", "theirs")
  }
  try:
    ready = {kind: w.receive() for kind, w in workers.items()}
    assert ready["ours"] == {"ready": ["ours_sleep", "ours_value"], "info": {"kind": "ours", "xla_flags": ""}}
    names = ["ours_sleep", "theirs_sleep"]
    times = side_by_side.alternate(names, 2, lambda name: workers[name.split("_")[0]].run(name, 3))
  finally:
    for w in workers.values():
      w.close()
  assert sorted(times) == names
  for durations in times.values():
    assert len(durations) == 6 and min(durations) >= 0.02  # each timed call sleeps 20 ms
  for w in workers.values():
    assert w.proc.poll() == 0 and not os.path.exists(w.log.name)


def test_a_worker_that_dies_is_an_error_with_its_log(script):
  worker = side_by_side.Worker(script, "ours", {"crash": True}, prefix=PREFIX, env=side_by_side.worker_env())
  try:
    with pytest.raises(RuntimeError, match=r"(?s)ours worker exited \(code 3\).*the worker could not start"):
      worker.receive()
  finally:
    worker.close()
