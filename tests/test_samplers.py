"""Samplers on a toy problem with a closed-form model: data ~ N(mu, s^2) per coordinate.

For Gaussian data every Gaussian path x_t = alpha x0 + sigma noise has Gaussian marginals
N(alpha mu, alpha^2 s^2 + sigma^2), the exact denoiser is linear, and the probability-flow
ODE keeps the standardised coordinate fixed: starting from noise z at the first point, the
exact answer is mu + s * z' with z' = (z - alpha_0 mu) / sqrt(alpha_0^2 s^2 + sigma_0^2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import DDPM, FlowMatching, guidance, samplers

MU, S = 2.0, 0.5
NOISE = jnp.asarray(np.random.default_rng(0).standard_normal((16, 3)), jnp.float32)


def exact_velocity(x, t_model):
  """Flow: v(x, t) = d/dt [(1 - t) mu + sqrt((1 - t)^2 s^2 + t^2) z] at fixed z."""
  t = (t_model / 1000.0)[:, None]
  var = (1 - t) ** 2 * S**2 + t**2
  return -MU + (t - (1 - t) * S**2) / var * (x - (1 - t) * MU)


def ddpm_oracle(process):
  abar_table = jnp.asarray(process.alphas_cumprod, jnp.float32)

  def model(x, k):
    abar = abar_table[k.astype(jnp.int32)][:, None]
    alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
    eps = sigma * (x - alpha * MU) / (alpha**2 * S**2 + sigma**2)
    if process.prediction == "epsilon":
      return eps
    return alpha * eps - sigma * (x - sigma * eps) / alpha

  return model


def optimal_variance_output(process):
  """The learn_sigma variance output v(k) whose learned-range variance is the exact Var[x_{k-1} | x_k].

  For Gaussian data q(x_{k-1} | x_k) is Gaussian with variance beta_tilde_k + coef_x0_k^2 Var[x0 | x_k]
  (ADM's formulas written out here; v interpolates log variance between the clipped log beta_tilde
  (v = -1) and log beta (v = 1)).
  """
  abar, betas = process.alphas_cumprod, process.betas
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1 - abar_prev) / (1 - abar)
  min_log = np.log(np.append(post_var[1], post_var[1:]))
  coef_x0 = betas * np.sqrt(abar_prev) / (1 - abar)
  var_x0 = S**2 * (1 - abar) / (abar * S**2 + 1 - abar)
  return 2 * (np.log(post_var + coef_x0**2 * var_x0) - min_log) / (np.log(betas) - min_log) - 1


def learned_sigma_oracle(process):
  """[exact epsilon / v, optimal variance output]: a learn_sigma model at the optimum of the hybrid loss."""
  mean_model = ddpm_oracle(process)
  v_table = jnp.asarray(optimal_variance_output(process), jnp.float32)

  def model(x, k):
    return jnp.concatenate([mean_model(x, k), jnp.broadcast_to(v_table[k.astype(jnp.int32)][:, None], x.shape)], -1)

  return model


def ancestral_moments(process, num_steps, learned):
  """Exact mean and std of ADM's respaced ancestral chain from N(0, 1) with the oracle (linear-Gaussian)."""
  ks = process.sampling_points(num_steps)["t"][:-1].astype(int)[::-1]  # kept timesteps, increasing
  abar = process.alphas_cumprod[ks]
  abar_prev = np.append(1.0, abar[:-1])
  betas = 1 - abar / abar_prev  # SpacedDiffusion's betas
  post_var = betas * (1 - abar_prev) / (1 - abar)
  min_log = np.log(np.append(post_var[1], post_var[1:]))
  coef_x0 = betas * np.sqrt(abar_prev) / (1 - abar)
  coef_xt = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)
  frac = (optimal_variance_output(process)[ks] + 1) / 2
  log_var = frac * np.log(betas) + (1 - frac) * min_log if learned else min_log
  mean, var = 0.0, 1.0
  for j in reversed(range(num_steps)):
    alpha, sigma = np.sqrt(abar[j]), np.sqrt(1 - abar[j])
    gain = S**2 * alpha / (alpha**2 * S**2 + sigma**2)  # E[x0 | x] = MU + gain (x - alpha MU)
    a, b = coef_xt[j] + coef_x0[j] * gain, coef_x0[j] * (MU - gain * alpha * MU)
    mean, var = a * mean + b, a**2 * var + (np.exp(log_var[j]) if j > 0 else 0.0)  # no noise into x0
  return mean, np.sqrt(var)


