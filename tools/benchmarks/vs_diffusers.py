r"""Our DiT train step and VAE against diffusers' Wan 2.1 models, side by side on this machine.

  python tools/benchmarks/vs_diffusers.py --json --steps=12
  python tools/benchmarks/vs_diffusers.py --json --steps=12 --cpus=0     # one core each: robust on a busy machine
  python tools/benchmarks/vs_diffusers.py --ours=dit.dtype=bfloat16 --ours=dit.dtype=float32 \
      --ours="dit.attention_impl=chunked;dit.query_chunk_size=128" --peers=eager --skip_vae   # a settings sweep

Needs the [peers] extra (pip install torch==2.13.0 diffusers). The shape is the Wan-like one
of issue 6: 8 layers, 6 heads x 64, FFN 1536, text width 384, latent [B, C, T, H, W] =
[2, 16, 4, 16, 16] (ours: [2, 4, 16, 16, 16]), patch (1, 2, 2) -> 256 tokens per example, text [2, 32, 384].

A train step is forward + flow-matching velocity MSE + backward + AdamW on both sides:
ours is the real `sora_jax.training.dit_step` step (variant "wan-small", no EMA, no
clipping, CFG dropout on) jitted on one device, in each of the `--ours` settings (default:
`default_ours_settings()`: the dtype that is fast on this CPU with unrolled layers first);
diffusers' is `WanTransformer3DModel` in eager float32, and under `torch.compile` with
bfloat16 autocast. The VAE comparison is
encode (posterior mean) + decode of a [1, 9, 32, 32, 3] clip by our causal VAE and by
`AutoencoderKLWan` at the same widths (base 32, multipliers 1,2,4,4, two residual blocks
per level, 4x8x8 compression, 16 latent channels, middle attention), both without gradients.

Fair timing on a shared machine: ours and diffusers run in two long-lived worker processes
(each compiles and warms up once); this process asks them in turn for a few timed steps at a
time, alternating the order every round, so machine noise falls on both alike. Only one
worker computes at a time and each may use every core (torch threads = --threads), or only
the cores in --cpus. On a machine shared with other jobs prefer --cpus=0: torch's OpenMP
threads stall badly when a core is taken away (we saw diffusers eager at 7 s instead of
~1 s with two threads under a load of 10), which would flatter us.
Reported: the median of every benchmark over all rounds, and the ratios. --json prints one
object with at least ours_train_s, diffusers_eager_train_s, diffusers_compiled_train_s,
speedup_vs_eager, speedup_vs_compiled.
"""

import json
import os
import sys
import time

from absl import app, flags

