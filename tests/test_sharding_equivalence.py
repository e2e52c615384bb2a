"""Every mesh layout trains the DiT like one device (2 steps, 8 CPU devices); golden param specs.

(The VAE's equivalence test is tests/test_sharding_equivalence_vae.py: a separate file so
the two compile-heavy tests run in parallel under `pytest -n 2 --dist loadfile`.)

The golden file tests/golden/partition_specs.json records how each model variant's
parameters are laid out on a production-sized virtual mesh. After an intended change
to the rules or the models, regenerate it with

    SORA_JAX_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_sharding_equivalence.py -k golden
"""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from sharding_equivalence import EQUIVALENCE_MESHES, assert_equivalent, param_specs_table

from configs import base
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models import variants
from sora_jax.sharding import partitioning
from sora_jax.training import train_state

GOLDEN = Path(__file__).parent / "golden" / "partition_specs.json"
GOLDEN_MESH = (2, 16, 1, 4)  # data, fsdp, context, tensor: e.g. 128 chips
BATCH, TEXT_LEN, TEXT_DIM = 8, 8, 16
LATENT = (2, 4, 4, 4)  # T', H', W', C -> 2 x 2 x 2 = 8 tokens with patch (1, 2, 2)


def _rules():
  return partitioning.logical_rules(base.get_config())


def _tx():
  # eps=1e-4: well conditioned for near-zero (pure rounding noise) gradients; see assert_equivalent.
  return optax.adamw(1e-3, eps=1e-4, weight_decay=0.01)


# ------------------------------------------------------------------ DiT


def _tiny_dit():
  return dit_lib.DiT(
    in_channels=LATENT[-1], text_dim=TEXT_DIM, hidden_size=64, depth=2, num_heads=4, mlp_dim=128, patch_size=(1, 2, 2)
  )


def _dit_cond(batch):
  return {"text": batch["text"], "text_mask": batch["text_mask"], "pooled": batch["pooled"]}


def _dit_fns(model):
  tx = _tx()

  def init_fn(rng):
    x = jnp.zeros((1,) + LATENT)
    cond = {
      "text": jnp.zeros((1, TEXT_LEN, TEXT_DIM)),
      "text_mask": jnp.ones((1, TEXT_LEN), bool),
      "pooled": jnp.zeros((1, TEXT_DIM)),
    }
    return train_state.create_train_state(model.init(rng, x, jnp.zeros((1,)), cond)["params"], tx, ema=True)

  def train_step(state, batch, rng):
    """Flow matching: x_t = (1 - t) x0 + t noise, target velocity noise - x0."""
    rng_t, rng_noise = jax.random.split(rng)
    x0 = batch["latents"]
    t = jax.random.uniform(rng_t, (x0.shape[0],))
    noise = jax.random.normal(rng_noise, x0.shape)
    x_t = (1 - t[:, None, None, None, None]) * x0 + t[:, None, None, None, None] * noise

    def loss_fn(params):
      v = model.apply({"params": params}, x_t, t * 1000.0, _dit_cond(batch))
      return jnp.mean((v - (noise - x0)) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads, tx, 0.9), {"loss": loss}

  return init_fn, train_step


def _dit_batches(num=2):
  rng = np.random.default_rng(0)
  mask = np.arange(TEXT_LEN)[None, :] < rng.integers(2, TEXT_LEN + 1, size=(BATCH, 1))
  return [
    {
      "latents": rng.normal(size=(BATCH,) + LATENT).astype(np.float32),
      "text": rng.normal(size=(BATCH, TEXT_LEN, TEXT_DIM)).astype(np.float32),
      "text_mask": mask,
      "pooled": rng.normal(size=(BATCH, TEXT_DIM)).astype(np.float32),
      "caption": np.array(["x"] * BATCH),
    }
    for _ in range(num)
  ]


@pytest.mark.slow
def test_dit_trains_identically_on_every_mesh():
  init_fn, train_step = _dit_fns(_tiny_dit())
  losses, split = assert_equivalent(init_fn, train_step, _dit_batches(), _rules())
  assert losses.shape == (2,) and losses[1] < losses[0] * 1.5
  # Meshes with fsdp or tensor > 1 really split the DiT's params; pure data parallelism does not.
  assert split[(8, 1, 1, 1)] == 0
  assert all(split[shape] > 10 for shape in EQUIVALENCE_MESHES if shape[1] > 1 or shape[3] > 1)


# ------------------------------------------------------------------ golden partition specs


def _dit_variant_params_fn(name):
  cfg = variants.apply_variant(ml_collections.ConfigDict({**base.get_config().dit.to_dict(), "variant": name}))
  inputs = variants.REFERENCE_INPUTS[name]
  model = dit_lib.DiT.from_config(cfg, in_channels=inputs["latent_channels"], text_dim=inputs["text_dim"])
  latent = (1, 1, 8, 8, inputs["latent_channels"])
  if cfg.conditioning == "class":
    cond = {"label": jnp.zeros((1,), jnp.int32)}
  else:
    length, width = inputs["text_length"], inputs["text_dim"]
    cond = {
      "text": jnp.zeros((1, length, width)),
      "text_mask": jnp.ones((1, length), bool),
      "pooled": jnp.zeros((1, width)),
    }
  return lambda rng: model.init(rng, jnp.zeros(latent), jnp.zeros((1,)), cond)["params"]


def _vae_params_fn():
  model = vae_lib.CausalVAE(base.get_config().vae)
  return lambda rng: model.init({"params": rng, "sample": rng}, jnp.zeros((1, 5, 16, 16, 3)))["params"]


GOLDEN_MODELS = {
  "DiT-XL/2": lambda: _dit_variant_params_fn("DiT-XL/2"),
  "video-tiny": lambda: _dit_variant_params_fn("video-tiny"),
  "wan-1.3b": lambda: _dit_variant_params_fn("wan-1.3b"),
  "vae-base": _vae_params_fn,
}


def test_golden_partition_specs():
  tables = {name: param_specs_table(make(), GOLDEN_MESH, _rules()) for name, make in GOLDEN_MODELS.items()}
  current = {"mesh": dict(zip(("data", "fsdp", "context", "tensor"), GOLDEN_MESH)), "models": tables}
  if os.environ.get("SORA_JAX_UPDATE_GOLDEN"):
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
  assert GOLDEN.exists(), f"{GOLDEN} is missing; create it with SORA_JAX_UPDATE_GOLDEN=1 (see module docstring)"
  golden = json.loads(GOLDEN.read_text())
  changes = []
  for model, table in tables.items():
    old = golden["models"].get(model, {})
    for path in sorted(set(table) | set(old)):
      if table.get(path) != old.get(path):
        changes.append(f"{model} {path}: golden {old.get(path)} -> now {table.get(path)}")
  assert not changes, (
    "parameter partition specs changed (if intended, regenerate with "
    "SORA_JAX_UPDATE_GOLDEN=1):\n" + "\n".join(changes[:40])
  )
  # Spot checks that the golden file itself says what the rules mean.
  dit_specs = tables["wan-1.3b"]
  assert dit_specs["blocks/mlp/fc1/kernel"] == [None, "fsdp", "tensor"]  # [layers, embed, mlp]
  assert any("tensor" in (spec or []) for spec in dit_specs.values())
