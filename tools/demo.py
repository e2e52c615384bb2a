"""The main job: train a text-to-video model on the built-in shapes dataset, on a CPU.

  make demo                      # = python tools/demo.py --workdir=runs/demo

Stages (each is the same command a user would run, so the demo doubles as a recipe):
  1. dataset   tools/show_dataset.py      build the shapes dataset, contact sheet of it
  2. vae       tools/train_vae.py         train the causal 3D VAE          -> <workdir>/vae
  3. dit       tools/train_dit.py         latent cache + text-to-video DiT -> <workdir>/dit
  4. evaluate  tools/evaluate.py          prompt adherence + VAE PSNR/SSIM -> <workdir>/eval
  5. sample    tools/sample.py            mp4 + GIF per prompt + contact sheet -> <workdir>/samples

Re-running resumes: training tools restart from their last checkpoint (and return at
once when finished); finished evaluation/sampling stages are reused unless --force.
Timings of each stage go to <workdir>/summary.json.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from sora_jax.data.shapes import DEMO_PROMPTS

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where everything is written.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir for the shapes dataset (default <workdir>/data).")
_FORCE = flags.DEFINE_bool("force", False, "Re-run evaluation and sampling even if their outputs exist.")
_VAE_CONFIG = flags.DEFINE_string("vae_config", "configs/vae/demo.py", "VAE config file.")
_DIT_CONFIG = flags.DEFINE_string("dit_config", "configs/dit/demo.py", "DiT config file.")


def _run(stage: str, args: list[str], timings: dict) -> None:
  print(f"\n=== [{stage}] {' '.join(args)}", flush=True)
  start = time.time()
  result = subprocess.run([sys.executable] + args, cwd=_REPO)
  timings[stage] = round(time.time() - start, 1)
  if result.returncode != 0:
    sys.exit(
      f"demo stage {stage!r} failed (exit {result.returncode}). Fix the error above and re-run "
      f"`make demo`: finished stages are reused and training resumes from its last checkpoint."
    )
  print(f"=== [{stage}] done in {timings[stage]:.0f} s", flush=True)


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  data_dir = os.path.abspath(_DATA_DIR.value or os.path.join(workdir, "data"))
  os.makedirs(workdir, exist_ok=True)
  vae_dir, dit_dir = os.path.join(workdir, "vae"), os.path.join(workdir, "dit")
  eval_dir, sample_dir = os.path.join(workdir, "eval"), os.path.join(workdir, "samples")
  data = [f"--config.data.data_dir={data_dir}"]
  timings: dict[str, float] = {}
  total_start = time.time()

  _run(
    "dataset",
    [
      "tools/show_dataset.py",
      f"--config={_VAE_CONFIG.value}",
      *data,
      "--num=8",
      f"--out={os.path.join(workdir, 'dataset.png')}",
    ],
    timings,
  )
  _run("vae", ["tools/train_vae.py", f"--config={_VAE_CONFIG.value}", f"--workdir={vae_dir}", *data], timings)
  _run(
    "dit",
    [
      "tools/train_dit.py",
      f"--config={_DIT_CONFIG.value}",
      f"--workdir={dit_dir}",
      *data,
      f"--config.vae_workdir={vae_dir}",
    ],
    timings,
  )
  eval_json = os.path.join(eval_dir, "eval.json")
  if _FORCE.value or not _is_newer(eval_json, dit_dir):
    _run("evaluate", ["tools/evaluate.py", f"--workdir={workdir}", f"--out={eval_dir}"], timings)
  sheet = os.path.join(sample_dir, "contact_sheet.png")
  if _FORCE.value or not _is_newer(sheet, dit_dir):
    _run(
      "sample",
      ["tools/sample.py", f"--workdir={workdir}", f"--out={sample_dir}"] + [f"--prompt={p}" for p in DEMO_PROMPTS],
      timings,
    )

  summary = {"seconds_per_stage": timings, "total_seconds": round(time.time() - total_start, 1), "workdir": workdir}
  if os.path.exists(eval_json):
    with open(eval_json) as f:
      summary["evaluation"] = json.load(f)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  _print_summary(summary, workdir, sample_dir, sheet, eval_json)


def _print_summary(summary: dict, workdir: str, sample_dir: str, sheet: str, eval_json: str) -> None:
  timings = summary["seconds_per_stage"]
  print("\n=== sora_jax demo finished")
  print(f"  stage times (s):   {timings}")
  if "evaluation" in summary:
    ev = summary["evaluation"]
    print(
      f"  prompt adherence:  all-three {ev.get('accuracy_all', float('nan')):.1%}  "
      f"color {ev.get('accuracy_color', float('nan')):.1%}  shape {ev.get('accuracy_shape', float('nan')):.1%}  "
      f"motion {ev.get('accuracy_motion', float('nan')):.1%}"
    )
    print(f"  VAE PSNR:          {ev.get('vae_psnr', float('nan')):.2f} dB")
    for line in mode_lines(ev.get("modes", {})):
      print(line)
    if ev.get("modes"):
      print(f"  prompting modes:   {os.path.join(os.path.dirname(eval_json), 'modes.png')}")
    for name, size in ev.get("sizes", {}).items():  # a run trained on a bucket table (tools/evaluate.py --sizes)
      print(
        f"  size {name:>9}:   all-three {size['accuracy_all']:.1%}  color {size['accuracy_color']:.1%}  "
        f"shape {size['accuracy_shape']:.1%}  inside {size['framing_inside']:.1%}"
        + (f"  travel>=35% {size['framing_travel']:.1%}" if size.get("framing_travel") is not None else "")
      )
  print(f"  dataset sheet:     {os.path.join(workdir, 'dataset.png')}")
  print(f"  samples (mp4/gif): {sample_dir}")
  print(f"  contact sheet:     {sheet}")
  print(f"  evaluation JSON:   {eval_json}")
  print(f"  Python API:        Pipeline.from_pretrained({workdir!r})")


def mode_lines(modes: dict) -> list[str]:
  """One summary line per image/video prompting mode: its pass rate and the means behind it."""
  lines = []
  for mode, section in modes.items():
    details = "  ".join(
      f"{k} {v:.2f}" for k, v in section.items() if k not in ("pass_rate", "num_clips") and isinstance(v, float)
    )
    lines.append(
      f"  {mode + ':':18s} pass {section.get('pass_rate', float('nan')):.0%} of {section.get('num_clips')}  {details}"
    )
  return lines


def _is_newer(path: str, than_dir: str) -> bool:
  """True if `path` exists and is newer than every file under `than_dir` (a finished stage)."""
  if not os.path.exists(path):
    return False
  newest = 0.0
  for root, _, files in os.walk(than_dir):
    for name in files:
      newest = max(newest, os.path.getmtime(os.path.join(root, name)))
  return os.path.getmtime(path) >= newest


if __name__ == "__main__":
  app.run(main)
