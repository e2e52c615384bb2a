r"""Evaluate a trained workdir: prompt adherence, VAE reconstruction, DiT eval loss.

  python tools/evaluate.py --workdir=runs/demo --out=runs/demo/eval

* Prompt adherence (shapes domain): one video for each of the 105 colour x shape x
  motion prompts, read back by sora_jax.evaluation.shapes_analyzer; accuracy per
  attribute and with all three right, plus confusion matrices. --prompt_sets picks the
  sets: "canonical" (the 105), "new_concepts" (the 55 with orange / diamond, which a LoRA
  fine-tune teaches; scored under "new_concepts" in eval.json), e.g.

  python tools/evaluate.py --workdir=runs/lora_demo --prompt_sets=canonical,new_concepts
  python tools/evaluate.py --workdir=runs/demo --lora=runs/lora_demo/lora --prompt_sets=new_concepts
* VAE: PSNR / SSIM of reconstructions on the held-out split (--vae_split).
* DiT: the last eval loss at fixed timesteps (from the run's metrics.jsonl) next to the
  loss of predicting zero velocity (what an untrained model scores).

* Images and videos as prompts (shapes domain, --modes): animate, animate_against, extend,
  extend_backward, connect, loop and edit on held-out clips, each with the issue's criteria
  (sora_jax/evaluation/conditioning_eval.py): one section per mode under "modes" in eval.json,
  and <out>/modes.png (the first clip of every mode, given frames outlined in orange).
* Sizes (--sizes; default: the sizes the run trained on when it used a bucket table):
  adherence and framing (object wholly inside the frame, moving objects travel >= 35 %)
  per size, a JSON section each under "sizes", and <out>/sizes.png with one sample of
  every size side by side. Any producible size works, e.g. --sizes=25x32x32,17x48x48.

Writes <out>/eval.json, <out>/summary.png (bars + confusion matrices) and
<out>/samples.png (a contact sheet of the first generated videos).
"""

import json
import os
import time

from absl import flags

