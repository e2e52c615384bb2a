"""Diffusion processes (rectified flow, DDPM) and classifier-free guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sora_jax import configuration
from sora_jax.diffusion import DDPM, FlowMatching, build_diffusion, ddpm, flow, guidance, samplers

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


def test_flow_x0_prediction_derives_the_velocity_and_floors_t():
  cfg = base.get_config().diffusion
  cfg.flow_prediction, cfg.flow_x0_min_t = "x0", 0.2
  fm = build_diffusion(cfg)
  assert (fm.prediction, fm.x0_min_t) == ("x0", 0.2)
  x0, noise = data(0), data(1) - 2.0
  t = jnp.asarray([0.05, 0.1, 0.2, 0.5, 0.9, 1.0])
  x_t = fm.add_noise(x0, noise, t)
  v = fm.velocity(x0, x_t, fm.model_time(t))  # the network's output is x0 itself
  exact = np.asarray(t) >= 0.2  # below the floor v is scaled down by t / 0.2
  np.testing.assert_allclose(np.asarray(v)[exact], np.asarray(fm.target(x0, noise))[exact], atol=1e-4)
  np.testing.assert_allclose(
    np.asarray(v)[:2],
    (np.asarray(t[:2]) / 0.2)[:, None, None, None, None] * np.asarray(fm.target(x0, noise))[:2],
    atol=1e-4,
  )
  np.testing.assert_allclose(fm.predict_x0(x0, x_t, None, t), x0)
  oracle = lambda x, t_model, cond: x0  # noqa: E731
  assert float(fm.loss_at(oracle, x0, None, jax.random.key(0), 0.5)) < 1e-8
  assert float(fm.loss_at(oracle, x0, None, jax.random.key(0), 0.1)) > 0.1  # under the floor
  with pytest.raises(ValueError, match="flow_prediction='eps'"):
    FlowMatching(prediction="eps")


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
  zero_loss, fixed = jax.jit(
    lambda x: (fm.loss(zero, x, None, jax.random.key(3))[0], fm.loss_at(zero, x, None, jax.random.key(3), 0.25))
  )(big_x0)
  expected = 1.0 + float(jnp.mean(big_x0**2))  # E|noise - x0|^2
  assert abs(float(zero_loss) - expected) < 0.1
  assert abs(float(fixed) - expected) < 0.1
  with pytest.raises(ValueError, match="shape"):
    jax.eval_shape(lambda: fm.loss(lambda x, t, c: jnp.concatenate([x, x], -1), x0, None, jax.random.key(0)))


def test_flow_min_snr_weighting():
  fm = FlowMatching(shift=1.0, loss_weighting="min_snr", min_snr_gamma=5.0)
  t = jnp.array([0.05, 0.3, 0.5, 0.9])
  snr = ((1 - t) / t) ** 2
  np.testing.assert_allclose(fm.loss_weight(t), jnp.minimum(snr, 5.0) * t**2, rtol=1e-5)
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
  sigma = jnp.sqrt(1 - alpha**2)
  x_t = alpha * x0 + sigma * eps
  v = ddpm.velocity_target(x0, eps, alpha, sigma)
  np.testing.assert_allclose(ddpm.x0_from_velocity(x_t, v, alpha, sigma), x0, atol=1e-5)
  np.testing.assert_allclose(ddpm.epsilon_from_velocity(x_t, v, alpha, sigma), eps, atol=1e-5)
  np.testing.assert_allclose(ddpm.x0_from_epsilon(x_t, eps, alpha, sigma), x0, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddpm_loss_is_zero_for_the_exact_prediction_even_with_learned_sigma(prediction):
  x0 = data(0)

  def oracle_with(process, variance):
    abar_table = jnp.asarray(process.alphas_cumprod, jnp.float32)

    def oracle(x_t, k, cond):
      abar = abar_table[k.astype(jnp.int32)].reshape(-1, 1, 1, 1, 1)
      alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
      eps = (x_t - alpha * x0) / sigma
      pred = eps if prediction == "epsilon" else ddpm.velocity_target(x0, eps, alpha, sigma)
      return jnp.concatenate([pred, jnp.full_like(pred, variance)], axis=-1)  # learn_sigma: [pred, variance]

    return oracle

  d = DDPM(schedule="cosine", prediction=prediction, learn_sigma_loss="mse")
  loss, aux = jax.jit(lambda r: d.loss(oracle_with(d, 7.0), x0, None, r))(jax.random.key(0))
  assert aux["t"].dtype == jnp.int32 and ((aux["t"] >= 0) & (aux["t"] < 1000)).all()
  assert float(loss) < 1e-5 and "vlb" not in aux
  zero_loss, _ = jax.jit(lambda x: d.loss(lambda x, k, c: jnp.zeros_like(x), x, None, jax.random.key(0)))(x0)
  assert float(zero_loss) > 0.1
  with pytest.raises(ValueError, match="twice"):
    jax.eval_shape(lambda: d.loss(lambda x, k, c: x[..., :1], x0, None, jax.random.key(0)))
  # Hybrid: the exact mean with the posterior variance (v = -1) also zeroes the KL terms (k > 0);
  # a C-channel model keeps the plain MSE.
  hybrid = DDPM(schedule="cosine", prediction=prediction)
  k = jnp.array([1, 5, 100, 500, 900, 999])
  loss, aux = jax.jit(lambda r: hybrid.loss(oracle_with(hybrid, -1.0), x0, None, r, t=k))(jax.random.key(0))
  assert float(jnp.max(aux["mse"])) < 1e-5 and float(jnp.max(jnp.abs(aux["vlb"]))) < 1e-4
  np.testing.assert_allclose(loss, jnp.mean(aux["mse"] + aux["vlb"]), rtol=1e-6)
  _, aux = jax.jit(lambda r: hybrid.loss(oracle_with(hybrid, 7.0), x0, None, r, t=k))(jax.random.key(0))
  # A wrong variance costs bits where beta and beta_tilde differ (small k; they merge at large k).
  assert (aux["vlb"][:3] > 1e-3).all() and (aux["vlb"] >= -1e-6).all()
  _, aux = hybrid.loss(lambda x, k, c: jnp.zeros_like(x), x0, None, jax.random.key(0))
  assert "vlb" not in aux


# ---------------------------------------------------------------- DDPM: learned variance (hybrid loss)
def test_normal_kl_matches_numerical_integration():
  from scipy import integrate, stats  # pylint: disable=g-import-not-at-top

  cases = [(0.0, 0.0, 0.0, 0.0), (0.3, -1.0, -0.2, 0.5), (2.0, -4.0, 1.5, -3.0), (-1.0, 1.0, 0.5, -0.7)]
  for m1, lv1, m2, lv2 in cases:
    p, q = stats.norm(m1, np.exp(0.5 * lv1)), stats.norm(m2, np.exp(0.5 * lv2))
    lo, hi = m1 - 12 * np.exp(0.5 * lv1), m1 + 12 * np.exp(0.5 * lv1)
    ref, _ = integrate.quad(lambda x, p=p, q=q: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), lo, hi, epsabs=1e-12, limit=200)
    got = float(ddpm.normal_kl(jnp.float32(m1), jnp.float32(lv1), jnp.float32(m2), jnp.float32(lv2)))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6, err_msg=str((m1, lv1, m2, lv2)))
  # Broadcasting over arrays, against the closed form in float64.
  rng = np.random.default_rng(0)
  m1, m2, lv1 = rng.standard_normal((3, 5, 7))
  lv2 = rng.standard_normal(7)
  ref = np.log(np.exp(0.5 * lv2) / np.exp(0.5 * lv1)) + (np.exp(lv1) + (m1 - m2) ** 2) / (2 * np.exp(lv2)) - 0.5
  np.testing.assert_allclose(
    ddpm.normal_kl(*(jnp.asarray(a, jnp.float32) for a in (m1, lv1, m2, lv2))), ref, rtol=1e-5, atol=1e-6
  )


def test_discretized_log_likelihood_matches_scipy_bin_probabilities():
  from scipy import stats  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(1)
  levels = np.concatenate([[-1.0, 1.0], rng.integers(0, 256, 60) / 127.5 - 1.0])  # 8-bit data in [-1, 1]
  x = np.concatenate([levels, [-1.7, 2.3]])  # latents outside [-1, 1] fall in the open outer bins
  mean = x + rng.normal(0, 0.05, x.shape)
  log_scale = np.log(rng.uniform(0.01, 0.3, x.shape))
  args = (jnp.asarray(a, jnp.float32) for a in (x, mean, log_scale))
  got = np.asarray(ddpm.discretized_gaussian_log_likelihood(*args))
  dist = stats.norm(mean, np.exp(log_scale))
  upper = np.where(x > 0.999, 1.0, dist.cdf(x + 1 / 255))
  lower = np.where(x < -0.999, 0.0, dist.cdf(x - 1 / 255))
  # ADM's tanh approximation of Phi is within 1.8e-4 of scipy's exact CDF, so bin masses within 3.6e-4.
  np.testing.assert_allclose(np.exp(got), upper - lower, atol=3.6e-4)
  assert (upper - lower).min() > 1e-3  # the cases tested are not floored at 1e-12
  # Far outside its bin the probability is floored at 1e-12 (finite loss and gradients).
  floored = ddpm.discretized_gaussian_log_likelihood(jnp.float32(0.0), jnp.float32(5.0), jnp.float32(np.log(0.01)))
  np.testing.assert_allclose(floored, np.log(1e-12), rtol=1e-6)


def _adm_hybrid_reference(d, x0, noise, out, k):
  """ADM's hybrid loss (improved-diffusion / DiT gaussian_diffusion.py), hand-written in float64 numpy."""
  betas = d.betas
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1 - abar_prev) / (1 - abar)
  post_log_var = np.log(np.append(post_var[1], post_var[1:]))
  coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
  coef2 = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)
  b = lambda a: a[k].reshape(-1, *([1] * (x0.ndim - 1)))
  c = x0.shape[-1]
  pred, var_values = out[..., :c], out[..., c:]
  x_t = np.sqrt(b(abar)) * x0 + np.sqrt(1 - b(abar)) * noise
  if d.prediction == "epsilon":
    target = noise
    x0_hat = np.sqrt(1 / b(abar)) * x_t - np.sqrt(1 / b(abar) - 1) * pred
  else:
    target = np.sqrt(b(abar)) * noise - np.sqrt(1 - b(abar)) * x0
    x0_hat = np.sqrt(b(abar)) * x_t - np.sqrt(1 - b(abar)) * pred
  mean_flat = lambda a: a.reshape(a.shape[0], -1).mean(axis=1)
  mse = mean_flat((target - pred) ** 2)
  true_mean = b(coef1) * x0 + b(coef2) * x_t
  model_mean = b(coef1) * x0_hat + b(coef2) * x_t
  frac = (var_values + 1) / 2
  log_var = frac * np.log(b(betas)) + (1 - frac) * b(post_log_var)
  lv1 = b(post_log_var)
  kl = 0.5 * (-1 + log_var - lv1 + np.exp(lv1 - log_var) + (true_mean - model_mean) ** 2 * np.exp(-log_var))
  cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
  inv_std = np.exp(-0.5 * log_var)
  cdf_plus = cdf(inv_std * (x0 - model_mean + 1 / 255))
  cdf_min = cdf(inv_std * (x0 - model_mean - 1 / 255))
  log_probs = np.where(
    x0 < -0.999,
    np.log(np.maximum(cdf_plus, 1e-12)),
    np.where(x0 > 0.999, np.log(np.maximum(1 - cdf_min, 1e-12)), np.log(np.maximum(cdf_plus - cdf_min, 1e-12))),
  )
  vb = np.where(k == 0, -mean_flat(log_probs) / np.log(2), mean_flat(kl) / np.log(2)) * d.num_timesteps / 1000.0
  return x_t, mse, vb, np.mean(mse + vb)


