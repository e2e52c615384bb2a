"""The fast "einsum" attention (the CPU default) equals jax.nn.dot_product_attention, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.models import attention, rope

B, N, H, K = 2, 7, 3, 8


def _qkv(length, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((B, N, H, K)) * 2.0, dtype)  # large-ish logits: exercises the max shift
  k = jnp.asarray(rng.standard_normal((B, length, H, K)) * 2.0, dtype)
  v = jnp.asarray(rng.standard_normal((B, length, H, K)), dtype)
  return q, k, v


def _reference(q, k, v, mask):
  """jax.nn.dot_product_attention, fully masked rows set to zero (the documented contract)."""
  if mask is None:
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")
  out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], implementation="xla")
  return jnp.where(jnp.any(mask, axis=-1)[:, None, None, None], out, 0.0)


# Padding on the right (text), an arbitrary pattern, and a fully masked row (empty caption).
MASKS = {
  "none": None,
  "right_padding": np.array([[True] * 3 + [False] * 2, [True] * 5]),
  "pattern_and_empty": np.array([[True, False, True, True, False], [False] * 5]),
}


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("impl", ["einsum", "xla", "chunked"])
def test_fast_attention_equals_jax_nn_in_values_and_gradients(impl, mask_name):
  mask = MASKS[mask_name]
  length = 5
  q, k, v = _qkv(length)
  mask = None if mask is None else jnp.asarray(mask)
  ours = lambda q, k, v: attention.dot_product_attention(q, k, v, mask, impl=impl, query_chunk_size=3)  # noqa: E731
  ref = lambda q, k, v: _reference(q, k, v, mask)  # noqa: E731
  np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(ref)(q, k, v), rtol=1e-5, atol=1e-6)

  cotangent = jnp.asarray(np.random.default_rng(5).standard_normal((B, N, H, K)), jnp.float32)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * cotangent)  # noqa: E731
  grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
  for name, g, r in zip("qkv", grads, ref_grads):
    assert np.all(np.isfinite(g)), name
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")
  if mask_name == "pattern_and_empty":
    out = ours(q, k, v)
    np.testing.assert_array_equal(out[1], 0.0)  # the fully masked row is zero ...
    np.testing.assert_array_equal(grads[0][1], 0.0)  # ... and passes no gradient back
    np.testing.assert_array_equal(grads[1][1], 0.0)
    np.testing.assert_array_equal(grads[2][1], 0.0)
    np.testing.assert_array_equal(grads[2][0][~np.asarray(mask[0])], 0.0)  # masked keys get no value gradient


def test_self_attention_shape_without_mask_matches():
  q, k, v = _qkv(N, seed=3)
  np.testing.assert_allclose(
    attention.dot_product_attention(q, k, v, impl="einsum"), _reference(q, k, v, None), rtol=1e-5, atol=1e-6
  )


def test_heads_major_layout_is_the_transposed_problem():
  q, k, v = _qkv(5, seed=1)
  mask = jnp.asarray(MASKS["right_padding"])
  t = lambda x: jnp.transpose(x, (0, 2, 1, 3))  # noqa: E731
  for impl in ("einsum", "chunked", "jax_nn"):
    out = attention.dot_product_attention(t(q), t(k), t(v), mask, impl=impl, layout="bhnk", query_chunk_size=4)
    np.testing.assert_allclose(t(out), _reference(q, k, v, mask), rtol=1e-5, atol=1e-6, err_msg=impl)
  with pytest.raises(ValueError, match="layout must be"):
    attention.dot_product_attention(q, k, v, layout="nbhk")


def test_bfloat16_einsum_attention_is_close_to_float32():
  q, k, v = _qkv(5, seed=2)
  mask = jnp.asarray(MASKS["right_padding"])
  low = attention.dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask, impl="einsum")
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), _reference(q, k, v, mask), rtol=0.05, atol=0.05)


def test_xla_resolves_per_backend_and_unknown_impls_are_named():
  expected = "einsum" if jax.default_backend() == "cpu" else "jax_nn"
  assert attention.resolve_impl("xla") == expected
  for impl in ("einsum", "jax_nn", "cudnn", "chunked"):
    assert attention.resolve_impl(impl) == impl
  with pytest.raises(ValueError, match="unknown attention_impl 'flash'"):
    attention.resolve_impl("flash")


def test_heads_major_rope_equals_token_major_rope():
  cos, sin = rope.rope_tables((1, 2, 3), 12)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 4, 12)), jnp.float32)
  t = lambda a: jnp.transpose(a, (0, 2, 1, 3))  # noqa: E731
  np.testing.assert_allclose(
    t(rope.apply_rope(t(x), cos, sin, heads_major=True)), rope.apply_rope(x, cos, sin), rtol=1e-6, atol=1e-6
  )
  with pytest.raises(ValueError, match="do not match"):
    rope.apply_rope(x, cos, sin, heads_major=True)  # 4 "tokens" in the heads-major reading


@pytest.mark.parametrize("cross", [False, True])
def test_attention_module_same_params_and_results_for_every_impl(cross):
  """The einsum path (heads-major projections) keeps the params of the jax.nn path and its results."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 6, 24)), jnp.float32)
  context = jnp.asarray(rng.standard_normal((2, 5, 24)), jnp.float32)
  mask = jnp.asarray(MASKS["pattern_and_empty"])
  kwargs = dict(context=context, context_mask=mask) if cross else dict(rope=rope.rope_tables((1, 2, 3), 8))
  results = {}
  for impl in ("jax_nn", "einsum", "chunked"):
    module = attention.Attention(num_heads=3, impl=impl, query_chunk_size=4)
    params = nn.unbox(module.init(jax.random.key(0), x, **kwargs))
    params = jax.tree.map(
      lambda p: p + 0.1 * jnp.asarray(np.random.default_rng(1).standard_normal(p.shape), jnp.float32), params
    )
    out = module.apply(params, x, **kwargs)
    grads = jax.grad(lambda p, x, m=module: jnp.sum(jnp.sin(m.apply(p, x, **kwargs))), argnums=(0, 1))(params, x)
    results[impl] = (params, out, grads)
  ref_params, ref_out, ref_grads = results["jax_nn"]
  for impl in ("einsum", "chunked"):
    params, out, grads = results[impl]
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5, err_msg=impl)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=impl)
