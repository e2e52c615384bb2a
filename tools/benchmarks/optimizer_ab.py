r"""A/B of the optimizer update alone: optax's clip + AdamW chain vs `fused_adamw`, on the real DiT param tree.

  python tools/benchmarks/optimizer_ab.py --json                       # wan-small (21M params), clip on
  python tools/benchmarks/optimizer_ab.py --variant=video-tiny --grad_clip=0 --ema

Times `apply_gradients` (update + apply_updates, optionally + EMA) jitted with the state donated,
as the train step runs it, alternating A and B in rounds so machine noise hits both alike. Also
counts the fusions and the bytes XLA's cost analysis says each version reads and writes.
Records the hardware (CPU model, avx512_bf16 / amx_bf16, load) with the numbers.
"""

import json
import time

from absl import app, flags

flags.DEFINE_string("variant", "wan-small", "DiT variant whose parameter tree is updated.")
flags.DEFINE_float("grad_clip", 1.0, "Global-norm clip (0 = off).")
flags.DEFINE_float("weight_decay", 0.0, "AdamW weight decay.")
flags.DEFINE_bool("ema", False, "Also update an EMA copy (as tools/train_dit.py does).")
flags.DEFINE_integer("rounds", 6, "Alternating rounds.")
flags.DEFINE_integer("round_steps", 5, "Timed updates per version per round.")
flags.DEFINE_bool("json", False, "Print one JSON object.")


def build(fused: bool):
  import jax
  import jax.numpy as jnp

  from configs import base
  from sora_jax.models import variants
  from sora_jax.models.dit import DiT
  from sora_jax.training import optimizer, train_state

  f = flags.FLAGS
  cfg = base.get_config()
  cfg.dit.variant = f.variant
  cfg.dit = variants.apply_variant(cfg.dit)
  cfg.train.update(grad_clip=f.grad_clip, weight_decay=f.weight_decay, fused_optimizer=fused, warmup_steps=10)
  dit = DiT.from_config(cfg.dit, in_channels=16, text_dim=384)
  x = jnp.zeros((1, 1, 4, 4, 16))
  cond = {"text": jnp.zeros((1, 4, 384)), "text_mask": jnp.ones((1, 4), bool), "pooled": jnp.zeros((1, 384))}
  shapes = jax.eval_shape(lambda r: dit.init(r, x, jnp.zeros((1,)), cond)["params"], jax.random.key(0))
  import flax.linen as nn

  shapes = nn.meta.unbox(shapes)
  leaves, tree = jax.tree.flatten(shapes)
  params = tree.unflatten([jnp.full(s.shape, 0.01, s.dtype) for s in leaves])
  grads = tree.unflatten([jnp.full(s.shape, 0.001 * (i + 1), s.dtype) for i, s in enumerate(leaves)])
  tx = optimizer.make_optimizer(cfg.train)
  state = train_state.create_train_state(params, tx, ema=f.ema)
  step = jax.jit(lambda s, g: s.apply_gradients(g, tx, 0.999), donate_argnums=0)
  compiled = step.lower(state, grads).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  hlo = compiled.as_text()
  info = {
    "params": int(sum(leaf.size for leaf in leaves)),
    "fusions": hlo.count(" fusion("),
    "bytes_accessed": float(cost.get("bytes accessed", 0.0)) if cost else None,
  }
  return compiled, state, grads, info


def main(argv):
  del argv
  import numpy as np

  from sora_jax import hardware

  f = flags.FLAGS
  rec_start = hardware.record()
  versions = {}
  for name, fused in (("optax", False), ("fused", True)):
    compiled, state, grads, info = build(fused)
    versions[name] = {"compiled": compiled, "state": state, "grads": grads, "info": info, "times": []}
  for v in versions.values():  # warm-up
    for _ in range(2):
      v["state"] = v["compiled"](v["state"], v["grads"])
    v["state"].step.block_until_ready()
  order = list(versions)
  for r in range(f.rounds):
    for name in order if r % 2 == 0 else order[::-1]:
      v = versions[name]
      for _ in range(f.round_steps):
        t0 = time.perf_counter()
        v["state"] = v["compiled"](v["state"], v["grads"])
        v["state"].step.block_until_ready()
        v["times"].append(time.perf_counter() - t0)
  result = {
    name: {"median_s": float(np.median(v["times"])), "p10_s": float(np.percentile(v["times"], 10)), **v["info"]}
    for name, v in versions.items()
  }
  result["speedup_fused"] = result["optax"]["median_s"] / result["fused"]["median_s"]
  result.update(
    variant=f.variant,
    grad_clip=f.grad_clip,
    ema=f.ema,
    hardware=rec_start,
    load_1min_end=hardware.load_average()["1min"],
  )
  if f.json:
    print(json.dumps(result))
  else:
    print(hardware.describe(rec_start))
    for name in versions:
      r = result[name]
      print(f"{name:<6s} {r['median_s'] * 1e3:8.2f} ms  fusions {r['fusions']}  bytes {r['bytes_accessed']:.3g}")
    print(f"fused speedup {result['speedup_fused']:.2f}x")


if __name__ == "__main__":
  app.run(main)
