"""Diffusion processes (rectified flow, DDPM) and classifier-free guidance."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # pylint: disable=g-import-not-at-top
from sora_jax.diffusion import DDPM, FlowMatching, build_diffusion, ddpm, flow, guidance

X_SHAPE = (6, 3, 4, 4, 2)  # [B, T, H, W, C]


def data(seed=0, shape=X_SHAPE):
  """2 + N(0, 1) test data (numpy RNG: no JAX compile for test inputs)."""
  return jnp.asarray(2.0 + np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ---------------------------------------------------------------- flow
def test_flow_interpolation_and_velocity_target_are_consistent():
  fm = FlowMatching(shift=1.0)
  x0, noise = data(0), data(1) - 2.0
  ones, zeros = jnp.ones(6), jnp.zeros(6)
  np.testing.assert_allclose(fm.add_noise(x0, noise, zeros), x0)
  np.testing.assert_allclose(fm.add_noise(x0, noise, ones), noise)
  t, dt = jnp.linspace(0.1, 0.9, 6), 1e-3
  finite_diff = (fm.add_noise(x0, noise, t + dt) - fm.add_noise(x0, noise, t - dt)) / (2 * dt)
  np.testing.assert_allclose(finite_diff, fm.target(x0, noise), atol=2e-3)
  x_t = fm.add_noise(x0, noise, t)
  sigma = t.reshape(6, 1, 1, 1, 1)
  np.testing.assert_allclose(fm.predict_x0(fm.target(x0, noise), x_t, 1 - sigma, sigma), x0, atol=1e-5)


def test_logit_normal_samples_lie_in_the_unit_interval_with_median_sigmoid_mean():
  for mean in (0.0, 1.0):
    fm = FlowMatching(t_sampling="logit_normal", logit_mean=mean, logit_std=1.0, shift=1.0)
    t = np.asarray(fm.sample_t(jax.random.key(0), 20_000))
    assert ((t > 0) & (t < 1)).all()
    assert abs(np.median(t) - 1 / (1 + np.exp(-mean))) < 0.01
  t = np.asarray(FlowMatching(t_sampling="uniform", shift=1.0).sample_t(jax.random.key(1), 20_000))
  assert ((t >= 0) & (t < 1)).all() and abs(t.mean() - 0.5) < 0.01


def test_shift_is_identity_at_one_monotone_and_keeps_endpoints():
  t = np.linspace(0, 1, 101)
  np.testing.assert_allclose(flow.shift_timesteps(t, 1.0), t)
  for s in (0.5, 2.0, 3.0, 10.0):
    shifted = flow.shift_timesteps(t, s)
    assert (np.diff(shifted) > 0).all()
    np.testing.assert_allclose(shifted[[0, -1]], [0.0, 1.0])
    assert ((shifted >= t) if s > 1 else (shifted <= t)).all()
  with pytest.raises(ValueError, match="> 0"):
    flow.shift_timesteps(t, 0.0)
  # A logit-normal median m moves to s m / (1 + (s - 1) m).
  t = FlowMatching(shift=3.0).sample_t(jax.random.key(0), 20_000)
  assert abs(float(jnp.median(t)) - 0.75) < 0.01


def test_automatic_shift_is_linear_in_tokens_and_clipped():
  fm = FlowMatching(shift=0.0, base_shift_tokens=256, max_shift_tokens=4096, max_shift=3.0)
  assert fm.shift_for(256) == pytest.approx(1.0)
  assert fm.shift_for(4096) == pytest.approx(3.0)
  assert fm.shift_for((256 + 4096) // 2) == pytest.approx(2.0)
  assert fm.shift_for(16) == 1.0 and fm.shift_for(100_000) == 3.0
  assert FlowMatching(shift=5.0).shift_for(16) == 5.0
  with pytest.raises(ValueError, match="num_tokens"):
    fm.shift_for(None)
  # Sampling uses the same shift as training.
  points = fm.sampling_points(8, num_tokens=4096)
  np.testing.assert_allclose(points["t"], flow.shift_timesteps(np.linspace(1, 0, 9), 3.0))
  np.testing.assert_allclose(points["t_model"], 1000 * points["t"])


def test_flow_loss_is_zero_for_the_exact_velocity_and_known_for_zero():
  fm = FlowMatching(shift=2.0)
  x0 = data(0)

  def oracle(x_t, t_model, cond):  # recovers v = noise - x0 from x_t, knowing x0
    t = (t_model / 1000.0).reshape(-1, 1, 1, 1, 1)
    return (x_t - x0) / t + cond

  loss, aux = jax.jit(lambda r: fm.loss(oracle, x0, 0.0, r))(jax.random.key(3))
  assert aux["t"].shape == (6,) and aux["mse"].shape == (6,)
  assert float(loss) < 1e-6
  big_x0 = data(1, (64, 4, 8, 8, 2))
  zero = lambda x, t, c: jnp.zeros_like(x)
  zero_loss, fixed = jax.jit(lambda x: (fm.loss(zero, x, None, jax.random.key(3))[0],
                                        fm.loss_at(zero, x, None, jax.random.key(3), 0.25)))(big_x0)
  expected = 1.0 + float(jnp.mean(big_x0 ** 2))  # E|noise - x0|^2
  assert abs(float(zero_loss) - expected) < 0.1
  assert abs(float(fixed) - expected) < 0.1
  with pytest.raises(ValueError, match="shape"):
    jax.eval_shape(lambda: fm.loss(lambda x, t, c: jnp.concatenate([x, x], -1), x0, None, jax.random.key(0)))


def test_flow_min_snr_weighting():
  fm = FlowMatching(shift=1.0, loss_weighting="min_snr", min_snr_gamma=5.0)
  t = jnp.array([0.05, 0.3, 0.5, 0.9])
  snr = ((1 - t) / t) ** 2
  np.testing.assert_allclose(fm.loss_weight(t), jnp.minimum(snr, 5.0) * t ** 2, rtol=1e-5)
  with pytest.raises(ValueError, match="loss_weighting"):
    FlowMatching(loss_weighting="p2")


# ---------------------------------------------------------------- DDPM
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_schedules(schedule):
  d = DDPM(schedule=schedule)
  abar = d.alphas_cumprod
  assert abar.shape == (1000,) and (np.diff(abar) < 0).all() and ((abar > 0) & (abar < 1)).all()
  assert abar[0] > 0.999 and abar[-1] < 1e-3
  if schedule == "linear":
    np.testing.assert_allclose(d.betas[[0, -1]], [1e-4, 0.02])
  else:  # alpha_bar(k) = f(k / T) / f(0): check one interior value of the closed form
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(abar[499], f(500 / 1000) / f(0), rtol=1e-6)


def test_epsilon_v_and_x0_conversions_are_consistent():
  x0, eps = data(0), data(1) - 2.0
  alpha = jnp.sqrt(jnp.array(0.3))
  sigma = jnp.sqrt(1 - alpha ** 2)
  x_t = alpha * x0 + sigma * eps
  v = ddpm.velocity_target(x0, eps, alpha, sigma)
  np.testing.assert_allclose(ddpm.x0_from_velocity(x_t, v, alpha, sigma), x0, atol=1e-5)
  np.testing.assert_allclose(ddpm.epsilon_from_velocity(x_t, v, alpha, sigma), eps, atol=1e-5)
  np.testing.assert_allclose(ddpm.x0_from_epsilon(x_t, eps, alpha, sigma), x0, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddpm_loss_is_zero_for_the_exact_prediction_even_with_learned_sigma(prediction):
  d = DDPM(schedule="cosine", prediction=prediction)
  x0 = data(0)
  abar_table = jnp.asarray(d.alphas_cumprod, jnp.float32)

  def oracle(x_t, k, cond):
    abar = abar_table[k.astype(jnp.int32)].reshape(-1, 1, 1, 1, 1)
    alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
    eps = (x_t - alpha * x0) / sigma
    pred = eps if prediction == "epsilon" else ddpm.velocity_target(x0, eps, alpha, sigma)
    return jnp.concatenate([pred, jnp.full_like(pred, 7.0)], axis=-1)  # learn_sigma: [pred, variance]

  loss, aux = jax.jit(lambda r: d.loss(oracle, x0, None, r))(jax.random.key(0))
  assert aux["t"].dtype == jnp.int32 and ((aux["t"] >= 0) & (aux["t"] < 1000)).all()
  assert float(loss) < 1e-5
  zero_loss, _ = jax.jit(lambda x: d.loss(lambda x, k, c: jnp.zeros_like(x), x, None, jax.random.key(0)))(x0)
  assert float(zero_loss) > 0.1
  with pytest.raises(ValueError, match="twice"):
    jax.eval_shape(lambda: d.loss(lambda x, k, c: x[..., :1], x0, None, jax.random.key(0)))


def test_ddpm_sampling_points_are_trailing_and_end_clean():
  d = DDPM()
  p = d.sampling_points(10)
  np.testing.assert_array_equal(p["t"], [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, -1])
  assert p["alpha"][-1] == 1.0 and p["sigma"][-1] == 0.0
  np.testing.assert_allclose(p["alpha"] ** 2 + p["sigma"] ** 2, 1.0)
  with pytest.raises(ValueError, match="num_steps"):
    d.sampling_points(1001)


def test_build_diffusion_from_config():
  cfg = base.get_config().diffusion
  assert isinstance(build_diffusion(cfg), FlowMatching)
  cfg.kind, cfg.ddpm_prediction, cfg.ddpm_schedule = "ddpm", "v", "cosine"
  process = build_diffusion(cfg)
  assert isinstance(process, DDPM) and process.prediction == "v" and process.schedule == "cosine"
  cfg.kind = "edm"
  with pytest.raises(ValueError, match="not one of"):
    build_diffusion(cfg)


# ---------------------------------------------------------------- guidance
def toy_model(x, t, cond):
  return x * cond["scale"][:, None] + cond["shift"][:, None] + 0.001 * t[:, None]


def toy_cond(batch=4):
  return {"scale": jnp.arange(1.0, batch + 1), "shift": jnp.linspace(-1, 1, batch)}


def test_cfg_at_scale_one_equals_the_conditional_prediction():
  x, t = data(0, (4, 3)) - 2.0, jnp.full((4,), 500.0)
  cond, uncond = toy_cond(), {"scale": jnp.zeros(()), "shift": jnp.zeros(())}
  guided = guidance.cfg_model_fn(toy_model, cond, uncond, jnp.float32(1.0))
  np.testing.assert_array_equal(guided(x, t), toy_model(x, t, cond))


def test_cfg_batches_both_branches_into_one_forward():
  calls = []

  def model(x, t, cond):
    calls.append(x.shape[0])
    return toy_model(x, t, cond)

  x, t = data(0, (4, 3)) - 2.0, jnp.full((4,), 500.0)
  cond, uncond = toy_cond(), {"scale": jnp.ones((1,)), "shift": jnp.zeros((1,))}
  out = guidance.cfg_model_fn(model, cond, uncond, 4.0)(x, t)
  assert calls == [8]
  pred_c = toy_model(x, t, cond)
  pred_u = toy_model(x, t, jax.tree.map(lambda a: jnp.broadcast_to(a, (4,)), uncond))
  np.testing.assert_allclose(out, pred_u + 4.0 * (pred_c - pred_u), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(guidance.conditional_model_fn(model, cond)(x, t), pred_c)
  with pytest.raises(ValueError, match="structure"):
    guidance.cfg_model_fn(model, cond, {"scale": jnp.ones(())}, 4.0)


def test_drop_condition_replaces_whole_examples_with_probability_p():
  cond = {"ids": jnp.ones((2000, 5), jnp.int32), "mask": jnp.ones((2000, 5), bool), "pooled": jnp.ones((2000, 3))}
  null = {"ids": jnp.zeros((5,), jnp.int32), "mask": jnp.array([True, True, False, False, False]),
          "pooled": jnp.zeros((3,))}
  out = guidance.drop_condition(jax.random.key(0), cond, null, 0.3)
  dropped = np.asarray(out["ids"][:, 0] == 0)
  assert abs(dropped.mean() - 0.3) < 0.04
  np.testing.assert_array_equal(out["pooled"][:, 0] == 0, dropped)  # every leaf of an example together
  np.testing.assert_array_equal(out["mask"][dropped][:, 2], False)
  assert out["mask"].dtype == jnp.bool_ and out["ids"].dtype == jnp.int32
  never = guidance.drop_condition(jax.random.key(0), cond, null, 0.0)
  np.testing.assert_array_equal(never["ids"], cond["ids"])
  always = guidance.drop_condition(jax.random.key(0), cond, null, 1.0)
  assert not always["ids"].any()
  with pytest.raises(ValueError, match="does not fit"):
    guidance.drop_condition(jax.random.key(0), cond, {**null, "pooled": jnp.zeros((4,))}, 0.1)