def ddpm_answer(process):
  abar = process.alphas_cumprod[-1]
  return MU + S * (NOISE - np.sqrt(abar) * MU) / np.sqrt(abar * S**2 + 1 - abar)


def error(x, answer):
  return float(jnp.abs(x - answer).max())


FLOW = FlowMatching(shift=1.0)


def test_flow_samplers_converge_and_higher_order_beats_euler():
  answer = MU + S * NOISE
  errors = {
    name: [
      error(samplers.sample(exact_velocity, NOISE, process=FLOW, sampler=name, num_steps=n), answer)
      for n in (4, 16, 64)
    ]
    for name in ("euler", "heun", "ddim", "dpmpp_2m")
  }
  for name, errs in errors.items():
    assert errs[0] > errs[1] > errs[2], (name, errs)
  assert errors["euler"][2] < 0.04 and errors["ddim"][2] < 0.04
  assert errors["heun"][2] < 1e-3 and errors["dpmpp_2m"][2] < 5e-3
  for i in range(3):
    assert errors["heun"][i] < errors["euler"][i] / 4
    assert errors["dpmpp_2m"][i] < errors["euler"][i]
  np.testing.assert_allclose(errors["ddim"], errors["euler"], rtol=1e-3)  # same update for flow


def test_flow_x0_prediction_samples_like_the_velocity_it_implies():
  """An x0-predicting network whose prediction is the exact one gives the exact velocity's samples."""
  process = FlowMatching(shift=1.0, prediction="x0")

  def exact_x0(x, t_model):
    return x - (t_model / 1000.0)[:, None] * exact_velocity(x, t_model)

  for name in ("euler", "ddim", "dpmpp_2m"):  # 16 steps: every t >= 1/16 > x0_min_t
    got = samplers.sample(exact_x0, NOISE, process=process, sampler=name, num_steps=16)
    want = samplers.sample(exact_velocity, NOISE, process=FLOW, sampler=name, num_steps=16)
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)
  # Heun's last step is Euler (v is undefined at t = 0 for an x0 network); still far better than Euler.
  answer = MU + S * NOISE
  heun = error(samplers.sample(exact_x0, NOISE, process=process, sampler="heun", num_steps=16), answer)
  euler = error(samplers.sample(exact_x0, NOISE, process=process, sampler="euler", num_steps=16), answer)
  assert heun < euler / 2 and np.isfinite(heun)


@pytest.mark.parametrize("schedule,prediction", [("linear", "epsilon"), ("cosine", "v")])
def test_ddpm_samplers_converge_and_dpm_solver_beats_ddim(schedule, prediction):
  process = DDPM(schedule=schedule, prediction=prediction)
  model, answer = ddpm_oracle(process), ddpm_answer(process)
  errs = {
    name: [error(samplers.sample(model, NOISE, process=process, sampler=name, num_steps=n), answer) for n in (10, 50)]
    for name in ("ddim", "dpmpp_2m")
  }
  for name, (coarse, fine) in errs.items():
    assert fine < coarse, (name, errs)
  assert errs["ddim"][1] < 0.1 and errs["dpmpp_2m"][1] < 0.01
  assert errs["dpmpp_2m"][0] < errs["ddim"][0] and errs["dpmpp_2m"][1] < errs["ddim"][1]


