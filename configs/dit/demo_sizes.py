"""The CPU demo DiT trained on a mixture of sizes (native-size training, DESIGN.md §4, issue 16).

  python tools/train_dit.py --config=configs/dit/demo_sizes.py --workdir=runs/demo/dit \
      --config.vae_workdir=runs/demo/vae

configs/dit/demo.py with data.batching="buckets": every batch holds clips of one size, drawn
from the table below; a batch size of 0 is data.batch_size (32 at 17x32x32, 20 tokens a clip)
scaled by tokens, so every step costs about the same (~640 tokens): 21 landscape or portrait
clips (30 tokens), 17 long ones (36), 53 short ones (12) or 160 images (4). The 17x32x32 base
keeps the largest share so the single-size figures hold. The VAE is the demo's (trained on
17x32x32 clips; it is convolutional and causal, so it encodes every size of the table).

Another table from the command line (SIZE=PROBABILITY[:BATCH], batch 0 or left out = scaled):
  python tools/train_dit.py --config=configs/dit/demo_sizes.py:17x32x32=0.5,1x32x32=0.5 ...

Sample any size from the trained model: `pipe(prompts, num_frames=33, height=32, width=48)`,
images with `num_frames=1`. Measure adherence per size:
  python tools/evaluate.py --workdir=runs/demo --sizes=17x32x32,17x32x48,17x48x32,33x32x32,9x32x32,1x32x32
"""

from configs.dit import demo
from sora_jax.data import buckets

BUCKETS = {
  "17x32x32": (0.30, 0),
  "17x32x48": (0.15, 0),
  "17x48x32": (0.15, 0),
  "33x32x32": (0.15, 0),
  "9x32x32": (0.10, 0),
  "1x32x32": (0.15, 0),
}


def get_config(table: str = ""):
  c = demo.get_config()
  c.data.batching = "buckets"
  c.data.buckets = buckets.format_table(table or BUCKETS)  # checked; the string form config.json keeps
  return c
