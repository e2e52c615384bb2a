r"""Our Pipeline against diffusers' WanPipeline on the same Wan 2.1 folder: seconds per video, side by side.

  python tools/benchmarks/vs_wan_pipeline.py --json                      # tiny random folder, CPU, batch 1 and 4
  python tools/benchmarks/vs_wan_pipeline.py --folder=/path/to/Wan2.1-T2V-1.3B-Diffusers --frames=81 \
      --height=480 --width=832 --batches=1 --steps=50 --device=gpu --json    # a real folder on a GPU (MFU)
  python tools/benchmarks/vs_wan_pipeline.py --preset=1.3b --device=gpu --json   # random 1.3B-shaped DiT, 480p

Both sides load the SAME folder (a tiny random one built with diffusers' own classes by
tests/wan_peers.py unless --folder is given; --preset=1.3b builds a random one with the 1.3B
transformer, Wan's VAE and a one-layer 4096-wide umT5), run the folder's UniPC scheduler for
--steps steps with classifier-free guidance (the empty negative prompt) from the same initial
latents, for each batch size in --batches, and decode with the VAE (output_type "np" / "float").
What is timed: the whole call (text encoding, the sampling loop, VAE decode), after a warm-up
call (our compile; torch's first-call allocations). Ours in float32 or --dtype; theirs in float32
on CPU, bfloat16 on GPU (--torch_dtype). Our sampling options (--ours_cache, --ours_cfg_window)
are off by default, so both do the same work.

Fair timing on a shared machine: each side is a long-lived worker process; this process asks
them in turn for --round_calls timed calls, alternating the order every round (as vs_diffusers.py).
Reported per batch: median seconds per call and per video, ours / theirs speedup, and on GPU the
DiT's MFU (model FLOPs of the transformer calls: models/counting.py, 2 x the guided batch per step,
/ time / the chip's dense bf16 peak from tools/benchmark.py's table). Every result carries the
hardware record (CPU model and flags, load, device kind).
"""

import json
import os
import sys
import tempfile

from absl import app, flags

from sora_jax.monitoring import side_by_side

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PROTOCOL = "@@wanbench "
PROMPT = "a red circle moving left"
PRESETS = ("tiny", "1.3b")
# The sizes of Wan 2.1 T2V 1.3B's transformer (diffusers config), for --preset=1.3b; the rest of the
# architecture (patch, freq_dim, norms, eps) is the tiny one's in tests/wan_peers.py.
WAN_13B_SIZES = dict(
  num_attention_heads=12,
  attention_head_dim=128,
  in_channels=16,
  out_channels=16,
  text_dim=4096,
  ffn_dim=8960,
  num_layers=30,
  rope_max_seq_len=1024,
)


def define_flags() -> None:
  flags.DEFINE_string("folder", "", "A diffusers Wan 2.1 T2V folder; empty = build a random one (--preset).")
  flags.DEFINE_enum("preset", "tiny", list(PRESETS), "Random folder to build when --folder is empty.")
  flags.DEFINE_list("batches", ["1", "4"], "Prompt batch sizes to compare.")
  flags.DEFINE_integer("steps", 10, "UniPC steps (both sides).")
  flags.DEFINE_float("guidance_scale", 5.0, "CFG scale (both sides).")
  flags.DEFINE_integer("frames", 5, "Frames per video (1+4k).")
  flags.DEFINE_integer("height", 32, "Pixels.")
  flags.DEFINE_integer("width", 32, "Pixels.")
  flags.DEFINE_integer("rounds", 4, "Alternating rounds.")
  flags.DEFINE_integer("round_calls", 1, "Timed calls per side per batch per round.")
  flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "Where both sides run.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "auto"], "Our weights/compute dtype.")
  flags.DEFINE_enum("torch_dtype", "", ["", "float32", "bfloat16"], "Theirs; empty = float32 on CPU, bf16 on GPU.")
  flags.DEFINE_float("ours_cache", 0.0, "Our block-cache threshold (0 = off, the same work as theirs).")
  flags.DEFINE_list("ours_cfg_window", [], "Our CFG window lo,hi (empty = guidance at every step, as theirs).")
  flags.DEFINE_integer("threads", 0, "torch threads (0 = all usable CPUs).")
  flags.DEFINE_bool("json", False, "Print one JSON object.")
  flags.DEFINE_enum("worker", "", ["", "ours", "theirs"], "Internal: run as a worker.")
  flags.DEFINE_string("spec", "", "Internal: the worker's JSON settings.")