from sora_jax.configuration import run_tool
from sora_jax.sampling import flags as sampling_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir (make demo's runs/demo, or a DiT workdir).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default <workdir>/eval).")
_SAMPLING = sampling_flags.define_sampling_flags()  # --num_steps, --guidance_scale, --sampler
_PER_PROMPT = flags.DEFINE_integer("videos_per_prompt", 1, "Videos (seeds) per prompt.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Prompts per sampling call.")
_SEED = flags.DEFINE_integer("seed", 1234, "Noise seed of the first video.")
_VAE_SPLIT = flags.DEFINE_string("vae_split", "test", "Held-out split for VAE PSNR/SSIM.")
_VAE_CLIPS = flags.DEFINE_integer("vae_clips", 64, "Clips of that split for VAE PSNR/SSIM (0 = all).")
_SIZES = flags.DEFINE_string(
  "sizes",
  "auto",
  "Sizes FRAMESxHEIGHTxWIDTH to measure adherence and framing at, comma-separated (e.g. "
  "17x32x32,17x32x48,1x32x32); 'auto' = the run's bucket table (none for a one-size run); '' = none.",
)
_SIZE_PROMPTS = flags.DEFINE_integer("size_prompts", 0, "Prompts per size for --sizes (0 = all 105, 21 for images).")
_SKIP_ADHERENCE = flags.DEFINE_bool("skip_adherence", False, "Only VAE / loss metrics (non-shapes data).")
_MODES = flags.DEFINE_list(
  "modes",
  "animate,animate_against,extend,extend_backward,connect,loop,edit",
  "Image/video prompting modes to evaluate (shapes domain); empty = none. "
  "Needs a model trained with train.conditioning (configs/dit/demo.py).",
)
_MODE_CLIPS = flags.DEFINE_integer("mode_clips", 16, "Held-out clips per prompting mode.")
_EDIT_STRENGTH = flags.DEFINE_float("edit_strength", 0.7, "SDEdit strength of the edit mode.")
_PROMPT_SETS = flags.DEFINE_list(
  "prompt_sets",
  ["canonical"],
  "Prompt sets to score: canonical (the 105 default prompts), new_concepts (orange, diamond).",
)
_STEP = flags.DEFINE_integer(
  "step", None, "The DiT checkpoint step to evaluate (default: the latest); a run keeps train.keep_checkpoints."
)
_LORA = flags.DEFINE_list("lora", [], "PEFT/diffusers LoRA files (or folders) to load onto the model before sampling.")
_LORA_SCALE = flags.DEFINE_float("lora_scale", 1.0, "Scale of the --lora LoRAs.")
flags.mark_flags_as_required(["workdir"])


def last_eval_metrics(dit_workdir: str) -> dict:
  """The last eval_* scalars the training loop logged to metrics.jsonl ({} if none)."""
  path = os.path.join(dit_workdir, "metrics.jsonl")
  found = {}
  if os.path.exists(path):
    from sora_jax.monitoring.plots import read_metrics

    for record in read_metrics(path):
      if "eval/loss" in record:
        found = dict(record)
  return found


def evaluate_prompting_modes(pipe, out: str) -> dict:
  """One JSON section per image/video prompting mode, and <out>/modes.png."""
  import numpy as np

  from sora_jax.evaluation import conditioning_eval
  from sora_jax.media import contact_sheet

  modes = conditioning_eval.evaluate_modes(
    pipe,
    _MODES.value,
    num_clips=_MODE_CLIPS.value,
    seed=_SEED.value,
    edit_strength=_EDIT_STRENGTH.value,
    **_SAMPLING.overrides(),
  )
  shown = modes.pop("shown")
  videos = [v[0] for v, _, _ in shown.values()]
  marks = [m[0] for _, m, _ in shown.values()]
  captions = [f"{mode}: {c[0]}  | pass {modes[mode]['pass_rate']:.0%}" for mode, (_, _, c) in shown.items()]
  contact_sheet.save_contact_sheet(os.path.join(out, "modes.png"), np.stack(videos), captions, marks=marks)
  return modes


def evaluate_sizes(pipe, out: str, result: dict) -> None:
  """result["sizes"]: a section per size of --sizes, and <out>/sizes.png (one sample of each side by side)."""
  from sora_jax.data import buckets
  from sora_jax.evaluation import adherence
  from sora_jax.media import contact_sheet

  if _SIZES.value == "auto":
    trained = buckets.trained_sizes(pipe.config)
    sizes = trained if len(trained) > 1 else []
  else:
    sizes = buckets.parse_sizes(_SIZES.value)
  if not sizes:
    return
  sections = adherence.evaluate_sizes(
    pipe, sizes, batch_size=_BATCH.value, seed=_SEED.value, max_prompts=_SIZE_PROMPTS.value, **_SAMPLING.overrides()
  )
  firsts = sections.pop("videos")
  result["sizes"] = sections
  captions = [f"{name} all {s['accuracy_all']:.0%} inside {s['framing_inside']:.0%}" for name, s in sections.items()]
  contact_sheet.save_sizes_sheet(os.path.join(out, "sizes.png"), list(firsts.values()), captions)


def main(argv):
  del argv
  from sora_jax import Pipeline
  from sora_jax.evaluation import adherence, vae_eval
  from sora_jax.media import contact_sheet
  from sora_jax.restore import resolve_workdirs

  out = _OUT.value or os.path.join(_WORKDIR.value, "eval")
  dit_dir, vae_dir = resolve_workdirs(_WORKDIR.value)  # a mistyped --workdir fails here, before a folder is made
  os.makedirs(out, exist_ok=True)
  result: dict = {"workdir": os.path.abspath(_WORKDIR.value)}

  start = time.time()
  vae_metrics = vae_eval.evaluate_vae(vae_dir, split=_VAE_SPLIT.value, num_clips=_VAE_CLIPS.value)
  result.update({f"vae_{k}": v for k, v in vae_metrics.items()})
  result["dit_eval"] = last_eval_metrics(dit_dir)

  if not _SKIP_ADHERENCE.value:
    sets = {name: adherence.prompt_set(name) for name in _PROMPT_SETS.value}  # unknown names fail first
    pipe = Pipeline.from_pretrained(_WORKDIR.value, step=_STEP.value)
    result["dit_step"] = _STEP.value  # None: the latest
    for path in _LORA.value:
      pipe.load_lora(path, scale=_LORA_SCALE.value)
    result["loras"] = pipe.loras
    videos = None
    for name, prompts in sets.items():
      adh = adherence.evaluate_adherence(
        pipe,
        prompts,
        batch_size=_BATCH.value,
        seed=_SEED.value,
        videos_per_prompt=_PER_PROMPT.value,
        **_SAMPLING.overrides(),
      )
      set_videos = adh.pop("videos")
      if name == "canonical" or videos is None:
        videos = set_videos
      if name == "canonical":
        result.update(adh)
      else:
        result[name] = adh
        result.update({f"{name}_{k}": v for k, v in adh.items() if k.startswith("accuracy_")})
    if "canonical" not in sets:  # the summary plot and sample sheet show the first set scored
      result.update(next(iter(result[n] for n in sets)))
    result["sampling"] = _SAMPLING.resolved(pipe.config)
    adherence.plot_summary(result, os.path.join(out, "summary.png"))
    shown = min(16, len(videos))
    captions = [
      f"{r['prompt']}  | read: {r['predicted']['color']} {r['predicted']['shape']} {r['predicted']['motion']}"
      for r in result["per_prompt"][:shown]
    ]
    contact_sheet.save_contact_sheet(os.path.join(out, "samples.png"), videos[:shown], captions)
    if _MODES.value:
      result["modes"] = evaluate_prompting_modes(pipe, out)
    evaluate_sizes(pipe, out, result)
  result["seconds"] = round(time.time() - start, 1)

  with open(os.path.join(out, "eval.json"), "w") as f:
    json.dump(result, f, indent=2)
  shown_sets = set(_PROMPT_SETS.value) - {"canonical"}  # their accuracies are printed flat ("new_concepts_...")
  skipped = {"per_prompt", "confusion", "labels", *shown_sets}
  print(json.dumps({k: v for k, v in result.items() if k not in skipped}, indent=2))
  print(f"wrote {os.path.join(out, 'eval.json')}")


if __name__ == "__main__":
  run_tool(main)