from sora_jax.monitoring import side_by_side
from sora_jax.monitoring.side_by_side import schedule  # noqa: F401 - part of this tool's interface (tests)

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The Wan-like shape of the comparison (issue 6).
SHAPE = {
  "batch": 2,
  "latent_frames": 4,
  "latent_size": 16,
  "channels": 16,
  "layers": 8,
  "heads": 6,
  "head_dim": 64,
  "ffn": 1536,
  "text_dim": 384,
  "text_length": 32,
  "patch": (1, 2, 2),
}
# The matched small VAE setting: widths, compression and the clip.
VAE_SHAPE = {
  "base": 32,
  "multipliers": (1, 2, 4, 4),
  "res_blocks": 2,
  "latent_channels": 16,
  "batch": 1,
  "frames": 9,
  "size": 32,
}
PEERS = ("eager", "compiled")
_PROTOCOL = "@@bench "  # prefix of the worker lines this process reads (everything else is logging)


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so tests can import this module)."""
  flags.DEFINE_integer("steps", 12, "Timed steps per benchmark, in rounds of --round_steps.")
  flags.DEFINE_integer("round_steps", 2, "Timed steps per benchmark per round before switching.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps per benchmark after compiling.")
  flags.DEFINE_integer("threads", 0, "torch intra-op threads (0 = the number of CPUs the workers may use).")
  flags.DEFINE_list(
    "cpus",
    [],
    "Pin both workers to these CPU ids (e.g. --cpus=0 for a single-core comparison, "
    "which a busy machine disturbs less); empty = all CPUs.",
  )
  flags.DEFINE_multi_string(
    "ours",
    None,
    "Settings of our DiT as ';'-separated config overrides; repeat the flag to compare several "
    "(all alternated in one run). The first is the headline 'ours_train_s'. Default: "
    "default_ours_settings() (float32 and bfloat16, the faster dtype for this CPU first).",
  )
  flags.DEFINE_list("peers", list(PEERS), f"diffusers variants to run: any of {', '.join(PEERS)} (empty = none).")
  flags.DEFINE_enum("vae_dtype", "float32", ["float32", "bfloat16"], "Compute dtype of our VAE.")
  flags.DEFINE_bool("skip_vae", False, "Only the DiT train step.")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  flags.DEFINE_multi_string(
    "xla_flags",
    None,
    "XLA flag sets to compare (repeat the flag; e.g. --xla_flags= --xla_flags=--xla_cpu_use_onednn=true): "
    "one of our workers per set, alternated like everything else; results named '<benchmark>@xla<j>'.",
  )
  flags.DEFINE_enum("worker", "", ["", "ours", "diffusers"], "Internal: run as a worker process.")
  flags.DEFINE_string("spec", "", "Internal: the worker's JSON settings.")


# ------------------------------------------------------------------------------------------ our side


def parse_settings(text: str) -> list[str]:
  """'dit.dtype=bfloat16;dit.scan_layers=False' -> ['dit.dtype=bfloat16', 'dit.scan_layers=False']."""
  items = [s.strip() for s in text.split(";") if s.strip()]
  bad = [s for s in items if "=" not in s]
  if bad:
    raise ValueError(f"--ours settings must be key=value pairs separated by ';', got {bad} in {text!r}")
  return items


def default_ours_settings() -> list[str]:
  """Our settings to compare, the one expected to be fastest on this CPU first (the headline).

  bfloat16 compute (f32 accumulation) only where this CPU has native bf16 dot products
  (AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo by `sora_jax.hardware`: what
  dit.dtype="auto" picks); without them XLA emulates bf16 dots and float32 is faster. Unrolled
  layers (scan_layers=False) measured ~15 % faster than nn.scan on CPU (no per-layer slicing of
  stacked params and stacking of residuals); the scanned variant is kept for reference.
  """
  from sora_jax import hardware

  fast = hardware.auto_compute_dtype(backend="cpu")
  slow = "float32" if fast == "bfloat16" else "bfloat16"
  return [
    f"dit.dtype={fast};dit.scan_layers=False",
    f"dit.dtype={fast};dit.scan_layers=True",
    f"dit.dtype={slow};dit.scan_layers=False",
  ]


def ours_config(settings: list[str]):
  """configs/dit/video.py:wan-small at the comparison's text length, without EMA and clipping, + settings."""
  from sora_jax.configuration import load_config

  base = [
    f"text.max_length={SHAPE['text_length']}",
    "train.ema_decay=0.0",
    "train.grad_clip=0.0",
    "train.warmup_steps=0",
    "mesh.shape=(1, 1, 1, 1)",
    f"data.batch_size={SHAPE['batch']}",
  ]
  return load_config(os.path.join(_REPO, "configs/dit/video.py") + ":wan-small", base + settings)


def _our_vae_config(dtype: str):
  from sora_jax.configuration import load_config

  return load_config(
    os.path.join(_REPO, "configs/dit/video.py") + ":wan-small",
    [
      "vae.temporal_factor=4",
      "vae.spatial_factor=8",
      "vae.patch_size=(1, 1, 1)",
      f"vae.latent_channels={VAE_SHAPE['latent_channels']}",
      f"vae.base_channels={VAE_SHAPE['base']}",
      f"vae.channel_multipliers={tuple(VAE_SHAPE['multipliers'])}",
      f"vae.num_res_blocks={VAE_SHAPE['res_blocks']}",
      "vae.mid_attention=True",
      f"vae.dtype={dtype}",
      "vae.encode_chunk_frames=0",
      "vae.tile_size=0",
    ],
  )