@pytest.mark.parametrize("name", ["euler", "heun", "ddim", "dpmpp_2m", "ddpm"])
def test_scan_sampler_equals_a_python_loop_of_the_same_step(name):
  process = FLOW if name in ("euler", "heun") else DDPM(schedule="cosine")
  model = exact_velocity if process.kind == "flow" else ddpm_oracle(process)
  if name == "ddpm":
    model = learned_sigma_oracle(process)
  num_steps = 7
  scanned = samplers.sample(model, NOISE, process=process, sampler=name, num_steps=num_steps)
  step = jax.jit(samplers.sampling_step(model, process, name))
  inputs = samplers.step_inputs(process, name, num_steps)
  state = samplers.initial_state(NOISE, samplers.ancestral_keys(NOISE) if name == "ddpm" else None)
  for i in range(num_steps):
    state = step(state, {k: v[i] for k, v in inputs.items()})
  # Same arithmetic; XLA may fuse the scan body differently (FMA), so allow float32 rounding (~1 ulp).
  np.testing.assert_allclose(scanned, state.x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("schedule,prediction", [("linear", "epsilon"), ("cosine", "v")])
def test_ancestral_sampler_with_the_optimal_learned_variance_samples_the_data(schedule, prediction):
  """Full chain (num_steps = T): with the exact mean and variance every reverse step is exact."""
  process = DDPM(schedule=schedule, prediction=prediction)
  noise = jnp.asarray(np.random.default_rng(1).standard_normal((4096, 8)), jnp.float32)
  x = np.asarray(samplers.sample(learned_sigma_oracle(process), noise, process=process, sampler="ddpm", num_steps=1000))
  mean, std = ancestral_moments(process, 1000, learned=True)
  assert abs(mean - MU) < 1e-3 and abs(std - S) < 1e-3  # the chain itself is right ...
  assert abs(x.mean() - mean) < 0.012 and abs(x.std() - std) < 0.01  # ... and so is the sampler (n = 32768)
  assert np.isfinite(x).all()


def test_respaced_ancestral_sampler_matches_the_exact_chain_and_learned_variance_helps():
  """50 of 1000 steps, ADM respacing: the output moments equal those of the respaced linear-Gaussian chain,
  for the learned variance and for the fixed beta_tilde of a C-channel model; the learned one is closer."""
  process = DDPM(schedule="linear")
  noise = jnp.asarray(np.random.default_rng(2).standard_normal((4096, 8)), jnp.float32)
  got = {}
  for learned, model in ((True, learned_sigma_oracle(process)), (False, ddpm_oracle(process))):
    x = np.asarray(samplers.sample(model, noise, process=process, sampler="ddpm", num_steps=50))
    mean, std = ancestral_moments(process, 50, learned)
    assert abs(x.mean() - mean) < 0.012 and abs(x.std() - std) < 0.01, (learned, x.mean(), x.std(), mean, std)
    got[learned] = x.std()
  assert abs(got[True] - S) < 0.015 and got[False] < S - 0.04  # beta_tilde is too small for big steps


def test_ancestral_sampler_randomness_is_per_example_and_seeded():
  process = DDPM(schedule="cosine")
  model = learned_sigma_oracle(process)
  run = lambda noise, **kw: samplers.sample(model, noise, process=process, sampler="ddpm", num_steps=10, **kw)
  x = run(NOISE)
  np.testing.assert_array_equal(run(NOISE), x)  # deterministic given the noise
  np.testing.assert_allclose(run(NOISE[5:9]), x[5:9], rtol=1e-6, atol=1e-6)  # independent of the rest of the batch
  other = run(NOISE, rng=jax.random.key(1))
  assert not np.allclose(other, x)
  np.testing.assert_array_equal(run(NOISE, rng=jax.random.key(1)), other)
  # Same start, different rng: the chains differ by the injected noise, not by the mean path.
  assert float(jnp.abs(other - x).mean()) > 1e-3
  ddim = samplers.sample(model, NOISE, process=process, sampler="ddim", num_steps=10)
  assert not np.allclose(ddim, x)
  first_inputs = {k: v[0] for k, v in samplers.step_inputs(process, "ddpm", 4).items()}
  with pytest.raises(ValueError, match="ancestral_keys"):  # the step needs the per-example keys
    samplers.sampling_step(model, process, "ddpm")(samplers.initial_state(NOISE), first_inputs)


def test_intermediates_determinism_and_noise_dependence():
  x, xs = samplers.sample(exact_velocity, NOISE, process=FLOW, sampler="euler", num_steps=8, return_every=2)
  assert xs.shape == (4,) + NOISE.shape
  np.testing.assert_array_equal(xs[-1], x)
  np.testing.assert_array_equal(samplers.sample(exact_velocity, NOISE, process=FLOW, sampler="euler", num_steps=8), x)
  other = samplers.sample(exact_velocity, NOISE + 1.0, process=FLOW, sampler="euler", num_steps=8)
  assert not np.allclose(other, x)
  # Intermediates move from noise towards data.
  dist = [error(a, MU + S * NOISE) for a in xs]
  assert all(a > b for a, b in zip(dist, dist[1:]))


def test_sampler_uses_the_training_shift_and_model_time_scale():
  seen = []

  def model(x, t_model):
    jax.debug.callback(lambda t: seen.append(float(t[0])), t_model)
    return jnp.zeros_like(x)

  process = FlowMatching(shift=0.0, base_shift_tokens=16, max_shift_tokens=32, max_shift=3.0)
  samplers.sample(model, NOISE, process=process, sampler="euler", num_steps=4, num_tokens=32)
  from sora_jax.diffusion.flow import shift_timesteps  # pylint: disable=g-import-not-at-top

  np.testing.assert_allclose(seen, 1000 * shift_timesteps(np.array([1.0, 0.75, 0.5, 0.25]), 3.0), rtol=1e-5)


def test_guided_sampling_under_an_outer_jit():
  cond, uncond = jnp.full((16,), 1.0), jnp.zeros(())

  def network(x, t_model, c):  # the condition shifts the target mean by c
    return exact_velocity(x - (1 - t_model[:, None] / 1000) * c[:, None], t_model) - c[:, None]

  @jax.jit
  def generate(noise, scale):
    fn = guidance.cfg_model_fn(network, cond, uncond, scale)
    return samplers.sample(fn, noise, process=FLOW, sampler="heun", num_steps=16)

  np.testing.assert_allclose(generate(NOISE, 1.0), MU + 1.0 + S * NOISE, atol=5e-3)
  np.testing.assert_allclose(generate(NOISE, 3.0), MU + 3.0 + S * NOISE, atol=5e-3)  # guidance extrapolates


def test_bad_sampler_requests_raise_clear_errors():
  with pytest.raises(ValueError, match="needs diffusion.kind='flow'"):
    samplers.sample(lambda x, t: x, NOISE, process=DDPM(), sampler="heun", num_steps=4)
  with pytest.raises(ValueError, match="not one of"):
    samplers.sample(exact_velocity, NOISE, process=FLOW, sampler="rk4", num_steps=4)
  with pytest.raises(ValueError, match="num_steps"):
    samplers.sample(exact_velocity, NOISE, process=FLOW, sampler="euler", num_steps=0)
  with pytest.raises(ValueError, match="needs diffusion.kind='ddpm'"):
    samplers.sample(exact_velocity, NOISE, process=FLOW, sampler="ddpm", num_steps=4)


@pytest.mark.peers
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddpm_samplers_match_diffusers_schedulers(prediction):
  torch = pytest.importorskip("torch", reason="needs the [peers] extra: pip install torch==2.13.0 diffusers")
  diffusers = pytest.importorskip("diffusers", reason="needs the [peers] extra: pip install torch==2.13.0 diffusers")
  process = DDPM(schedule="linear", prediction=prediction)
  model = ddpm_oracle(process)
  common = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    prediction_type="epsilon" if prediction == "epsilon" else "v_prediction",
    timestep_spacing="trailing",
  )
  peers = {
    "dpmpp_2m": diffusers.DPMSolverMultistepScheduler(
      algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", **common
    ),
    "ddim": diffusers.DDIMScheduler(set_alpha_to_one=True, clip_sample=False, **common),
  }
  for name, scheduler in peers.items():
    scheduler.set_timesteps(10)  # 1000 / 10: diffusers DDIM steps to t - 1000 // n
    x = torch.tensor(np.asarray(NOISE), dtype=torch.float64)
    for k in scheduler.timesteps:
      pred = np.asarray(model(jnp.asarray(x.numpy(), jnp.float32), jnp.full((16,), float(k))), np.float64)
      x = scheduler.step(torch.from_numpy(pred), k, x).prev_sample
    ours = samplers.sample(model, NOISE, process=process, sampler=name, num_steps=10)
    np.testing.assert_allclose(ours, x.numpy(), atol=2e-5, err_msg=name)