def build_folder(path: str, preset: str) -> str:
  """A random Wan 2.1 folder saved by WanPipeline.save_pretrained (tests/wan_peers.py's builder)."""
  sys.path.insert(0, os.path.join(_REPO, "tests"))
  import wan_peers

  if preset == "tiny":
    wan_peers.save_wan_folder(path, flow_shift=3.0)
    return path
  # 1.3B-shaped transformer; Wan's VAE at its real widths; a one-layer umT5 of the 1.3B's text width.
  import torch
  from diffusers import AutoencoderKLWan, WanTransformer3DModel
  from transformers import UMT5Config, UMT5EncoderModel

  torch.manual_seed(0)
  umt5 = dict(wan_peers.UMT5, d_model=4096, d_kv=64, num_heads=64, d_ff=256, num_layers=1)
  text_encoder = UMT5EncoderModel(UMT5Config(**umt5)).eval()
  vae = AutoencoderKLWan().eval()
  transformer = WanTransformer3DModel(**dict(wan_peers.TRANSFORMER, **WAN_13B_SIZES)).eval()
  wan_peers.save_wan_folder(path, flow_shift=3.0, text_encoder=text_encoder, vae=vae, transformer=transformer)
  return path


def latent_shape(spec: dict) -> tuple:
  """[T', H', W', C] of the folder's VAE (4x time, 8x space) at the benchmark size."""
  with open(os.path.join(spec["folder"], "transformer", "config.json")) as f:
    channels = json.load(f)["in_channels"]
  return (1 + (spec["frames"] - 1) // 4, spec["height"] // 8, spec["width"] // 8, channels)


def _noise(spec: dict, batch: int):
  import numpy as np

  return np.random.default_rng(0).standard_normal((batch, *latent_shape(spec))).astype(np.float32)


def ours_worker(spec: dict) -> tuple[dict, dict]:
  import jax

  from sora_jax import Pipeline

  dtype = None if spec["dtype"] == "float32" else spec["dtype"]
  pipe = Pipeline.from_pretrained(spec["folder"], dtype=dtype)
  cache = {"threshold": spec["ours_cache"]}
  window = tuple(float(v) for v in spec["ours_cfg_window"]) or ()
  calls, info = {}, {"jax_version": jax.__version__, "device_kind": jax.devices()[0].device_kind}
  for batch in spec["batches"]:
    noise = _noise(spec, batch)
    kwargs = dict(
      num_frames=spec["frames"],
      height=spec["height"],
      width=spec["width"],
      num_steps=spec["steps"],
      guidance_scale=spec["guidance_scale"],
      latents=noise,
      output_type="float",
      cache=cache,
      cfg_window=window,
    )
    calls[f"ours_b{batch}"] = lambda kwargs=kwargs, batch=batch: pipe([PROMPT] * batch, **kwargs)
  info["stats"] = {}
  return calls, info | {"pipe_stats": lambda: dict(pipe.last_stats)}


def theirs_worker(spec: dict) -> tuple[dict, dict]:
  import diffusers
  import torch

  sys.path.insert(0, os.path.join(_REPO, "tests"))
  import wan_peers

  torch.set_num_threads(spec["threads"])
  gpu = spec["device"] == "gpu"
  dtype = getattr(torch, spec["torch_dtype"] or ("bfloat16" if gpu else "float32"))
  pipe = diffusers.WanPipeline.from_pretrained(spec["folder"], torch_dtype=dtype)
  if gpu:
    pipe = pipe.to("cuda")
  calls = {}
  for batch in spec["batches"]:
    latents = wan_peers.to_torch(_noise(spec, batch)).to(pipe.device, dtype)

    def call(batch=batch, latents=latents):
      with torch.no_grad():
        out = pipe(
          prompt=[PROMPT] * batch,
          negative_prompt="",
          num_inference_steps=spec["steps"],
          guidance_scale=spec["guidance_scale"],
          latents=latents,
          num_frames=spec["frames"],
          height=spec["height"],
          width=spec["width"],
          output_type="np",
        ).frames
      if gpu:
        torch.cuda.synchronize()
      return out

    calls[f"theirs_b{batch}"] = call
  return calls, {"torch_version": torch.__version__, "diffusers_version": diffusers.__version__, "dtype": str(dtype)}


def serve(kind: str, spec: dict) -> None:
  """Worker: build the calls, warm each up once, then answer the parent's requests (`side_by_side.serve`)."""
  import numpy as np

  calls, info = (ours_worker if kind == "ours" else theirs_worker)(spec)
  stats = info.pop("pipe_stats", None)
  for call in calls.values():  # warm-up: compile / first allocations
    np.asarray(call())
  if stats is not None:
    info["stats"] = stats()
  side_by_side.serve(_PROTOCOL, calls, info, wait=np.asarray)


def start_worker(kind: str, spec: dict) -> side_by_side.Worker:
  env = side_by_side.worker_env()
  if spec["device"] == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
  return side_by_side.Worker(__file__, kind, spec, prefix=_PROTOCOL, env=env, cwd=_REPO)


def dit_flops_per_call(spec: dict, batch: int) -> float:
  """Model FLOPs of the transformer calls of one pipeline call: steps x (cond + uncond) x batch forwards."""
  from sora_jax.models import counting
  from sora_jax.models.wan.transformer import WanTransformer

  with open(os.path.join(spec["folder"], "transformer", "config.json")) as f:
    model = WanTransformer.from_diffusers_config(json.load(f))
  shape = latent_shape(spec)
  flops = counting.count_flops(model, shape[:3], text_length=512)["forward_flops"]
  return spec["steps"] * 2 * batch * flops


def compare(spec: dict, times: dict, peak_tflops: float | None) -> dict:
  import numpy as np

  out = {"batches": {}}
  for batch in spec["batches"]:
    ours, theirs = (float(np.median(times[f"{side}_b{batch}"])) for side in ("ours", "theirs"))
    row = {
      "ours_s": ours,
      "theirs_s": theirs,
      "ours_s_per_video": ours / batch,
      "theirs_s_per_video": theirs / batch,
      "speedup": theirs / ours,
    }
    if peak_tflops:
      flops = dit_flops_per_call(spec, batch)
      row["ours_dit_mfu"] = flops / ours / (peak_tflops * 1e12)
      row["theirs_dit_mfu"] = flops / theirs / (peak_tflops * 1e12)
    out["batches"][str(batch)] = row
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.worker:
    serve(f.worker, json.loads(f.spec))
    return
  from sora_jax import hardware

  batches = [int(b) for b in f.batches]
  if not batches or min(batches) < 1:
    raise app.UsageError(f"--batches must be positive integers, got {f.batches}")
  if (f.frames - 1) % 4 or f.height % 16 or f.width % 16:
    raise app.UsageError("--frames must be 1+4k and --height/--width multiples of 16 (VAE 8x, patch 2)")
  record = hardware.record(with_jax=False)
  workdir = None
  folder = f.folder
  if not folder:
    workdir = tempfile.mkdtemp(prefix="vs_wan_folder_")
    folder = build_folder(workdir, f.preset)
  spec = {
    "folder": folder,
    "batches": batches,
    "steps": f.steps,
    "guidance_scale": f.guidance_scale,
    "frames": f.frames,
    "height": f.height,
    "width": f.width,
    "device": f.device,
    "dtype": f.dtype,
    "torch_dtype": f.torch_dtype,
    "ours_cache": f.ours_cache,
    "ours_cfg_window": list(f.ours_cfg_window),
    "threads": f.threads or len(os.sched_getaffinity(0)),
  }
  workers = {kind: start_worker(kind, spec) for kind in ("ours", "theirs")}
  try:
    ready = {kind: w.receive() for kind, w in workers.items()}
    names = [f"{side}_b{b}" for b in batches for side in ("ours", "theirs")]
    times = side_by_side.alternate(names, f.rounds, lambda name: workers[name.split("_")[0]].run(name, f.round_calls))
  finally:
    for w in workers.values():
      w.close()
  peak = None
  if f.device == "gpu":
    import importlib.util

    bench_spec = importlib.util.spec_from_file_location("benchmark_tool", os.path.join(_REPO, "tools/benchmark.py"))
    bench = importlib.util.module_from_spec(bench_spec)
    bench_spec.loader.exec_module(bench)
    found = bench.lookup_peak_tflops(ready["ours"]["info"]["device_kind"])
    peak = found[1] if found else None
  result = compare(spec, times, peak)
  result.update(
    spec={k: v for k, v in spec.items() if k != "folder"},
    folder=f.folder or f"random ({f.preset}, tests/wan_peers.py)",
    times_s=times,
    info={kind: msg["info"] for kind, msg in ready.items()},
    hardware=record,
    load_1min_end=hardware.load_average()["1min"],
    peak_tflops=peak,
  )
  if workdir:
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
  if f.json:
    print(json.dumps(result, default=str))
  else:
    print(hardware.describe(record))
    for batch, row in result["batches"].items():
      print(
        f"batch {batch}: ours {row['ours_s_per_video']:.3f} s/video, theirs {row['theirs_s_per_video']:.3f} "
        f"s/video, speedup {row['speedup']:.2f}x"
      )


if __name__ == "__main__":
  define_flags()
  app.run(main)