def ours_benchmarks(spec: dict) -> tuple[dict, dict]:
  """({name: step() -> result to block on}, info) for our DiT settings and VAE, compiled and ready."""
  import flax.linen as nn
  import jax

  from sora_jax import hardware
  from sora_jax.models import counting
  from sora_jax.models import vae as vae_lib
  from sora_jax.sharding import mesh as mesh_lib
  from sora_jax.sharding import partitioning
  from sora_jax.training import memory

  frames = 1 + 4 * (SHAPE["latent_frames"] - 1)
  size = 8 * SHAPE["latent_size"]
  benches, info = {}, {"jax_version": jax.__version__, "devices": jax.device_count()}
  info["auto_dtype"] = hardware.auto_compute_dtype()
  for index, text in enumerate(spec["ours"]):
    config = ours_config(parse_settings(text))
    setup = memory.build_dit_train_setup(config, frames=frames, height=size, width=size)
    mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
    rules = partitioning.logical_rules(config)
    start = time.perf_counter()
    compiled, _ = memory.compile_train_step(setup, config, mesh)
    compile_s = time.perf_counter() - start
    state, _ = partitioning.init_sharded_state(setup.init_fn, mesh, rules, jax.random.key(0))
    batch = partitioning.shard_batch(setup.synthetic_batch(0), mesh)
    holder = {"state": state, "rng": jax.random.key(1)}

    def step(compiled=compiled, holder=holder, batch=batch):
      holder["rng"], rng = jax.random.split(holder["rng"])
      holder["state"], metrics = compiled(holder["state"], batch, rng)
      return metrics["loss"]

    name = f"ours_train[{index}]"
    benches[name] = step
    info[name] = {
      "settings": text,
      "compile_s": compile_s,
      "tokens": setup.num_tokens,
      "latent_shape": list(setup.latent_shape),
      "params": counting.count_params(setup.dit)["total"],
    }
  if not spec["skip_vae"]:
    config = _our_vae_config(spec["vae_dtype"])
    module = vae_lib.CausalVAE(config.vae)
    video = jax.random.uniform(
      jax.random.key(0),
      (VAE_SHAPE["batch"], VAE_SHAPE["frames"], VAE_SHAPE["size"], VAE_SHAPE["size"], 3),
      minval=-1.0,
      maxval=1.0,
    )
    params = jax.jit(lambda r: nn.meta.unbox(module.init({"params": r}, video, sample=False)["params"]))(
      jax.random.key(1)
    )

    def roundtrip(p, v):
      return vae_lib.decode_latents(module, p, vae_lib.encode_video(module, p, v)[0])

    start = time.perf_counter()
    compiled_vae = jax.jit(roundtrip).lower(params, video).compile()
    benches["ours_vae"] = lambda: compiled_vae(params, video)
    info["ours_vae"] = {
      "compile_s": time.perf_counter() - start,
      "dtype": spec["vae_dtype"],
      "params": int(sum(x.size for x in jax.tree.leaves(params))),
    }
  return benches, info


# ------------------------------------------------------------------------------------------ diffusers' side


def diffusers_benchmarks(spec: dict) -> tuple[dict, dict]:
  """({name: step()}, info) for WanTransformer3DModel (eager / compiled+bf16) and AutoencoderKLWan."""
  import copy

  import diffusers
  import torch
  import torch.nn.functional as F

  torch.set_num_threads(spec["threads"])
  torch.manual_seed(0)
  s = SHAPE
  model = diffusers.WanTransformer3DModel(
    patch_size=s["patch"],
    num_attention_heads=s["heads"],
    attention_head_dim=s["head_dim"],
    in_channels=s["channels"],
    out_channels=s["channels"],
    text_dim=s["text_dim"],
    freq_dim=256,
    ffn_dim=s["ffn"],
    num_layers=s["layers"],
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
  )
  x0 = torch.randn(s["batch"], s["channels"], s["latent_frames"], s["latent_size"], s["latent_size"])
  text = torch.randn(s["batch"], s["text_length"], s["text_dim"])
  info = {
    "torch_version": torch.__version__,
    "diffusers_version": diffusers.__version__,
    "threads": torch.get_num_threads(),
    "params": sum(p.numel() for p in model.parameters()),
  }

  def make_step(net, autocast: bool):
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step():
      noise = torch.randn_like(x0)
      t = torch.sigmoid(torch.randn(s["batch"]))
      x_t = (1 - t).view(-1, 1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1, 1) * noise
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        pred = net(x_t, t * 1000.0, text, return_dict=False)[0]
      loss = F.mse_loss(pred.float(), noise - x0)
      loss.backward()
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)
      return loss.detach()

    return step

  benches = {}
  if "eager" in spec["peers"]:
    benches["diffusers_eager_train"] = make_step(model, autocast=False)
  if "compiled" in spec["peers"]:
    compiled_model = torch.compile(copy.deepcopy(model))
    benches["diffusers_compiled_train"] = make_step(compiled_model, autocast=True)
  if not spec["skip_vae"]:
    v = VAE_SHAPE
    vae = diffusers.AutoencoderKLWan(
      base_dim=v["base"],
      z_dim=v["latent_channels"],
      dim_mult=list(v["multipliers"]),
      num_res_blocks=v["res_blocks"],
      attn_scales=[],
      temperal_downsample=[False, True, True],
    ).eval()
    video = torch.rand(v["batch"], 3, v["frames"], v["size"], v["size"]) * 2 - 1

    def vae_step():
      with torch.no_grad():
        z = vae.encode(video).latent_dist.mean
        return vae.decode(z).sample

    benches["diffusers_vae"] = vae_step
    info["diffusers_vae"] = {"params": sum(p.numel() for p in vae.parameters())}
  return benches, info


