"""A tiny annotated model, data iterator and train step for the training-loop and multi-process tests.

Small enough to compile in about a second, yet sharded on every mesh axis the rules use
(embed -> fsdp, mlp -> tensor, activation_batch -> data x fsdp).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from sora_jax.training import optimizer, train_state

BATCH, FEATURES, OUT = 8, 6, 4


class ToyModel(nn.Module):
  """x [B, 6] -> Dense(16, embed x mlp) -> gelu -> Dense(4, mlp x embed) -> [B, 4]."""

  @nn.compact
  def __call__(self, x):
    dense = lambda n, names: nn.Dense(
      n, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
    )
    x = nn.gelu(dense(16, ("embed", "mlp"))(x))
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_mlp"))
    return dense(OUT, ("mlp", "embed"))(x)


class ToyIterator:
  """Deterministic in-memory batches with grain-style get_state/set_state (bytes).

  Global batch i holds rows (i*BATCH + arange(BATCH)) % num_rows; process p of n yields
  its contiguous share, so n processes together see exactly the 1-process batches.
  """

  def __init__(self, num_rows=2 * BATCH, seed=0, process_index=0, process_count=1):
    rng = np.random.default_rng(seed)
    self.x = rng.normal(size=(num_rows, FEATURES)).astype(np.float32)
    self.y = np.tanh(self.x[:, :OUT] * 2.0).astype(np.float32)
    self.local = slice(process_index * BATCH // process_count, (process_index + 1) * BATCH // process_count)
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self):
    rows = ((np.arange(BATCH) + self.position * BATCH) % len(self.x))[self.local]
    self.position += 1
    return {"x": self.x[rows], "y": self.y[rows], "caption": np.array(["toy"] * len(rows))}

  def get_state(self):
    return str(self.position).encode()

  def set_state(self, state):
    self.position = int(state.decode())


class RecordingWriter:
  """A MetricWriter stand-in that keeps every scalar in memory."""

  def __init__(self):
    self.scalars = {}

  def write_scalars(self, step, scalars):
    self.scalars.setdefault(step, {}).update(scalars)

  def write_images(self, step, images):
    pass

  def losses(self):
    return [self.scalars[s]["loss"] for s in sorted(self.scalars) if "loss" in self.scalars[s]]


def toy_config(steps=6, mesh_shape=(2, 2, 1, 2), **train):
  config = base.get_config()
  config.data.batch_size = BATCH
  config.mesh.shape = mesh_shape
  config.train.update(
    steps=steps, warmup_steps=2, learning_rate=3e-2, log_every=1, eval_every=0, checkpoint_every=3, ema_decay=0.9
  )
  config.train.update(train)
  return config


def toy_fns(config):
  """(init_fn, train_step) for `sora_jax.training.loop.train`."""
  model = ToyModel()
  tx = optimizer.make_optimizer(config.train)

  def init_fn(rng):
    return train_state.create_train_state(model.init(rng, jnp.zeros((1, FEATURES)))["params"], tx)

  def train_step(state, batch, rng):
    noise = 0.01 * jax.random.normal(rng, batch["x"].shape)  # uses the step rng: resume must replay it

    def loss_fn(params):
      return jnp.mean((model.apply({"params": params}, batch["x"] + noise) - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads, tx, config.train.ema_decay), {"loss": loss}

  return init_fn, train_step
