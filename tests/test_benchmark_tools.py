"""tools/benchmark.py, tools/benchmarks/vs_diffusers.py and sora_jax/training/memory.py on tiny configs.

No timing assertions: what is checked is the arithmetic (MFU, peak table, ratios), the
command line and the JSON schema, and that the memory estimate accounts for sharding
and batch size.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import xla_flags

from sora_jax import hardware
from sora_jax.configuration import load_config
from sora_jax.training import memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "dit", "demo.py")
# A DiT / text encoder / VAE small enough to compile in seconds.
TINY = [
  "dit.variant=",
  "dit.depth=1",
  "dit.hidden_size=32",
  "dit.num_heads=2",
  "dit.mlp_dim=64",
  "text.width=32",
  "text.depth=1",
  "text.num_heads=2",
  "text.max_length=8",
  "vae.base_channels=8",
  "vae.channel_multipliers=(1, 1)",
  "vae.spatial_factor=2",
  "vae.patch_size=(1, 1, 1)",
  "vae.temporal_factor=2",
  "vae.num_res_blocks=1",
  "vae.mid_attention=False",
  "vae.latent_channels=4",
  "sample.num_steps=3",
]


def _load_tool(name, relative_path):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relative_path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bench():
  return _load_tool("benchmark_tool", "tools/benchmark.py")


@pytest.fixture(scope="module")
def vs():
  return _load_tool("vs_diffusers_tool", "tools/benchmarks/vs_diffusers.py")


def _tiny_config(*extra):
  return load_config(DEMO, TINY + list(extra))


# The memory tests compile several train steps: a frozen text encoder and no EMA make each cheaper.
LEAN = ("text.encoder=minilm", "train.ema_decay=0.0")


# ------------------------------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize(
  "kind, key, peak",
  [
    ("TPU v4", "TPU v4", 275.0),
    ("TPU v5 lite", "TPU v5 lite", 197.0),
    ("TPU v5", "TPU v5", 459.0),
    ("TPU v5p", "TPU v5p", 459.0),
    ("TPU v6 lite", "TPU v6 lite", 918.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA H100 80GB HBM3", "H100", 989.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H200", "H200", 989.0),
  ],
)
def test_peak_table_takes_the_longest_matching_key(bench, kind, key, peak):
  assert bench.lookup_peak_tflops(kind) == (key, peak)


def test_peak_table_unknown_device_is_none(bench):
  assert bench.lookup_peak_tflops("cpu") is None
  assert bench.lookup_peak_tflops("Some Future Chip") is None


def test_mfu_arithmetic(bench):
  # 2e12 FLOPs in 0.5 s = 4 TFLOP/s; against a 16 TFLOP/s peak that is 25 %.
  assert bench.achieved_tflops(2e12, 0.5) == pytest.approx(4.0)
  assert bench.mfu(2e12, 0.5, 16.0) == pytest.approx(0.25)
  with pytest.raises(ValueError, match="positive"):
    bench.mfu(2e12, 0.5, 0.0)
  with pytest.raises(ValueError, match="positive"):
    bench.achieved_tflops(1e12, 0.0)


def test_add_rates_leaves_mfu_empty_without_a_peak(bench):
  result = bench.add_rates({}, 1e12, 2.0, {"peak_tflops": None})
  assert result["achieved_tflops"] == pytest.approx(0.5)
  assert result["mfu"] is None
  result = bench.add_rates({}, 1e12, 2.0, {"peak_tflops": 1.0})
  assert result["mfu"] == pytest.approx(0.5)


def test_peak_info_scales_accelerator_peaks_by_device_count_not_cpu(bench):
  info = bench.peak_info(8, cpu_peak=0.25)
  assert info["platform"] == "cpu"
  assert info["peak_tflops"] == pytest.approx(0.25)  # virtual CPU devices share the cores
  assert bench.peak_info(4, peak_override=100.0)["peak_tflops"] == pytest.approx(400.0)


def test_summarize_percentiles(bench):
  stats = bench.summarize([float(x) for x in range(1, 12)])  # 1..11
  assert stats["median_s"] == pytest.approx(6.0)
  assert stats["p10_s"] == pytest.approx(2.0)
  assert stats["p90_s"] == pytest.approx(10.0)
  assert stats["min_s"] == 1.0
  with pytest.raises(ValueError):
    bench.summarize([])


# ------------------------------------------------------------------------------------------ tools/benchmark.py


def _check_common_schema(result, what, steps):
  for key in (
    "compile_s",
    "median_s",
    "p10_s",
    "p90_s",
    "tokens_per_s",
    "flops_per_step",
    "achieved_tflops",
    "mfu",
    "peak_tflops",
    "peak_source",
    "device_kind",
    "platform",
    "environment",
  ):
    assert key in result, key
  assert result["what"] == what and result["steps"] == steps
  assert result["p10_s"] <= result["median_s"] <= result["p90_s"]
  assert result["flops_per_step"] > 0 and result["tokens_per_s"] > 0
  assert result["achieved_tflops"] == pytest.approx(result["flops_per_step"] / result["median_s"] / 1e12)
  assert result["mfu"] == pytest.approx(result["achieved_tflops"] / result["peak_tflops"])
  assert result["environment"]["jax_version"]


def test_train_cli_prints_one_json_object():
  args = [
    sys.executable,
    os.path.join(REPO, "tools", "benchmark.py"),
    f"--config={DEMO}",
    "--what=train",
    "--steps=2",
    "--warmup=1",
    "--batch=4",
    "--frames=5",
    "--height=8",
    "--width=8",
    "--json",
    "--cpu_peak_tflops=0.5",
    "--config.mesh.shape=(2, 2, 1, 2)",
  ] + [f"--config.{o}" for o in TINY]
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
  proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  _check_common_schema(result, "train", 2)
  assert result["mesh_shape"] == [2, 2, 1, 2] and result["num_devices"] == 8
  assert result["peak_tflops"] == 0.5 and result["peak_source"] == "--cpu_peak_tflops"
  # latent 5x8x8 with 2x time/space compression -> (3, 4, 4, 4); patch (1, 2, 2) -> 3*2*2 tokens.
  assert result["latent_shape"] == [3, 4, 4, 4] and result["tokens"] == 12
  assert result["tokens_per_s"] == pytest.approx(4 * 12 / result["median_s"])
  assert result["config"].endswith("demo.py") and result["overrides"]["dit.depth"] == 1
  assert result["loss"] == result["loss"]  # finite, not NaN


def test_cli_rejects_an_unknown_benchmark():
  proc = subprocess.run(
    [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), f"--config={DEMO}", "--what=everything"],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "train" in proc.stderr and "sample" in proc.stderr


def test_sample_benchmark_reports_scan_overhead(bench):
  config = _tiny_config()
  result = bench.run(config, "sample", steps=1, warmup=0, batch=2, frames=5, height=8, width=8, cpu_peak_tflops=1.0)
  _check_common_schema(result, "sample", 1)
  assert result["cfg"] and result["examples_per_model_call"] == 4  # guidance_scale 4 -> 2B per call
  assert result["num_steps"] == 3 and result["model_calls_per_step"] == 1
  assert result["time_per_sampler_step_s"] == pytest.approx(result["median_s"] / 3)
  assert result["scan_overhead"] == pytest.approx(result["time_per_sampler_step_s"] / result["model_call_s"])
  assert result["flops_per_step"] == pytest.approx(result["forward_flops_per_example"] * 4 * 3)


def test_sample_benchmark_runs_the_ddpm_ancestral_sampler(bench):
  # A learn_sigma DiT (2C output channels) under CFG with the stochastic sampler: one model call a step. The demo
  # config trains with given frames, which needs flow matching (a clear error otherwise): text-to-video only here.
  no_frames = [f"train.conditioning.{k}=0.0" for k in ("first_frame", "first_k", "last_k", "first_last")]
  config = _tiny_config("diffusion.kind=ddpm", "dit.learn_sigma=True", "sample.sampler=ddpm", *no_frames)
  result = bench.run(config, "sample", steps=1, warmup=0, batch=2, frames=5, height=8, width=8, cpu_peak_tflops=1.0)
  _check_common_schema(result, "sample", 1)
  assert result["sampler"] == "ddpm" and result["model_calls_per_step"] == 1 and result["cfg"]
  assert result["time_per_sampler_step_s"] == pytest.approx(result["median_s"] / 3)


def test_vae_benchmark_counts_flops_from_xla(bench):
  config = _tiny_config()
  result = bench.run(config, "vae", steps=1, warmup=0, batch=1, frames=5, height=8, width=8, cpu_peak_tflops=1.0)
  _check_common_schema(result, "vae", 1)
  assert result["latent_shape"] == [3, 4, 4, 4]
  assert result["frames_per_s"] == pytest.approx(5 / result["median_s"])


def test_vae_train_benchmark_times_the_real_train_step(bench):
  config = _tiny_config("train.learning_rate=1e-3", "train.warmup_steps=0")
  result = bench.run(config, "vae_train", steps=3, warmup=1, batch=2, frames=5, height=8, width=8, cpu_peak_tflops=1.0)
  _check_common_schema(result, "vae_train", 3)
  assert result["latent_shape"] == [3, 4, 4, 4] and not result["gan"]
  assert result["examples_per_s"] == pytest.approx(2 / result["median_s"])
  assert result["params"] > 0 and result["loss"] == result["loss"]  # finite
  # The step must contain the backward pass: more FLOPs than the encode + decode alone.
  forward = bench.run(config, "vae", steps=1, warmup=0, batch=2, frames=5, height=8, width=8, cpu_peak_tflops=1.0)
  assert result["flops_per_step"] > 2 * forward["flops_per_step"]


def test_random_params_like_scales_kernels_by_fan_in(bench):
  import jax
  import numpy as np

  abstract = {
    "conv": {
      "kernel": jax.ShapeDtypeStruct((3, 3, 3, 64, 32), np.float32),
      "bias": jax.ShapeDtypeStruct((32,), np.float32),
    },
    "norm": {"scale": jax.ShapeDtypeStruct((32,), np.float32)},
  }
  params = bench.random_params_like(abstract, seed=0)
  assert params["conv"]["kernel"].shape == (3, 3, 3, 64, 32) and params["conv"]["kernel"].dtype == np.float32
  assert np.std(params["conv"]["kernel"]) == pytest.approx(1 / np.sqrt(27 * 64), rel=0.05)
  assert np.all(params["conv"]["bias"] == 0) and np.all(params["norm"]["scale"] == 1)


def test_run_rejects_bad_arguments(bench):
  config = _tiny_config()
  with pytest.raises(ValueError, match="not one of"):
    bench.run(config, "inference", steps=1, warmup=0)
  with pytest.raises(ValueError, match="steps"):
    bench.run(config, "train", steps=0, warmup=0)


# ------------------------------------------------------------------------------------------ memory estimate


def test_memory_estimate_is_positive_grows_with_batch_and_shrinks_with_fsdp():
  config = _tiny_config(*LEAN)  # the default rules put "embed" params on the fsdp axis
  # 192 tokens per example, so activations (not the tiny weights' gradients) show in temp.
  estimate = lambda mesh, batch: memory.estimate_train_memory(
    config, frames=5, height=32, width=32, mesh_shape=mesh, batch_size=batch
  )
  small, large, sharded = estimate((1, 1, 1, 1), 4), estimate((1, 1, 1, 1), 16), estimate((1, 4, 1, 1), 4)
  for key in ("params_bytes", "optimizer_bytes", "temp_bytes", "peak_bytes", "batch_bytes"):
    assert small[key] > 0, key
  assert small["ema_bytes"] == 0  # EMA off
  assert large["params_bytes"] == small["params_bytes"]
  assert large["batch_bytes"] == 4 * small["batch_bytes"]
  assert large["temp_bytes"] > small["temp_bytes"]
  assert large["peak_bytes"] > small["peak_bytes"]
  # AdamW keeps two moments per parameter (plus scalar counts): about 2x the params.
  assert 2 * small["params_bytes"] <= small["optimizer_bytes"] <= 2 * small["params_bytes"] + 64
  assert small["method"] == "compiled" and small["tokens"] == 192
  # 4-way FSDP: each device holds a quarter of the batch and less of the params / optimizer state.
  assert sharded["num_devices"] == 4 and sharded["mesh_shape"] == [1, 4, 1, 1]
  assert sharded["params_bytes"] < small["params_bytes"]
  assert sharded["optimizer_bytes"] < small["optimizer_bytes"]
  assert sharded["batch_bytes"] == small["batch_bytes"] // 4
  assert memory.fits_on(small, "H100")
  assert any("GiB" in line for line in memory.summary_lines(small))


def test_memory_estimate_compiles_meshes_larger_than_this_machine_on_virtual_devices():
  config = _tiny_config(*LEAN)
  result = memory.estimate_train_memory(config, frames=5, height=8, width=8, mesh_shape=(16, 1, 1, 1), batch_size=16)
  assert result["method"] == "compiled_virtual_cpu"
  assert result["num_devices"] == 16 and result["mesh_shape"] == [16, 1, 1, 1]
  assert result["temp_bytes"] > 0 and result["params_bytes"] > 0


def test_memory_estimate_rejects_bad_meshes():
  config = _tiny_config()
  with pytest.raises(ValueError, match="positive size"):
    memory.estimate_train_memory(config, mesh_shape=(-1, 1, 1, 1))
  with pytest.raises(ValueError, match="divisible"):
    memory.estimate_train_memory(config, frames=5, height=8, width=8, mesh_shape=(4, 1, 1, 1), batch_size=2)


# ------------------------------------------------------------------------------------------ vs_diffusers


def test_vs_diffusers_settings_and_schedule(vs):
  assert vs.parse_settings("dit.dtype=bfloat16; dit.scan_layers=False") == [
    "dit.dtype=bfloat16",
    "dit.scan_layers=False",
  ]
  with pytest.raises(ValueError, match="key=value"):
    vs.parse_settings("bfloat16")
  assert vs.schedule(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
  defaults = vs.default_ours_settings()
  assert {d.split(";")[0] for d in defaults} == {"dit.dtype=float32", "dit.dtype=bfloat16"}
  assert defaults[0].endswith("dit.scan_layers=False")
  fast = "dit.dtype=" + hardware.auto_compute_dtype(backend="cpu")  # bf16 only with native bf16 dot products
  assert defaults[0].startswith(fast)
  config = vs.ours_config(["dit.dtype=bfloat16"])
  assert (config.dit.depth, config.dit.hidden_size, config.dit.num_heads, config.dit.mlp_dim) == (8, 384, 6, 1536)
  assert config.text.max_length == 32 and config.train.ema_decay == 0.0 and config.dit.dtype == "bfloat16"


def test_vs_diffusers_result_schema_and_ratios(vs):
  times = {
    "ours_train[0]": [0.2, 0.3, 0.25],
    "ours_train[1]": [0.4],
    "diffusers_eager_train": [0.7, 0.7],
    "diffusers_compiled_train": [0.5],
    "ours_vae": [0.1],
    "diffusers_vae": [0.3],
  }
  result = vs.compare(times, num_ours=2)
  assert result["ours_train_s"] == pytest.approx(0.25)
  assert result["ours_settings_train_s"] == [pytest.approx(0.25), pytest.approx(0.4)]
  assert result["diffusers_eager_train_s"] == pytest.approx(0.7)
  assert result["speedup_vs_eager"] == pytest.approx(0.7 / 0.25)
  assert result["speedup_vs_compiled"] == pytest.approx(0.5 / 0.25)
  assert result["vae_speedup"] == pytest.approx(3.0)
  json.dumps(result)  # JSON-ready
  missing = vs.compare({"ours_train[0]": [0.2]}, num_ours=1)
  assert missing["speedup_vs_eager"] is None and missing["diffusers_compiled_train_s"] is None


def test_vs_diffusers_cli_rejects_unknown_peers():
  proc = subprocess.run(
    [sys.executable, os.path.join(REPO, "tools", "benchmarks", "vs_diffusers.py"), "--peers=eager,jit"],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )
  assert proc.returncode != 0 and "jit" in proc.stderr


def test_train_benchmark_times_every_bucket_of_a_table(bench):
  config = _tiny_config("data.num_frames=5", "data.height=8", "data.width=8", "data.batch_size=8", *LEAN)
  result = bench.run(config, "train", steps=1, warmup=0, buckets="5x8x8=0.5:0,1x8x8=0.5:0")
  sections = result["buckets"]
  # 5x8x8 -> latent 3x4x4 -> 3x2x2 = 12 tokens at the base batch 8; an image 1x2x2 = 4 tokens -> batch 24
  assert {k: (v["tokens"], v["batch"]) for k, v in sections.items()} == {"5x8x8": (12, 8), "1x8x8": (4, 24)}
  for section in sections.values():
    assert section["median_s"] > 0 and section["tokens_per_step"] == 96 and section["compile_s"] > 0
  mean = 0.5 * sections["5x8x8"]["median_s"] + 0.5 * sections["1x8x8"]["median_s"]
  assert result["mean_step_s"] == pytest.approx(mean)
  with pytest.raises(ValueError, match="--what=train"):
    bench.run(config, "sample", steps=1, warmup=0, buckets="5x8x8=1")


def test_vae_colors_reads_every_colour_before_and_after_the_vae(workdir, run_tool, tmp_path):
  """tools/benchmarks/vae_colors.py on the tiny workdir's VAE (3 steps: its reconstructions are not meant to
  be right, so only the inputs' readings are checked against the colour asked for)."""
  from sora_jax.data import shapes

  out = tmp_path / "colors.json"
  run_tool("tools/benchmarks/vae_colors.py", f"--vae_workdir={workdir / 'vae'}", "--clips_per_color=1", f"--out={out}")
  colors = json.loads(out.read_text())["colors"]
  assert set(colors) == set(shapes.ALL_COLORS)
  for name, entry in colors.items():
    assert entry["read_inputs"] == {name: 1} and sum(entry["read_reconstructions"].values()) == 1