WORKERS = {"ours": ours_benchmarks, "diffusers": diffusers_benchmarks}


def _block(result) -> None:
  """Waits for a step's result (a jax.Array or a torch tensor)."""
  if hasattr(result, "block_until_ready"):
    result.block_until_ready()
  elif hasattr(result, "item") and getattr(result, "ndim", 1) == 0:
    result.item()


def serve(kind: str, spec: dict) -> None:
  """Worker: build and warm up every benchmark, then answer the parent's requests (`side_by_side.serve`)."""
  if spec.get("cpus"):
    os.sched_setaffinity(0, set(spec["cpus"]))  # before JAX / torch start their thread pools
  start = time.perf_counter()
  benches, info = WORKERS[kind](spec)
  info["cpus"] = sorted(os.sched_getaffinity(0))
  for step in benches.values():
    for _ in range(spec["warmup"]):
      _block(step())
  info["setup_s"] = time.perf_counter() - start
  side_by_side.serve(_PROTOCOL, benches, info, wait=_block)


# ------------------------------------------------------------------------------------------ the parent


def start_worker(kind: str, spec: dict, xla_flags: str | None = None) -> side_by_side.Worker:
  """A worker process of this script; `xla_flags` (--xla_flags): its own XLA flag set."""
  env = side_by_side.worker_env(xla_flags)
  env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
  return side_by_side.Worker(__file__, kind, spec, prefix=_PROTOCOL, env=env, cwd=_REPO)


def medians(times: dict[str, list[float]]) -> dict[str, float]:
  import numpy as np

  return {name: float(np.median(t)) for name, t in times.items() if t}


def compare(times: dict[str, list[float]], num_ours: int) -> dict:
  """The JSON result from all timings: medians, p10/p90, and the speed ratios of ours to diffusers'."""
  import numpy as np

  med = medians(times)
  out = {
    "medians_s": med,
    "p10_s": {k: float(np.percentile(v, 10)) for k, v in times.items() if v},
    "p90_s": {k: float(np.percentile(v, 90)) for k, v in times.items() if v},
    "ours_train_s": med.get("ours_train[0]"),
    "ours_settings_train_s": [med.get(f"ours_train[{i}]") for i in range(num_ours)],
    "diffusers_eager_train_s": med.get("diffusers_eager_train"),
    "diffusers_compiled_train_s": med.get("diffusers_compiled_train"),
    "ours_vae_s": med.get("ours_vae"),
    "diffusers_vae_s": med.get("diffusers_vae"),
  }

  def ratio(slow, fast):
    return out[slow] / out[fast] if out.get(slow) and out.get(fast) else None

  out["speedup_vs_eager"] = ratio("diffusers_eager_train_s", "ours_train_s")
  out["speedup_vs_compiled"] = ratio("diffusers_compiled_train_s", "ours_train_s")
  out["vae_speedup"] = ratio("diffusers_vae_s", "ours_vae_s")
  return out


