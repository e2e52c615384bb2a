r"""Where a train step's time goes: per-op times from a jax.profiler trace, grouped by kind.

  python tools/benchmarks/profile_step.py --config=configs/dit/video.py:wan-small --steps=3 --json
  python tools/benchmarks/profile_step.py --config=configs/dit/video.py:wan-small \
      --config.dit.fused_ops=False --config.train.fused_optimizer=False          # "before"

Compiles the real DiT train step (as tools/benchmark.py --what=train, batch 2, 13 frames at
128x128: the Wan-like shape of vs_diffusers.py), runs --steps steps inside
`jax.profiler.trace(..., create_perfetto_trace=True)`, reads the Perfetto JSON it writes and sums
the duration of every XLA op event by name. Each op is classed from the optimised HLO: "matmul"
(a fusion or op containing dot/convolution, or a library call), "optimizer" (ops of the
apply_gradients part: names under the optimizer's scope), "reduce" (fusions with a reduce),
"elementwise" (other fusions), "copy/transpose", "other". Prints the top ops and the totals per
class, as a share of the traced op time; the shares, unlike absolute times, survive a busy machine.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "DiT config (e.g. configs/dit/video.py:wan-small).")
flags.DEFINE_integer("steps", 3, "Traced steps (after 2 warm-up steps).")
flags.DEFINE_integer("batch", 2, "Batch size.")
flags.DEFINE_integer("frames", 13, "Pixel frames.")
flags.DEFINE_integer("size", 128, "Pixel height = width.")
flags.DEFINE_integer("top", 15, "Ops to list.")
flags.DEFINE_bool("json", False, "Print one JSON object.")
flags.mark_flag_as_required("config")


def classify(hlo_text: str) -> dict[str, str]:
  """op / fusion name -> kind, from the optimised HLO text (fused computations looked into)."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if m and "=" not in line.split("{")[0]:
      current = m.group(1)
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  kinds = {}
  for lines in bodies.values():
    for line in lines:
      m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(", line)
      if not m:
        continue
      name, op = m.groups()
      called = re.search(r"calls=%?([\w.\-]+)", line)
      body = "\n".join(bodies.get(called.group(1), [])) if called else ""
      text = line + body
      if re.search(r"\b(dot|convolution)\(", text) or "custom-call" in op or "__onednn" in text or "xnn" in text:
        kind = "matmul"
      elif op in ("copy", "transpose") or (
        op == "fusion" and re.search(r"\btranspose\(", body) and "reduce(" not in body
      ):
        kind = "copy/transpose"
      elif re.search(r"\breduce\(", text):
        kind = "reduce"
      elif op == "fusion" or op in ("add", "multiply", "subtract", "divide", "exponential", "tanh"):
        kind = "elementwise"
      else:
        kind = "other"
      kinds[name] = kind
  return kinds


def main(argv):
  del argv
  import jax

  from sora_jax import hardware
  from sora_jax.sharding import mesh as mesh_lib
  from sora_jax.sharding import partitioning
  from sora_jax.training import memory

  f = flags.FLAGS
  config = f.config
  config.mesh.shape = (1, 1, 1, 1)
  config.data.batch_size = f.batch
  setup = memory.build_dit_train_setup(config, frames=f.frames, height=f.size, width=f.size)
  mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
  compiled, _ = memory.compile_train_step(setup, config, mesh)
  kinds = classify(compiled.as_text())
  state, _ = partitioning.init_sharded_state(setup.init_fn, mesh, partitioning.logical_rules(config), jax.random.key(0))
  batch = partitioning.shard_batch(setup.synthetic_batch(0), mesh)
  rng = jax.random.key(1)
  for _ in range(2):
    state, metrics = compiled(state, batch, rng)
  metrics["loss"].block_until_ready()
  trace_dir = tempfile.mkdtemp(prefix="profile_step_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(f.steps):
      state, metrics = compiled(state, batch, rng)
    metrics["loss"].block_until_ready()
  paths = glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True)
  if not paths:
    raise RuntimeError(f"no Perfetto trace under {trace_dir}")
  with gzip.open(paths[0], "rt") as fh:
    events = json.load(fh)
  events = events.get("traceEvents", events) if isinstance(events, dict) else events
  per_op = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") == "X" and name in kinds:
      per_op[name] += float(e.get("dur", 0.0)) / 1e6 / f.steps
  total = sum(per_op.values()) or 1.0
  per_kind = collections.Counter()
  for name, seconds in per_op.items():
    per_kind[kinds[name]] += seconds
  result = {
    "op_seconds_per_step": total,
    "by_kind": {k: {"s": v, "share": v / total} for k, v in per_kind.most_common()},
    "top_ops": [{"op": n, "kind": kinds[n], "s": s, "share": s / total} for n, s in per_op.most_common(f.top)],
    "ops_in_hlo": len(kinds),
    "dit_dtype": config.dit.dtype,
    "fused_ops": config.dit.get("fused_ops"),
    "fused_optimizer": config.train.get("fused_optimizer"),
    "hardware": hardware.record(),
    "trace_dir": trace_dir,
  }
  if f.json:
    print(json.dumps(result))
    return
  print(hardware.describe(result["hardware"]))
  print(f"traced op time per step: {total:.3f} s")
  for kind, v in result["by_kind"].items():
    print(f"  {kind:<16s} {v['s']:.3f} s  {100 * v['share']:5.1f} %")
  for row in result["top_ops"]:
    print(f"  {row['op']:<40s} {row['kind']:<14s} {row['s'] * 1e3:8.2f} ms {100 * row['share']:5.1f} %")


if __name__ == "__main__":
  app.run(main)