@pytest.mark.parametrize(
  "schedule,prediction,num_timesteps", [("linear", "epsilon", 1000), ("cosine", "v", 1000), ("linear", "epsilon", 250)]
)
def test_hybrid_loss_matches_a_numpy_reference_of_the_adm_formulas(schedule, prediction, num_timesteps):
  d = DDPM(schedule=schedule, prediction=prediction, num_timesteps=num_timesteps)
  rng = np.random.default_rng(2)
  x0 = jnp.asarray(np.clip(rng.normal(0, 0.6, X_SHAPE), -1, 1), jnp.float32)  # some values on the edges
  c = X_SHAPE[-1]
  out = np.concatenate([rng.standard_normal(X_SHAPE), rng.uniform(-1, 1, X_SHAPE)], -1).astype(np.float32)
  k = np.array([0, 0, 1, 7, num_timesteps // 2, num_timesteps - 1])
  seen = []

  def model(x_t, t_model, cond):
    seen.append((np.asarray(x_t, np.float64), np.asarray(t_model)))
    return jnp.asarray(out)

  rng_key = jax.random.key(3)
  loss, aux = d.loss(model, x0, None, rng_key, t=jnp.asarray(k))  # eager: the model sees concrete x_t
  noise = np.asarray(jax.random.normal(jax.random.split(rng_key)[1], X_SHAPE), np.float64)  # the loss's draw
  x_t, mse, vb, ref_loss = _adm_hybrid_reference(d, np.asarray(x0, np.float64), noise, out.astype(np.float64), k)
  np.testing.assert_allclose(seen[0][0], x_t, atol=1e-5)  # same noise as the loss drew
  np.testing.assert_array_equal(seen[0][1], k)
  np.testing.assert_allclose(aux["mse"], mse, rtol=1e-4)
  np.testing.assert_allclose(aux["vlb"], vb, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
  assert out[..., c:].min() < 0 < out[..., c:].max() and (vb > 0).all()


def test_vlb_trains_only_the_variance_half():
  d = DDPM(schedule="linear")
  x0 = jnp.clip(data(0) - 2.0, -1, 1)
  k = jnp.array([0, 3, 50, 400, 800, 999])
  theta = jnp.asarray(np.random.default_rng(4).standard_normal(X_SHAPE[:-1] + (4,)) * 0.5, jnp.float32)

  def parts(theta):
    loss, aux = d.loss(lambda x, t, c: theta, x0, None, jax.random.key(0), t=k)
    return jnp.sum(aux["vlb"]), (loss, jnp.sum(aux["mse"]))

  g_vlb = jax.grad(lambda th: parts(th)[0])(theta)
  np.testing.assert_array_equal(g_vlb[..., :2], 0.0)  # stop-gradient: the mean is trained by the MSE only
  assert (jnp.abs(g_vlb[..., 2:]).sum(axis=(1, 2, 3, 4)) > 0).all()  # every example, k = 0 (NLL) included
  g_loss = jax.grad(lambda th: parts(th)[1][0])(theta)
  g_mse = jax.grad(lambda th: parts(th)[1][1] / k.shape[0])(theta)
  np.testing.assert_allclose(g_loss[..., :2], g_mse[..., :2], rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(g_loss[..., 2:], g_vlb[..., 2:] / k.shape[0], rtol=1e-5, atol=1e-9)
  # With "mse" the variance half gets no gradient (the old behaviour).
  mse_only = DDPM(schedule="linear", learn_sigma_loss="mse")
  g = jax.grad(lambda th: mse_only.loss(lambda x, t, c: th, x0, None, jax.random.key(0), t=k)[0])(theta)
  np.testing.assert_array_equal(g[..., 2:], 0.0)


def test_posterior_coefficients_give_the_gaussian_posterior_and_respace_as_adm():
  d = DDPM(schedule="cosine", num_timesteps=100)
  post = d.posterior
  np.testing.assert_allclose(post["beta"], d.betas, rtol=1e-9)
  abar = d.alphas_cumprod
  for k in (1, 40, 99):  # q(x_{k-1} | x_k, x0) by conditioning the joint Gaussian of (x_{k-1}, x_k) given x0
    a_prev, a = abar[k - 1], abar[k]
    cov = np.array([[1 - a_prev, np.sqrt(a / a_prev) * (1 - a_prev)], [np.sqrt(a / a_prev) * (1 - a_prev), 1 - a]])
    gain = cov[0, 1] / cov[1, 1]  # mean = sqrt(a_prev) x0 + gain (x_k - sqrt(a) x0)
    np.testing.assert_allclose(post["coef_xt"][k], gain, rtol=1e-9)
    np.testing.assert_allclose(post["coef_x0"][k], np.sqrt(a_prev) - gain * np.sqrt(a), rtol=1e-6)
    np.testing.assert_allclose(post["var"][k], cov[0, 0] - gain * cov[0, 1], rtol=1e-6)
  assert post["var"][0] == 0 and post["log_var_clipped"][0] == np.log(post["var"][1])
  kept = [9, 49, 99]  # a respaced chain: beta recomputed from the kept alpha_bar (ADM's SpacedDiffusion)
  sub = ddpm.posterior_coefficients(abar[kept])
  np.testing.assert_allclose(np.cumprod(1 - sub["beta"]), abar[kept], rtol=1e-9)  # same marginals as the full chain
  assert sub["var"][0] == 0 and sub["log_var_clipped"][0] == np.log(sub["var"][1])


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
  assert process.learn_sigma_loss == "hybrid"
  cfg.learn_sigma_loss = "mse"
  assert build_diffusion(cfg).learn_sigma_loss == "mse"
  cfg.learn_sigma_loss = "vlb_only"
  with pytest.raises(ValueError, match="learn_sigma_loss='vlb_only' is not one of"):
    build_diffusion(cfg)
  saved = base.get_config().to_dict()  # a run saved before the option existed
  del saved["diffusion"]["learn_sigma_loss"]
  saved["diffusion"]["kind"] = "ddpm"
  assert build_diffusion(configuration.merge_saved_config(saved).diffusion).learn_sigma_loss == "hybrid"
  cfg.kind = "edm"
  with pytest.raises(ValueError, match="not one of"):
    build_diffusion(cfg)


def test_dit_paper_configs_train_learned_sigma_with_the_hybrid_loss():
  from configs.image import dit_paper  # pylint: disable=g-import-not-at-top

  config = dit_paper.get_config("DiT-S/8")
  process = build_diffusion(config.diffusion)
  assert config.dit.learn_sigma and isinstance(process, DDPM)
  assert process.learn_sigma_loss == "hybrid" and process.num_timesteps == 1000 and process.prediction == "epsilon"
  assert config.sample.sampler == "ddpm" and config.sample.num_steps == 250  # the paper's 250 ancestral steps
  samplers.step_inputs(process, config.sample.sampler, config.sample.num_steps)  # a valid sampler for DDPM


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


def test_cfg_guides_only_the_prediction_half_of_a_learn_sigma_output():
  x, t = data(0, (4, 2, 3)) - 2.0, jnp.full((4,), 500.0)  # C = 3
  cond, uncond = toy_cond(), {"scale": jnp.full((1,), 0.5), "shift": jnp.zeros((1,))}
  uncond_b = jax.tree.map(lambda a: jnp.broadcast_to(a, (4,)), uncond)

  def narrow(x, t, c):
    return x * c["scale"][:, None, None] + c["shift"][:, None, None] + 0.001 * t[:, None, None]

  def wide(x, t, c):  # [prediction, variance]: 2C channels, the variance half also condition-dependent
    pred = narrow(x, t, c)
    return jnp.concatenate([pred, jnp.tanh(0.1 * pred + c["shift"][:, None, None])], axis=-1)

  out = guidance.cfg_model_fn(wide, cond, uncond, 4.0)(x, t)
  pred_c, pred_u = wide(x, t, cond), wide(x, t, uncond_b)
  assert out.shape == (4, 2, 6)
  np.testing.assert_allclose(
    out[..., :3], pred_u[..., :3] + 4.0 * (pred_c[..., :3] - pred_u[..., :3]), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_array_equal(out[..., 3:], pred_c[..., 3:])  # the conditional variance, unguided
  assert not np.allclose(pred_c[..., 3:], pred_u[..., 3:])  # (so guiding it would have changed it)
  # A C-channel model: every channel guided, as before.
  out_c = guidance.cfg_model_fn(narrow, cond, uncond, 4.0)(x, t)
  pc, pu = narrow(x, t, cond), narrow(x, t, uncond_b)
  np.testing.assert_allclose(out_c, pu + 4.0 * (pc - pu), rtol=1e-5, atol=1e-5)
  # Scale 1: the conditional output exactly, both halves.
  np.testing.assert_array_equal(guidance.cfg_model_fn(wide, cond, uncond, jnp.float32(1.0))(x, t), pred_c)


def test_drop_condition_replaces_whole_examples_with_probability_p():
  cond = {"ids": jnp.ones((2000, 5), jnp.int32), "mask": jnp.ones((2000, 5), bool), "pooled": jnp.ones((2000, 3))}
  null = {
    "ids": jnp.zeros((5,), jnp.int32),
    "mask": jnp.array([True, True, False, False, False]),
    "pooled": jnp.zeros((3,)),
  }
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
