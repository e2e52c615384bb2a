"""DiT training step on cached-latent batches: learning, CFG dropout, eval loss baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sora_jax.diffusion import build_diffusion
from sora_jax.models import factory
from sora_jax.models.text import fields
from sora_jax.sharding import partitioning
from sora_jax.training import dit_step
from sora_jax.training.optimizer import make_optimizer

LATENT = (3, 4, 4, 4)  # T', H', W', C


def _setup(cfg_dropout=0.1, lr=3e-3, diffusion=None, learn_sigma=False):
  config = base.get_config()
  config.dit.update(
    dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64, patch_size=(1, 2, 2), learn_sigma=learn_sigma)
  )
  config.diffusion.update(diffusion or {})
  config.text.update(dict(encoder="small", max_length=32, width=32, depth=1, num_heads=2))
  config.train.update(dict(learning_rate=lr, warmup_steps=0, lr_schedule="constant", ema_decay=0.9))
  denoiser = factory.build_denoiser(config, LATENT)
  text = denoiser.text_encoder
  process = build_diffusion(config.diffusion)
  tx = make_optimizer(config.train)
  stats = {"mean": jnp.zeros(LATENT[-1]), "std": jnp.ones(LATENT[-1])}
  null = fields.null_text_fields(text, None)
  step, loss_fn = dit_step.make_train_step(
    denoiser=denoiser,
    diffusion=process,
    latent_stats=stats,
    null_fields=null,
    cfg_dropout=cfg_dropout,
    tx=tx,
    ema_decay=0.9,
  )
  init = dit_step.make_init_fn(denoiser, tx, ema=True)
  state = partitioning.unbox(init(jax.random.PRNGKey(0)))
  return config, text, denoiser, process, stats, step, loss_fn, state


def _batch(text, n=4, seed=0):
  rng = np.random.default_rng(seed)
  ids, mask = text.tokenize(["a red circle moving left", "a blue square moving up"] * (n // 2))
  # Two fixed latents (one per caption): memorisable, so the loss can fall far.
  patterns = rng.normal(size=(2,) + LATENT).astype(np.float32)
  return {
    "latent_mean": np.concatenate([patterns] * (n // 2)),
    "latent_logvar": np.full((n,) + LATENT, -8.0, np.float32),
    "text_ids": ids,
    "text_mask": mask,
  }


def test_params_hold_dit_and_trainable_text_encoder():
  *_, state = _setup()
  assert set(state.params) == {"dit", "text"}
  assert state.ema_params is not None


def test_train_steps_reduce_the_loss_and_update_ema():
  _, text, _, _, _, step, loss_fn, state = _setup(cfg_dropout=0.0, lr=1e-2)
  batch = _batch(text)
  step, loss_fn = jax.jit(step), jax.jit(loss_fn)
  # The flow loss draws t and noise at random: average a few draws so the comparison is fair.
  mean_loss = lambda s: np.mean([float(loss_fn(s.params, batch, jax.random.PRNGKey(k))[0]) for k in range(6)])
  first = mean_loss(state)
  for i in range(60):
    state, metrics = step(state, batch, jax.random.fold_in(jax.random.PRNGKey(2), i))
  assert int(state.step) == 60
  assert np.isfinite(float(metrics["grad_norm"]))
  last = mean_loss(state)
  assert last < 0.8 * first, (first, last)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), state.ema_params, state.params))
  assert max(float(m) for m in moved) > 0  # EMA lags the raw params


@pytest.mark.parametrize("kind,learn_sigma,terms", [("flow", False, {"mse"}), ("ddpm", True, {"mse", "vlb"})])
def test_train_step_logs_the_loss_terms(kind, learn_sigma, terms):
  _, text, _, _, _, step, _, state = _setup(diffusion={"kind": kind}, learn_sigma=learn_sigma)
  _, metrics = jax.jit(step)(state, _batch(text), jax.random.PRNGKey(5))
  assert set(metrics) == {"loss", "grad_norm"} | terms
  assert all(np.shape(v) == () and np.isfinite(float(v)) for v in metrics.values()), metrics
  # Loss weighting "none": the loss is the mean MSE, plus the mean VLB term with the hybrid loss.
  expected = float(metrics["mse"]) + (float(metrics["vlb"]) if "vlb" in terms else 0.0)
  assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
  if "vlb" in terms:
    assert float(metrics["vlb"]) > 0


def test_loss_terms_are_batch_means_of_what_the_aux_has():
  aux = {"t": jnp.arange(4), "mse": jnp.array([1.0, 2.0, 3.0, 6.0]), "weight": jnp.ones(4)}
  assert {k: float(v) for k, v in dit_step.loss_terms(aux).items()} == {"mse": 3.0}
  aux["vlb"] = jnp.array([0.5, 0.5, 1.0, 2.0])
  assert {k: float(v) for k, v in dit_step.loss_terms(aux).items()} == {"mse": 3.0, "vlb": 1.0}


def test_full_cfg_dropout_makes_the_loss_ignore_the_caption():
  _, text, *_, loss_fn, state = _setup(cfg_dropout=1.0)
  a = _batch(text, seed=0)
  b = dict(a)
  b["text_ids"], b["text_mask"] = text.tokenize(["a white triangle staying still"] * 4)
  rng = jax.random.PRNGKey(3)
  loss_fn = jax.jit(loss_fn)
  assert float(loss_fn(state.params, a, rng)[0]) == pytest.approx(float(loss_fn(state.params, b, rng)[0]), rel=1e-6)


def test_null_fields_are_the_empty_prompt():
  _, text, *_ = _setup()
  null = fields.null_text_fields(text, None)
  ids, mask = text.tokenize([""])
  np.testing.assert_array_equal(null["text_ids"], ids[0])
  np.testing.assert_array_equal(null["text_mask"], mask[0])


def test_eval_loss_reports_fixed_timesteps_and_zero_baseline():
  _, text, denoiser, process, stats, *_, state = _setup()
  eval_loss = jax.jit(dit_step.make_eval_loss(denoiser=denoiser, diffusion=process, latent_stats=stats))
  out = jax.device_get(eval_loss(state.params, _batch(text), jax.random.PRNGKey(0)))
  assert set(out) == {f"loss_t{t}" for t in dit_step.EVAL_TIMESTEPS} | {"loss", "loss_zero_prediction"}
  # At init the final layer is zero (adaLN-Zero), so the model predicts zero: equal to the baseline at t=0.5.
  assert float(out["loss_t0.5"]) == pytest.approx(float(out["loss_zero_prediction"]), rel=1e-5)


def test_num_tokens():
  assert dit_step.num_tokens((2, 5, 8, 8, 4), (1, 2, 2)) == 80


def test_inference_params_are_the_ema_when_kept():
  from sora_jax.training.train_state import inference_params

  *_, state = _setup()
  assert inference_params(state) is state.ema_params
  assert inference_params(state, use_ema=False) is state.params
  assert inference_params(state.replace(ema_params=None)) is state.params
