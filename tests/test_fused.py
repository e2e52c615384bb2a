"""models/fused.py: every fused op equals its op-by-op form, values and gradients, and the models agree fused or not.

Tolerances (float32): the fused backward passes sum the same terms in another order (the LayerNorm
gradient as rstd (g' - mean(g') - x_hat mean(g' x_hat)) instead of autodiff's chain through mean and
var; GELU's derivative in closed form), so results differ by float32 rounding: a few ulps per term,
growing with the reduction length (D = 64 here). rtol 2e-5 / atol 2e-6 (of values O(1)) absorbs that
and nothing more: a wrong sign or a missing term is off by O(1).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.models import fused
from sora_jax.models.dit import DiT
from sora_jax.models.wan.transformer import WanTransformer

F32 = dict(rtol=2e-5, atol=2e-6)


def _vjp_all(fn, args, seed=0):
  """(value, gradients of sum(value * random cotangent) wrt every arg)."""
  out, vjp = jax.vjp(fn, *args)
  cot = jax.random.normal(jax.random.key(seed), out.shape, out.dtype)
  return out, vjp(cot)


@pytest.mark.parametrize("mod_shape", [(2, 1, 64), (2, 12, 64)], ids=["per_example", "per_token"])
def test_layer_norm_modulate_equals_unfused(mod_shape):
  k = jax.random.split(jax.random.key(0), 3)
  x = 3.0 * jax.random.normal(k[0], (2, 12, 64)) + 1.5  # an offset mean, as in a residual stream
  shift = jax.random.normal(k[1], mod_shape)
  scale = 0.5 * jax.random.normal(k[2], mod_shape)
  ours, ours_grads = _vjp_all(fused.layer_norm_modulate, (x, shift, scale))
  ref, ref_grads = _vjp_all(fused.layer_norm_modulate_reference, (x, shift, scale))
  np.testing.assert_allclose(ours, ref, **F32)
  for name, a, b in zip(("x", "shift", "scale"), ours_grads, ref_grads, strict=True):
    assert a.shape == b.shape, name
    # shift / scale gradients are sums over N (and B): scale the absolute tolerance by the terms summed.
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6 * x.shape[1], err_msg=name)


def test_layer_norm_modulate_rejects_unbroadcastable_modulation():
  x = jnp.zeros((2, 12, 64))
  with pytest.raises(ValueError, match="per token"):
    fused.layer_norm_modulate(x, jnp.zeros((2, 5, 64)), jnp.zeros((2, 1, 64)))
  with pytest.raises(ValueError, match="width 64"):
    fused.layer_norm_modulate(x, jnp.zeros((2, 1, 1)), jnp.zeros((2, 1, 1)))


def _gelu_derivative_f64(x):
  x = np.asarray(x, np.float64)
  c, k = 0.044715, np.sqrt(2.0 / np.pi)
  t = np.tanh(k * (x + c * x**3))
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * k * (1.0 + 3.0 * c * x**2)


def test_gelu_tanh_equals_flax_and_its_derivative():
  x = jnp.linspace(-8.0, 8.0, 4001)
  ours, (g_ours,) = _vjp_all(fused.gelu_tanh, (x,))
  ref, (g_ref,) = _vjp_all(lambda v: nn.gelu(v, approximate=True), (x,))
  np.testing.assert_array_equal(ours, ref)  # the same forward formula
  cot = np.asarray(jax.random.normal(jax.random.key(0), x.shape), np.float64)
  truth = cot * _gelu_derivative_f64(x)
  # Ours: float32 rounding only, everywhere. Autodiff of the tanh form cancels digits in the tails
  # (1 + tanh -> 0 near x = -5: absolute errors ~1e-5), so it is checked only where |x| < 3.
  np.testing.assert_allclose(g_ours, truth, rtol=2e-5, atol=1e-7)
  core = np.abs(np.asarray(x)) < 3
  np.testing.assert_allclose(np.asarray(g_ours)[core], np.asarray(g_ref)[core], **F32)


def test_mixed_einsum_float32_is_a_plain_einsum():
  a, b = jax.random.normal(jax.random.key(0), (2, 5, 8)), jax.random.normal(jax.random.key(1), (8, 3, 4))
  np.testing.assert_array_equal(
    fused.mixed_einsum("bnd,dhk->bhnk", a, b, jnp.float32), jnp.einsum("bnd,dhk->bhnk", a, b)
  )


@pytest.mark.parametrize(
  "spec, a_shape, b_shape", [("bnd,dhk->bhnk", (2, 5, 8), (8, 3, 4)), ("bhnk,hkd->bnd", (2, 3, 5, 4), (3, 4, 8))]
)
def test_mixed_einsum_backward_runs_in_bf16_with_f32_accumulation(spec, a_shape, b_shape):
  a = jax.random.normal(jax.random.key(0), a_shape)
  b = jax.random.normal(jax.random.key(1), b_shape)
  out, (da, db) = _vjp_all(lambda x, y: fused.mixed_einsum(spec, x, y, jnp.bfloat16), (a, b))
  ref_out = jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
  np.testing.assert_array_equal(out, ref_out)  # the same forward program
  assert da.dtype == db.dtype == jnp.float32
  # The claim: gradients = bf16(cotangent) x bf16(other operand), products summed in float32 (float64 reference).
  cot = jax.random.normal(jax.random.key(0), out.shape).astype(jnp.bfloat16)
  r = lambda v: np.asarray(v.astype(jnp.bfloat16), np.float64)  # noqa: E731
  ins, o = spec.split("->")
  sa, sb = ins.split(",")
  np.testing.assert_allclose(da, np.einsum(f"{o},{sb}->{sa}", r(cot), r(b)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(db, np.einsum(f"{sa},{o}->{sb}", r(a), r(cot)), rtol=1e-5, atol=1e-5)
  # The weight gradient is NOT rounded to bf16 (autodiff of the cast einsum rounds it).
  assert not np.array_equal(np.asarray(db), np.asarray(db.astype(jnp.bfloat16).astype(jnp.float32)))


def _random_params(params, seed=3, std=0.1):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return tree.unflatten([std * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)])


def _model_case(cls, **kw):
  x = jax.random.normal(jax.random.key(0), (2, 2, 4, 4, 4))
  t = jnp.array([300.0, 800.0])
  cond = {"text": jax.random.normal(jax.random.key(1), (2, 3, 8)), "text_mask": jnp.array([[1, 1, 0], [1, 1, 1]], bool)}
  cond["pooled"] = jnp.ones((2, 8))
  unfused = cls(**kw, fused_ops=False)
  params = _random_params(unfused.init(jax.random.key(2), x, t, cond))  # adaLN-Zero would hide the blocks

  def run(fused_ops):
    model = cls(**kw, fused_ops=fused_ops)
    return jax.value_and_grad(lambda p: jnp.mean(jnp.square(model.apply(p, x, t, cond) - x)))(params)

  return run


@pytest.mark.slow  # compiles two small models with gradients (~15 s on a quiet 2-core CPU)
def test_dit_fused_equals_unfused_values_and_grads():
  # scan_layers=True: the block code is the same unrolled; the scan adds the stacked-params path.
  run = _model_case(DiT, in_channels=4, text_dim=8, hidden_size=32, depth=2, num_heads=2, mlp_dim=64)
  (loss_f, g_f), (loss_u, g_u) = run(True), run(False)
  np.testing.assert_allclose(loss_f, loss_u, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_f, g_u)


@pytest.mark.slow  # compiles two small models with gradients (~15 s on a quiet 2-core CPU)
def test_wan_fused_equals_unfused_values_and_grads():
  run = _model_case(
    WanTransformer, in_channels=4, text_dim=8, hidden_size=32, depth=1, num_heads=2, mlp_dim=64, scan_layers=False
  )
  (loss_f, g_f), (loss_u, g_u) = run(True), run(False)
  np.testing.assert_allclose(loss_f, loss_u, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_f, g_u)


@pytest.mark.slow  # compiles two small models with gradients (~15 s on a quiet 2-core CPU)
def test_dit_fused_bf16_close_to_float32():
  """bf16 compute with the bf16 backward: loss and gradients near float32's (bf16 has 8 mantissa bits: ~0.4 %
  per rounding; 2 % relative on the gradient norm absorbs the roundings of a 1-block network)."""
  kw = dict(in_channels=4, text_dim=8, hidden_size=32, depth=1, num_heads=2, mlp_dim=64, scan_layers=False)
  run32 = _model_case(DiT, **kw, dtype="float32")
  run16 = _model_case(DiT, **kw, dtype="bfloat16")
  (l32, g32), (l16, g16) = run32(True), run16(True)
  np.testing.assert_allclose(l16, l32, rtol=1e-2)
  n32 = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(g32)))
  diff = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32), strict=True)))
  assert diff / n32 < 2e-2
