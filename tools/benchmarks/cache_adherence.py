r"""Work vs prompt adherence of the sampler's block cache and CFG window (issue 20), on the 105 canonical prompts.

  python tools/benchmarks/cache_adherence.py --workdir=runs/demo --out=runs/demo/cache_adherence.json
  python tools/benchmarks/cache_adherence.py --workdir=runs/demo --max_prompts=21 \
      --settings="plain cache:threshold=0.1 window:0.5,1.0 cache:0.2+window:0.5,1.0"

Every setting samples the same prompts with the same seeds; the shapes analyzer scores colour, shape,
motion and all three (as tools/evaluate.py does), and the sampler's own counts (`Pipeline.last_stats`)
give forwards per video, model calls and cached calls. Each setting is compared with `plain`: times
fewer forwards and adherence points gained or lost; the target is >= 1.8x fewer at <= 2 points loss.
The setting syntax (plain, config, cache:..., window:lo,hi, joined by '+') is documented in
sora_jax/evaluation/cache_adherence.py. Prints a table (or one JSON with --json); --out writes the JSON,
with the hardware record and the 1-minute load.
"""

import json
import os

from absl import flags

from sora_jax.configuration import run_tool
from sora_jax.sampling import flags as sampling_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir (make demo's runs/demo, or a DiT workdir).")
_SETTINGS = flags.DEFINE_multi_string(
  "settings",
  None,
  "Sampling settings, separated by spaces or ';' (the flag may repeat); 'plain' is always measured first. "
  "Default: a grid for the demo's 20 steps (cache_adherence.DEFAULT_SETTINGS).",
)
_SAMPLING = sampling_flags.define_sampling_flags()  # --num_steps, --guidance_scale, --sampler
_MAX_PROMPTS = flags.DEFINE_integer("max_prompts", 0, "At most this many canonical prompts (every k-th; 0 = all 105).")
_PER_PROMPT = flags.DEFINE_integer("videos_per_prompt", 1, "Videos (seeds) per prompt.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Prompts per sampling call (the cache decides per call).")
_SEED = flags.DEFINE_integer("seed", 1234, "Noise seed of the first video (tools/evaluate.py's default).")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON report here.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  from sora_jax import Pipeline
  from sora_jax.evaluation import cache_adherence

  settings = cache_adherence.parse_settings(_SETTINGS.value or cache_adherence.DEFAULT_SETTINGS)
  pipe = Pipeline.from_pretrained(_WORKDIR.value)
  report = cache_adherence.run(
    pipe,
    settings,
    max_prompts=_MAX_PROMPTS.value,
    batch_size=_BATCH.value,
    seed=_SEED.value,
    videos_per_prompt=_PER_PROMPT.value,
    progress=None if _JSON.value else print,
    **_SAMPLING.overrides(),
  )
  report = {"workdir": os.path.abspath(_WORKDIR.value), "sampling": _SAMPLING.resolved(pipe.config), **report}
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      json.dump(report, f, indent=2)
  if _JSON.value:
    print(json.dumps(report))
  else:
    print(cache_adherence.format_table(report))
    if _OUT.value:
      print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  run_tool(main)
