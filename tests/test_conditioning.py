"""Prompting with images and videos, below the Pipeline: per-frame timesteps in the DiT, the training
distribution over conditioning types, the masked loss, samplers holding given frames, SDEdit's
first step, Condition validation and the canvas (prefix property of the causal VAE)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from sora_jax.diffusion import DDPM, FlowMatching, samplers
from sora_jax.diffusion import conditioning as cond_lib
from sora_jax.models import dit as dit_lib
from sora_jax.models import vae as vae_lib
from sora_jax.sampling.conditioning import Condition, build_canvas, placement_error, valid_starts
from sora_jax.training import frame_conditioning

SHAPE = (2, 5, 4, 4, 3)  # [B, T', H', W', C]


def _tiny_dit():
  model = dit_lib.DiT(in_channels=3, text_dim=8, hidden_size=32, depth=2, num_heads=2, patch_size=(1, 2, 2))
  x = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)
  cond = {"text": jnp.ones((2, 3, 8)), "text_mask": jnp.ones((2, 3), bool), "pooled": jnp.ones((2, 8))}
  params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((2,)), cond)["params"]
  # adaLN-Zero starts as the identity; random weights make the timestep matter everywhere.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  return model, params, x, cond


def test_dit_takes_timesteps_per_example_per_frame_and_per_token():
  model, params, x, cond = _tiny_dit()
  # jitted: one program per timestep layout (op-by-op dispatch compiled every op of the DiT for each, ~30 s)
  apply = jax.jit(lambda t: model.apply({"params": params}, x, t, cond))
  t = jnp.asarray([300.0, 700.0])
  per_example = apply(t)
  per_frame = apply(jnp.repeat(t[:, None], SHAPE[1], axis=1))
  per_token = apply(jnp.repeat(t[:, None], SHAPE[1] * 4, axis=1))  # 5 frames x (4/2)x(4/2) tokens
  # Same timesteps in three layouts: the per-token path embeds each token's t separately (float32 rounding only).
  np.testing.assert_allclose(per_frame, per_example, atol=1e-5)
  np.testing.assert_allclose(per_token, per_example, atol=1e-5)
  frames = jnp.repeat(t[:, None], SHAPE[1], axis=1).at[:, 0].set(0.0)  # frame 0 given clean
  changed = np.abs(np.asarray(apply(frames) - per_example)).max(axis=(0, 2, 3, 4))
  assert changed[0] > 1e-3 and changed[1:].max() > 0  # its own tokens change, and (through attention) the rest
  with pytest.raises(ValueError, match=r"per latent frame \[B, T\]"):
    apply(jnp.zeros((2, 3)))


def test_training_conditioning_types_follow_the_configured_distribution():
  cfg = ml_collections.ConfigDict(dict(none=0.5, first_frame=0.15, first_k=0.1, last_k=0.1, first_last=0.15))
  probs = frame_conditioning.probabilities(cfg)
  types, strength = jax.jit(frame_conditioning.sample_strength, static_argnums=(1, 2))(
    jax.random.key(0), 8000, 5, probs
  )
  types, strength = np.asarray(types), np.asarray(strength)
  freq = np.bincount(types, minlength=5) / len(types)
  np.testing.assert_allclose(freq, probs, atol=0.02)  # 8000 draws: binomial std <= 0.006
  names = frame_conditioning.CONDITIONING_TYPES
  given = {name: strength[types == i] for i, name in enumerate(names)}
  assert not given["none"].any()
  np.testing.assert_array_equal(given["first_frame"], np.eye(5)[[0] * len(given["first_frame"])])
  np.testing.assert_array_equal(given["first_last"][:, [0, 4]], 1.0)
  assert not given["first_last"][:, 1:4].any()
  for name, k in (("first_k", given["first_k"]), ("last_k", given["last_k"][:, ::-1])):
    counts = k.sum(1)
    assert counts.min() == 1 and counts.max() == 4, name  # always leaves a generated frame; k covers 1..T'-1
    np.testing.assert_array_equal(k, np.arange(5)[None] < counts[:, None])  # a contiguous prefix / suffix
  with pytest.raises(ValueError, match="unknown types"):
    frame_conditioning.probabilities({"none": 1.0, "middle": 0.5})


def test_loss_counts_only_generated_frames_and_feeds_them_clean_at_t0():
  process = FlowMatching(shift=1.0)
  x0 = jnp.asarray(np.random.default_rng(1).standard_normal(SHAPE), jnp.float32)
  strength = jnp.asarray([[1.0, 0, 0, 0, 0], [1.0, 1.0, 0, 0, 1.0]])
  seen = {}

  def model(x_t, t_model, cond, garbage=0.0):
    seen["t"], seen["x"] = t_model, x_t
    out = 0.5 * x_t
    return out + garbage * cond_lib._frames(x_t, strength)  # only the given frames' prediction changes

  rng, t = jax.random.key(0), jnp.asarray([0.4, 0.9])
  loss, aux = process.loss(model, x0, None, rng, t=t, strength=strength)
  np.testing.assert_array_equal(seen["t"], np.where(strength > 0, 0.0, 1000 * t[:, None]))
  np.testing.assert_array_equal(np.asarray(seen["x"])[0, 0], np.asarray(x0)[0, 0])  # given frame: clean
  garbage, _ = process.loss(lambda *a: model(*a, garbage=100.0), x0, None, rng, t=t, strength=strength)
  assert float(garbage) == float(loss)  # what the model says at given frames is not in the loss
  plain, _ = process.loss(model, x0, None, rng, t=t, strength=jnp.zeros((2, 5)))
  unmasked, _ = process.loss(model, x0, None, rng, t=t)
  np.testing.assert_allclose(plain, unmasked, rtol=1e-6)  # no given frames = the text-to-video loss


def _toy_model(x, t_model):
  """Mixes frames (so given frames steer the others) and depends on t per frame."""
  t = t_model.reshape(t_model.shape + (1,) * (x.ndim - t_model.ndim)) / 1000.0
  return 0.7 * x - 0.3 * jnp.mean(x, axis=1, keepdims=True) + 0.2 * t


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "unipc"])
def test_python_loop_equals_scan_and_given_frames_are_held_at_every_step(sampler):
  process = FlowMatching(shift=3.0)
  rng = np.random.default_rng(2)
  noise = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
  given = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
  strength = jnp.asarray([[1.0, 1.0, 0, 0, 0], [1.0, 0, 0, 0, 1.0]])
  conditioning = cond_lib.FrameConditioning(given, strength, None)
  calls = []

  def recording(x, t_model):
    calls.append((np.asarray(x), np.asarray(t_model)))
    return _toy_model(x, t_model)

  inputs = samplers.step_inputs(process, sampler, 6)
  step = samplers.sampling_step(recording, process, sampler, conditioning)
  state = samplers.initial_state(noise, None, sampler)
  held = np.asarray(strength, bool)
  for i in range(6):
    state = step(state, {k: v[i] for k, v in inputs.items()})
    np.testing.assert_array_equal(np.asarray(state.x)[held], np.asarray(given)[held])  # fixed after every step
  for x, t in calls:  # every network call: given frames pasted, at t = 0
    np.testing.assert_array_equal(x[held], np.asarray(given)[held])
    assert t.shape == (2, 5) and not t[held].any() and (t[~held] == t.max()).all()  # generated frames: the step's t
  scanned = samplers.sample(_toy_model, noise, process=process, sampler=sampler, num_steps=6, conditioning=conditioning)
  np.testing.assert_allclose(scanned, state.x, atol=1e-6)  # scan vs loop: XLA fusion order only
  np.testing.assert_array_equal(np.asarray(scanned)[held], np.asarray(given)[held])
  free = samplers.sample(_toy_model, noise, process=process, sampler=sampler, num_steps=6)
  assert np.abs(np.asarray(free - scanned)[~held]).max() > 1e-3  # the given frames steer the generated ones


def test_ddpm_samplers_hold_clean_frames_too():
  process = DDPM()
  noise = jnp.asarray(np.random.default_rng(3).standard_normal(SHAPE), jnp.float32)
  given = jnp.ones(SHAPE)
  strength = jnp.zeros((2, 5)).at[:, 0].set(1.0)
  for sampler in ("ddim", "ddpm"):
    out = samplers.sample(
      lambda x, t: 0.1 * x,
      noise,
      process=process,
      sampler=sampler,
      num_steps=4,
      conditioning=cond_lib.FrameConditioning(given, strength),
    )
    np.testing.assert_array_equal(np.asarray(out)[:, 0], 1.0)


def test_partial_strength_frame_waits_at_its_noise_level_then_moves():
  process = FlowMatching(shift=1.0)
  noise = jnp.zeros(SHAPE)
  given = jnp.ones(SHAPE)
  strength = jnp.zeros((2, 5)).at[:, 0].set(0.5)  # t_f = 0.5
  conditioning = cond_lib.FrameConditioning(given, strength, noise)
  times = []
  step = samplers.sampling_step(
    lambda x, t: (times.append(np.asarray(t)), jnp.zeros_like(x))[1], process, "euler", conditioning
  )
  inputs = samplers.step_inputs(process, "euler", 4)  # t = 1, .75, .5, .25
  state = samplers.initial_state(noise)
  for i in range(4):
    state = step(state, {k: v[i] for k, v in inputs.items()})
  np.testing.assert_allclose([t[0, 0] for t in times], [500, 500, 500, 250])  # min(t, t_f) on the model scale
  np.testing.assert_allclose(np.asarray(state.x)[:, 0], 0.5)  # the anchor 0.5 x_c + 0.5 noise, then zero velocity


def test_first_step_starts_sdedit_part_way_with_restarted_history():
  process = FlowMatching(shift=2.0)
  full = samplers.step_inputs(process, "dpmpp_2m", 10)
  part = samplers.step_inputs(process, "dpmpp_2m", 10, first_step=4)
  assert len(part["t_model"]) == 6
  np.testing.assert_allclose(part["t_model"], full["t_model"][4:])
  assert part["c_prev"][0] == 0 and full["c_prev"][4] != 0  # first order on the first step run
  alpha, sigma = samplers.start_point(process, "euler", 10, first_step=4)
  np.testing.assert_allclose(1000 * sigma, full["t_model"][4], rtol=1e-6)
  source = jnp.full(SHAPE, 2.0)
  noise = jnp.asarray(np.random.default_rng(4).standard_normal(SHAPE), jnp.float32)
  # A model that predicts x0 = source exactly (v = noise-part): SDEdit returns the source.
  oracle = lambda x, t: (x - source) / (t / 1000.0).reshape(-1, 1, 1, 1, 1)
  out = samplers.sample(oracle, noise, process=process, sampler="euler", num_steps=10, first_step=4, source=source)
  np.testing.assert_allclose(out, source, atol=1e-4)  # float32 steps of an exact ODE
  with pytest.raises(ValueError, match="first_step"):
    samplers.step_inputs(process, "euler", 10, first_step=10)


def test_condition_rejects_bad_input_with_what_is_valid():
  frames = np.zeros((1, 4, 32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match="uint8"):
    Condition(frames.astype(np.float32))
  with pytest.raises(ValueError, match="strength"):
    Condition(frames, 1, strength=0.0)
  with pytest.raises(ValueError, match=r"rank|\[B, T0, H, W, 3\]"):
    Condition(np.zeros((4, 32, 32), np.uint8))
  with pytest.raises(ValueError, match=r"valid frame_index for 4 frames in 17: \[1, 5, 9, 13\]"):
    build_canvas([Condition(frames, 2)], 1, 17, 32, 32, 4)
  with pytest.raises(ValueError, match="valid frame_index for 1 frames in 17: \\[0\\]"):
    build_canvas([Condition(frames[:, :1], 16)], 1, 17, 32, 32, 4)
  with pytest.raises(ValueError, match="model generates 32x32"):
    build_canvas([Condition(np.zeros((1, 1, 16, 16, 3), np.uint8))], 1, 17, 32, 32, 4)
  with pytest.raises(ValueError, match="overlaps"):
    build_canvas([Condition(frames[:, :1]), Condition(frames[:, :1])], 1, 17, 32, 32, 4)
  assert valid_starts(9, 17, 4) == [0] and valid_starts(8, 17, 4) == [1, 5, 9]
  assert placement_error(9, 8, 17, 4) is None


def test_canvas_marks_the_latent_frames_the_given_frames_cover():
  image = np.full((2, 32, 32, 3), 200, np.uint8)
  end = np.full((2, 4, 32, 32, 3), 100, np.uint8)
  canvas = build_canvas([Condition(image), Condition(end, 13, strength=0.6)], 2, 17, 32, 32, 4)
  np.testing.assert_array_equal(canvas.strength, np.float32([[1, 0, 0, 0, 0.6]] * 2))
  assert canvas.given[0].tolist() == [True] + [False] * 12 + [True] * 4
  assert (canvas.pixels[:, 0] == 200).all()
  assert (canvas.pixels[:, 1:13] == 100).all()  # unknown frames: a still lead-in into the next given frame
  tail = build_canvas([Condition(image)], 2, 17, 32, 32, 4)
  assert (tail.pixels[:, 1:] == 0).all()  # after the last given frame: black (nothing given depends on it)


def test_prefix_of_1_plus_4k_frames_encodes_to_exactly_the_first_latent_frames():
  config = base.get_config().vae
  config.base_channels, config.channel_multipliers, config.num_res_blocks = 8, (1, 1, 1, 1), 1
  config.mid_attention = False
  vae = vae_lib.CausalVAE(config)
  clip = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (1, 17, 32, 32, 3)), jnp.float32)
  params = vae.init(jax.random.key(0), clip[:, :1], method=vae_lib.CausalVAE.encode)["params"]
  whole, _ = vae_lib.encode_video(vae, params, clip)
  for k in (0, 2):
    prefix = clip.at[:, 1 + 4 * k :].set(-1.0)  # the canvas: the first 1 + 4k frames, black after
    part, _ = vae_lib.encode_video(vae, params, prefix)
    np.testing.assert_array_equal(part[:, : 1 + k], whole[:, : 1 + k])
    assert np.abs(np.asarray(part[:, 1 + k :] - whole[:, 1 + k :])).max() > 0  # not vacuous: the rest differs


def test_train_step_with_given_frames_needs_flow():
  from sora_jax.training import dit_step

  conditioning = {"none": 0.5, "first_frame": 0.5}
  with pytest.raises(ValueError, match="needs diffusion.kind='flow'"):
    dit_step.make_train_step(
      denoiser=None,
      diffusion=DDPM(),
      latent_stats=None,
      null_fields={},
      cfg_dropout=0.1,
      tx=None,
      ema_decay=0.0,
      conditioning=conditioning,
    )
