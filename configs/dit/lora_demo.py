"""Teach the demo model something new with a LoRA: orange and diamond (shapes' new_concepts set), on a CPU.

  python tools/train_dit.py --config=configs/dit/lora_demo.py --workdir=runs/lora_demo

trains rank-16 adapters on every attention and MLP projection of the demo DiT in runs/demo/dit
(config.init_from; frozen) on the 220 training clips of the new_concepts set (every combination of
colour x shape x motion with orange or a diamond in it), with the demo's VAE and text encoder.
The checkpoints hold only the adapters; the run's config points to the base. Then

  python tools/evaluate.py --workdir=runs/lora_demo --prompt_sets=canonical,new_concepts

scores the new-concept prompts ("an orange diamond moving left") and the original 105 with the
LoRA applied (Pipeline.from_pretrained(runs/lora_demo) restores base + adapters). Sized to train in
at most 5 minutes on a 2-core CPU (train.max_minutes is the safety net, steps the schedule).
"""

from configs.dit import demo


def get_config():
  c = demo.get_config()
  c.init_from = "runs/demo/dit"  # the base: make demo's DiT (its config names the VAE below)
  c.vae_workdir = "runs/demo/vae"
  c.data.builder_config = "new_concepts"  # clips with orange or a diamond in them
  c.data.num_train, c.data.num_validation, c.data.num_test = 220, 55, 55  # 4 / 1 / 1 of each of its 55 combinations
  c.data.batch_size = 32
  c.lora.rank = 16
  c.lora.alpha = 16.0
  c.lora.dropout = 0.0
  c.lora.targets = "attention,mlp"
  # x @ (W + A @ B): a step costs what a full fine-tuning step of this small model costs (the low-rank
  # path's extra small matmuls measured slower on the 2-core CPU under load; same function either way)
  c.lora.compute = "merged"
  c.train.steps = 600
  c.train.max_minutes = 15.0  # safety net only: the run is its 600 steps (timed: README "Fine-tune with LoRA")
  c.train.learning_rate = 2e-3  # the demo's own rate: adapters start at zero and have few steps
  c.train.warmup_steps = 50
  c.train.ema_decay = 0.99  # EMA of the adapters (600 steps: the demo's 0.995 would lag)
  c.train.log_every = 25
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  c.sample.prompts = (
    "an orange diamond moving left",
    "an orange circle moving up",
    "a blue diamond staying still",
    "a red square moving right",
  )
  return c