def test_unipc_converges_faster_than_euler_on_the_flow_ode():
  """UniPC's own grid ends at sigma = 0 after a point at 1/1000 (shift 1): few steps already land close."""
  answer = MU + S * NOISE
  errs = [
    error(samplers.sample(exact_velocity, NOISE, process=FLOW, sampler="unipc", num_steps=n), answer)
    for n in (8, 16, 32)
  ]
  euler = [
    error(samplers.sample(exact_velocity, NOISE, process=FLOW, sampler="euler", num_steps=n), answer)
    for n in (8, 16, 32)
  ]
  assert errs[0] > errs[1] > errs[2] and errs[2] < 5e-3, errs
  assert all(u < e / 2 for u, e in zip(errs, euler)), (errs, euler)


def test_unipc_scan_equals_a_python_loop_and_feeds_integer_timesteps():
  seen = []

  def model(x, t_model):
    jax.debug.callback(lambda t: seen.append(float(t[0])), t_model)
    return exact_velocity(x, t_model)

  process = FlowMatching(shift=3.0)
  scanned = samplers.sample(model, NOISE, process=process, sampler="unipc", num_steps=6)
  sigma = np.linspace(1.0, 0.001, 7)[:-1]
  sigma = 3.0 * sigma / (1.0 + 2.0 * sigma)
  sigma[0] -= 1e-6
  np.testing.assert_array_equal(seen, np.floor(1000 * sigma))  # 999 (not 1000), 967, ...: what diffusers hands out
  assert seen[0] == 999.0
  step = jax.jit(samplers.sampling_step(exact_velocity, process, "unipc"))
  inputs = samplers.step_inputs(process, "unipc", 6)
  state = samplers.initial_state(NOISE, sampler="unipc")
  for i in range(6):
    state = step(state, {k: v[i] for k, v in inputs.items()})
  np.testing.assert_allclose(scanned, state.x, rtol=1e-6, atol=1e-6)  # same arithmetic, other fusion (~1 ulp)