def run_comparison(spec: dict, steps: int, round_steps: int) -> dict:
  """Starts both workers, alternates timed rounds, returns the `compare` result plus worker info."""
  from sora_jax import hardware

  load_start = os.getloadavg()[0]
  flag_sets = spec.get("xla_flag_sets") or []
  workers = {}
  if flag_sets:  # one "ours" worker per XLA flag set; its benchmarks are named "<name>@xla<j>"
    for j, flag_set in enumerate(flag_sets):
      workers[f"ours@xla{j}"] = start_worker("ours", spec, xla_flags=flag_set)
  else:
    workers["ours"] = start_worker("ours", spec)
  if spec["peers"] or not spec["skip_vae"]:
    workers["diffusers"] = start_worker("diffusers", spec)
  try:
    ready = {key: w.receive() for key, w in workers.items()}
    owner = {}  # benchmark name -> (worker key, the worker's own name for it)
    for key, msg in ready.items():
      for name in msg["ready"]:
        owner[name + key[4:] if key.startswith("ours@") else name] = (key, name)
    names = sorted(owner, key=lambda n: (not n.startswith("ours"), n))
    rounds = max(1, -(-steps // round_steps))
    times = side_by_side.alternate(names, rounds, lambda name: workers[owner[name][0]].run(owner[name][1], round_steps))
  finally:
    for w in workers.values():
      w.close()
  result = compare(times, len(spec["ours"]))
  cpus = len(spec["cpus"]) or os.cpu_count()
  result["machine"] = {
    "cpu_count": os.cpu_count(),
    "cpus_used": cpus,
    "loadavg_1min_start": load_start,
    "loadavg_1min_end": os.getloadavg()[0],
  }
  result["hardware"] = hardware.record(with_jax=False)  # CPU model, avx512_bf16 / amx_bf16, load, XLA_FLAGS
  if max(load_start, os.getloadavg()[0]) > 1.5 * os.cpu_count():
    print(
      f"warning: the machine was busy (1-min load {load_start:.1f} -> {os.getloadavg()[0]:.1f} on "
      f"{os.cpu_count()} CPUs); multi-threaded torch suffers most from that. Re-run on a quiet machine, "
      f"or with --cpus=0 for a single-core comparison.",
      file=sys.stderr,
    )
  result.update(
    shape=SHAPE,
    vae_shape=VAE_SHAPE,
    rounds=rounds,
    round_steps=round_steps,
    ours_settings=spec["ours"],
    xla_flag_sets=flag_sets,
    info={kind: msg["info"] for kind, msg in ready.items()},
    times_s=times,
  )
  return result


def _print_table(result: dict) -> None:
  from sora_jax import hardware

  print(f"machine: {hardware.describe(result['hardware'])} (at the end: {result['machine']['loadavg_1min_end']:.2f})")
  print(f"{'benchmark':<28s} {'median s':>9s} {'p10 s':>9s} {'p90 s':>9s}")
  for name, med in result["medians_s"].items():
    print(f"{name:<28s} {med:>9.4f} {result['p10_s'][name]:>9.4f} {result['p90_s'][name]:>9.4f}")
  for i, settings in enumerate(result["ours_settings"]):
    print(f"  ours_train[{i}] = {settings}")
  for key in ("speedup_vs_eager", "speedup_vs_compiled", "vae_speedup"):
    value = result[key]
    print(f"{key:<28s} {value:.2f}x" if value else f"{key:<28s} n/a")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.worker:
    serve(f.worker, json.loads(f.spec))
    return
  unknown = [p for p in f.peers if p not in PEERS]
  if unknown:
    raise app.UsageError(f"--peers: unknown {unknown}; choose from {', '.join(PEERS)}")
  ours = list(f.ours or default_ours_settings())
  for text in ours:
    parse_settings(text)
  if f.steps < 1 or f.round_steps < 1:
    raise app.UsageError("--steps and --round_steps must be >= 1")
  cpus = [int(c) for c in f.cpus]
  spec = {
    "ours": ours,
    "peers": list(f.peers),
    "skip_vae": f.skip_vae,
    "vae_dtype": f.vae_dtype,
    "warmup": f.warmup,
    "cpus": cpus,
    "threads": f.threads or len(cpus) or os.cpu_count(),
    "xla_flag_sets": list(f.xla_flags or []),
  }
  result = run_comparison(spec, f.steps, f.round_steps)
  if f.json:
    print(json.dumps(result))
  else:
    _print_table(result)


if __name__ == "__main__":
  define_flags()
  app.run(main)
