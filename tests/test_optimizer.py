"""Learning-rate schedule, AdamW + clipping + accumulation, and TrainState / EMA updates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from sora_jax.training import optimizer, train_state


def _train_cfg(**overrides):
  cfg = base.get_config().train
  defaults = dict(steps=100, learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1, grad_clip=0.0, weight_decay=0.0)
  cfg.update({**defaults, **overrides})
  return cfg


def test_warmup_then_cosine_to_the_floor():
  schedule = optimizer.make_lr_schedule(_train_cfg())
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(schedule(55), 0.1 + 0.9 * 0.5, atol=1e-6)  # half-way through the cosine
  np.testing.assert_allclose(schedule(100), 0.1, atol=1e-6)
  assert schedule(30) > schedule(60) > schedule(90)


def test_constant_schedule_and_no_warmup():
  schedule = optimizer.make_lr_schedule(_train_cfg(lr_schedule="constant", warmup_steps=0))
  np.testing.assert_allclose([schedule(0), schedule(50), schedule(99)], [1.0, 1.0, 1.0])


def test_learning_rate_at_counts_optimizer_updates_under_accumulation():
  cfg = _train_cfg(grad_accum_steps=4)
  assert optimizer.learning_rate_at(cfg, 20) == pytest.approx(0.5)  # micro-step 20 = update 5


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"lr_schedule": "linear"}, "lr_schedule"),
    ({"grad_accum_steps": 0}, "grad_accum_steps"),
    ({"learning_rate": 0.0}, "learning_rate"),
  ],
)
def test_bad_train_config_is_a_clear_error(overrides, match):
  with pytest.raises(ValueError, match=match):
    optimizer.make_optimizer(_train_cfg(**overrides))


def test_adamw_first_step_and_weight_decay():
  cfg = _train_cfg(warmup_steps=0, lr_schedule="constant", learning_rate=0.1, weight_decay=0.5)
  tx = optimizer.make_optimizer(cfg)
  params = {"w": jnp.array([2.0, -2.0])}
  updates, _ = tx.update({"w": jnp.array([3.0, -0.5])}, tx.init(params), params)
  # First Adam step moves each weight by -lr * sign(g); decoupled decay adds -lr * wd * w.
  np.testing.assert_allclose(updates["w"], [-0.1 - 0.1 * 0.5 * 2.0, 0.1 + 0.1 * 0.5 * 2.0], rtol=1e-4)


def test_global_norm_clipping_happens_before_adam():
  tx = optimizer.make_optimizer(_train_cfg(grad_clip=1.0, b2=0.999))
  params = {"w": jnp.zeros(2)}
  _, state = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
  adam_state = state[1][0]
  # Adam's second moment saw the clipped gradient [0.6, 0.8] (norm 1), not [30, 40].
  np.testing.assert_allclose(adam_state.nu["w"], 0.001 * np.array([0.36, 0.64]), rtol=1e-5)


def test_accumulation_equals_one_big_batch():
  base_cfg = dict(warmup_steps=0, lr_schedule="constant", learning_rate=0.1, grad_clip=1.0)
  big = optimizer.make_optimizer(_train_cfg(**base_cfg))
  accum = optimizer.make_optimizer(_train_cfg(grad_accum_steps=2, **base_cfg))
  params = {"w": jnp.array([1.0, 2.0, -1.0])}
  g1, g2 = {"w": jnp.array([0.3, -0.2, 0.1])}, {"w": jnp.array([0.1, 0.4, -0.3])}
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  big_updates, _ = big.update(mean, big.init(params), params)
  state = accum.init(params)
  first, state = accum.update(g1, state, params)
  np.testing.assert_array_equal(first["w"], 0.0)  # no update until the 2nd micro-batch
  second, _ = accum.update(g2, state, params)
  np.testing.assert_allclose(second["w"], big_updates["w"], rtol=1e-6)


def test_train_state_apply_gradients_and_ema():
  tx = optax.sgd(1.0)
  state = train_state.create_train_state({"w": jnp.array([1.0])}, tx, ema=True)
  state = state.apply_gradients({"w": jnp.array([0.5])}, tx, ema_decay=0.999)
  assert int(state.step) == 1
  np.testing.assert_allclose(state.params["w"], [0.5])
  d0 = 1.0 / 10.0  # warmed-up decay at step 0: min(0.999, 1/10)
  np.testing.assert_allclose(state.ema_params["w"], [d0 * 1.0 + (1 - d0) * 0.5], rtol=1e-6)
  assert float(train_state.ema_decay_at(10_000, 0.999)) == pytest.approx(0.999)


def test_train_state_without_ema_and_with_logical_boxes():
  tx = optimizer.make_optimizer(_train_cfg())
  boxed = {"w": nn.LogicallyPartitioned(jnp.ones((4, 2)), ("embed", "mlp"))}
  state = train_state.create_train_state(boxed, tx, ema=False)
  assert state.ema_params is None
  mu = state.opt_state[0].mu["w"]  # adamw = chain(scale_by_adam, decay, scale_by_lr); no clip here
  assert isinstance(mu, nn.LogicallyPartitioned) and mu.names == ("embed", "mlp")
  step = jax.jit(lambda s, g: s.apply_gradients(g, tx))
  plain = nn.meta.unbox(state)
  new = step(plain, {"w": jnp.ones((4, 2))})
  assert int(new.step) == 1 and new.ema_params is None


@pytest.mark.parametrize("grad_clip, weight_decay", [(0.0, 0.0), (1.0, 0.1), (100.0, 0.0)])
def test_fused_adamw_equals_the_optax_chain(grad_clip, weight_decay):
  """Same state pytree (checkpoints restore either way) and the same params after 6 updates, to float32
  rounding: the fused update computes the same expressions in one pass (rtol 1e-5 absorbs b^k computed
  as a float power and the clip's g * (c / |g|) for optax's (g / |g|) * c)."""
  cfg = _train_cfg(grad_clip=grad_clip, weight_decay=weight_decay, learning_rate=0.01, warmup_steps=3)
  fused_tx = optimizer.make_optimizer(cfg)
  cfg.fused_optimizer = False
  optax_tx = optimizer.make_optimizer(cfg)
  key = jax.random.key(0)
  params = {"w": jax.random.normal(key, (4, 3)), "b": jnp.zeros((3,)), "s": jnp.ones(())}
  states = [fused_tx.init(params), optax_tx.init(params)]
  assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
  current = [params, params]
  for step in range(6):
    grads = jax.tree.map(lambda p, s=step: 3.0 * jax.random.normal(jax.random.fold_in(key, s), p.shape), params)
    for i, tx in enumerate((fused_tx, optax_tx)):
      updates, states[i] = jax.jit(tx.update)(grads, states[i], current[i])
      current[i] = optax.apply_updates(current[i], updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), current[0], current[1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), states[0], states[1])
  assert not np.allclose(current[0]["w"], params["w"])  # it did move


def test_fused_adamw_needs_params_and_accumulates_like_optax():
  tx = optimizer.make_optimizer(_train_cfg())
  params = {"w": jnp.ones((2,))}
  with pytest.raises(ValueError, match="needs params"):
    tx.update({"w": jnp.ones((2,))}, tx.init(params))
  cfg = _train_cfg(grad_accum_steps=2, grad_clip=1.0, warmup_steps=0, lr_schedule="constant", learning_rate=0.1)
  accum = optimizer.make_optimizer(cfg)
  state = accum.init(params)
  grads = [{"w": jnp.array([1.0, -3.0])}, {"w": jnp.array([3.0, 1.0])}]
  updates, state = accum.update(grads[0], state, params)
  np.testing.assert_array_equal(updates["w"], 0.0)  # a micro-batch: accumulated only
  updates, state = accum.update(grads[1], state, params)
  # The mean gradient [2, -1] (norm sqrt(5) > 1: clipped, direction kept); Adam's first step is -lr * sign.
  np.testing.assert_allclose(updates["w"], [-0.1, 0.1], rtol=1e-4)