@pytest.mark.peers
@pytest.mark.parametrize("shift,num_steps", [(1.0, 2), (3.0, 10), (5.0, 25)])
def test_unipc_matches_diffusers_step_by_step(shift, num_steps):
  """Wan 2.1's scheduler (UniPCMultistepScheduler, flow prediction, shift) against our scan, every step."""
  torch = pytest.importorskip("torch", reason="needs the [peers] extra: pip install torch==2.13.0 diffusers")
  diffusers = pytest.importorskip("diffusers", reason="needs the [peers] extra: pip install torch==2.13.0 diffusers")
  scheduler = diffusers.UniPCMultistepScheduler(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=1000
  )
  scheduler.set_timesteps(num_steps)
  x = torch.tensor(np.asarray(NOISE))
  theirs = []
  for t in scheduler.timesteps:
    v = exact_velocity(jnp.asarray(x.numpy()), jnp.full((16,), float(t)))
    x = scheduler.step(torch.from_numpy(np.array(v)), t, x).prev_sample
    theirs.append(x.numpy())
  _, ours = samplers.sample(
    exact_velocity, NOISE, process=FlowMatching(shift=shift), sampler="unipc", num_steps=num_steps, return_every=1
  )
  # Both float32; diffusers combines the same terms in another order (~1e-7 relative per step).
  np.testing.assert_allclose(ours, np.stack(theirs), atol=1e-5)
  np.testing.assert_allclose(
    samplers.step_inputs(FlowMatching(shift=shift), "unipc", num_steps)["t_model"], scheduler.timesteps.numpy()
  )
