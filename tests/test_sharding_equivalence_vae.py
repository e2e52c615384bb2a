"""Every mesh layout trains the causal VAE like one device: 2 steps on 8 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sharding_equivalence import EQUIVALENCE_MESHES, assert_equivalent

from configs import base
from sora_jax.models import vae as vae_lib
from sora_jax.sharding import partitioning
from sora_jax.training import train_state

BATCH = 8
VIDEO = (3, 8, 8, 3)  # 1 + 2 frames, 8 x 8 pixels (temporal factor 2, spatial factor 2)


def _tiny_vae_config():
  cfg = base.get_config().vae
  cfg.update(
    temporal_factor=2,
    spatial_factor=2,
    latent_channels=4,
    base_channels=8,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    mid_attention=True,
  )
  return cfg


def _vae_fns(cfg):
  model = vae_lib.CausalVAE(cfg)
  tx = optax.adamw(1e-3, eps=1e-4, weight_decay=0.01)  # eps: see sharding_equivalence.assert_equivalent

  def init_fn(rng):
    params = model.init({"params": rng, "sample": rng}, jnp.zeros((1,) + VIDEO))["params"]
    return train_state.create_train_state(params, tx, ema=False)

  def train_step(state, batch, rng):
    def loss_fn(params):
      recon, mean, logvar = model.apply({"params": params}, batch["video"], rngs={"sample": rng})
      return jnp.mean(jnp.abs(recon - batch["video"])) + 1e-3 * vae_lib.kl_divergence(mean, logvar)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads, tx), {"loss": loss}

  return init_fn, train_step


@pytest.mark.slow
def test_vae_trains_identically_on_every_mesh():
  rng = np.random.default_rng(1)
  batches = [{"video": rng.uniform(-1, 1, size=(BATCH,) + VIDEO).astype(np.float32)} for _ in range(2)]
  init_fn, train_step = _vae_fns(_tiny_vae_config())
  losses, split = assert_equivalent(init_fn, train_step, batches, partitioning.logical_rules(base.get_config()))
  assert losses.shape == (2,) and np.all(losses > 0)
  # Conv output channels go over fsdp (the rules), so only meshes with fsdp > 1 split VAE params.
  assert all((split[shape] > 0) == (shape[1] > 1) for shape in EQUIVALENCE_MESHES)
