"""The samplers' block cache and CFG window (diffusion/block_cache.py, sampling/generate.guided_model_fn).

On a tiny text-conditional DiT with random weights, guided Euler sampling:
* cache off (threshold 0) and the full CFG window are the plain sampler exactly (same program);
* cache on but never reusing (threshold 1e-12) runs the blocks through the cache's lax.cond and
  sliced-parameter path: equal to the plain sampler to float32 rounding;
* cache on (threshold 0.1: above this toy's step-to-step change of the first block's residual, 2-4 %)
  reuses the rest-of-stack residual wherever the guards allow (warm-up 2 calls, at most 3 in a row:
  6 of 10 calls), does 1.8x fewer forwards and stays within 1 % (relative L2; measured 0.15 %) of
  the plain sample on this toy model (weights N(0, 0.05^2): smooth enough to be cacheable; with
  N(0, 0.15^2) the residual changes 50-200 % per step and a cache is wrong for it);
* the CFG window runs the conditional branch alone outside it: counted forwards match the schedule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sora_jax.diffusion import block_cache, samplers
from sora_jax.diffusion.processes import build_diffusion
from sora_jax.models.dit import DiT
from sora_jax.models.factory import Denoiser
from sora_jax.sampling import generate as gen

STEPS = 10
LATENT = (2, 4, 4, 4)  # T', H', W', C -> 2 * 2 * 2 = 8 tokens with patch (1, 2, 2)


def build(std: float = 0.05):
  dit = DiT(in_channels=4, text_dim=8, hidden_size=32, depth=4, num_heads=2, mlp_dim=64, scan_layers=False)
  x = jnp.zeros((1, *LATENT))
  cond = {"text": jnp.zeros((1, 3, 8)), "text_mask": jnp.ones((1, 3), bool), "pooled": jnp.zeros((1, 8))}
  params = dit.init(jax.random.key(0), x, jnp.zeros((1,)), cond)["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = tree.unflatten([std * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)])
  denoiser = Denoiser(dit=dit, text_encoder=None, latent_shape=LATENT)
  fields = {
    "text_tokens": jax.random.normal(jax.random.key(2), (2, 3, 8)),
    "text_pooled": jax.random.normal(jax.random.key(3), (2, 8)),
    "text_mask": jnp.ones((2, 3), bool),
  }
  null = {"text_tokens": jnp.zeros((1, 3, 8)), "text_pooled": jnp.zeros((1, 8)), "text_mask": jnp.ones((1, 3), bool)}
  process = build_diffusion(base.get_config().diffusion)
  noise = jax.random.normal(jax.random.key(4), (2, *LATENT))
  return dict(denoiser=denoiser, params={"dit": params}, fields=fields, null=null, process=process, noise=noise)


@pytest.fixture(scope="module")
def setup():
  return build()


def _sample(s, cache=None, window=None):
  tokens = s["denoiser"].num_tokens
  fn, state = gen.guided_model_fn(
    s["denoiser"],
    s["params"],
    s["fields"],
    s["null"],
    4.0,
    cfg_window=block_cache.check_cfg_window(window),
    cache=cache or block_cache.CacheConfig(),
    batch=2,
    tokens=tokens,
  )
  out = samplers.sample(
    fn, s["noise"], process=s["process"], sampler="euler", num_steps=STEPS, num_tokens=tokens, model_state=state
  )
  return (np.asarray(out), None) if state is None else (np.asarray(out[0]), jax.device_get(out[1]))


def _rel(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_cache_off_and_full_window_are_the_plain_sampler(setup):
  plain, _ = _sample(setup)
  off, state = _sample(setup, block_cache.CacheConfig(threshold=0.0), window=(0.0, 1.0))
  assert state is None  # no cache state: the same program as the plain sampler
  np.testing.assert_array_equal(off, plain)


def test_cache_that_never_reuses_equals_plain(setup):
  plain, _ = _sample(setup)
  out, state = _sample(setup, block_cache.CacheConfig(threshold=1e-12))
  assert int(state.cached_calls) == 0 and int(state.calls) == STEPS
  np.testing.assert_allclose(state.evals, np.ones(4) * STEPS)  # 2B rows, one full forward per call each
  # The blocks run through lax.cond on sliced params: same maths, XLA may fuse differently (float32 rounding).
  np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-5)


def test_cache_on_reuses_and_stays_close(setup):
  plain, _ = _sample(setup)
  config = block_cache.CacheConfig(threshold=0.1, warmup_steps=2, max_cached=3)
  out, state = _sample(setup, config)
  # calls 0, 1 compute (warm-up); 2-4 reuse; 5 computes (3 in a row); 6-8 reuse; 9 computes.
  assert int(state.cached_calls) == 6 and int(state.calls) == STEPS
  forwards = np.asarray(state.evals)[:2] + np.asarray(state.evals)[2:]
  np.testing.assert_allclose(forwards, 2 * (4 + 6 / 4))  # a cached call costs the first block (1/4): 11 vs 20
  assert _rel(out, plain) < 0.01, _rel(out, plain)


def test_cfg_window_runs_the_conditional_branch_outside(setup):
  plain, _ = _sample(setup)
  window = (0.5, 1.0)
  out, _ = _sample(setup, window=window)
  assert not np.array_equal(out, plain)
  tokens = setup["denoiser"].num_tokens
  times = gen.model_call_times(setup["process"], "euler", STEPS, tokens) / 1000.0
  guided = int(np.sum(times >= 0.5))
  assert 0 < guided < STEPS
  assert gen.model_forwards(setup["process"], "euler", STEPS, tokens, window) == 2 * guided + (STEPS - guided)
  # With the cache too, the counted forwards follow the window: the uncond half computes only in it.
  _, state = _sample(setup, block_cache.CacheConfig(threshold=1e-12), window=window)
  evals = np.asarray(state.evals)
  np.testing.assert_allclose(evals[:2], STEPS)
  np.testing.assert_allclose(evals[2:], guided)


def test_bad_settings_are_clear_errors():
  with pytest.raises(ValueError, match="threshold"):
    block_cache.CacheConfig(threshold=-0.1)
  with pytest.raises(ValueError, match="max_cached"):
    block_cache.CacheConfig(threshold=0.1, max_cached=0)
  with pytest.raises(ValueError, match="0 <= lo <= hi <= 1"):
    block_cache.check_cfg_window((0.8, 0.2))
  assert block_cache.check_cfg_window(()) is None and block_cache.check_cfg_window((0.0, 1.0)) is None
  cfg = base.get_config().sample
  assert not block_cache.CacheConfig.from_config(cfg.cache).enabled and cfg.cfg_window == ()
