"""Packed sequences (NaViT "Patch n' Pack"): segment ids in attention keep packed clips apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.models import rope as rope_lib
from sora_jax.models.attention import Attention, dot_product_attention, segment_mask

GRIDS = ((1, 2, 3), (2, 2, 2))  # two clips of 6 and 8 tokens packed into one row of 14


def _packed_rope(head_dim):
  """RoPE tables whose positions restart at each clip (each clip sees its own grid)."""
  positions = jnp.concatenate([rope_lib.grid_positions(g) for g in GRIDS])
  angles = rope_lib.rope_angles(positions, head_dim)
  return jnp.cos(angles), jnp.sin(angles)


@pytest.mark.parametrize("impl", ["einsum", "chunked", "jax_nn"])
def test_changing_one_packed_clip_leaves_the_other_bit_identical(impl):
  segments = jnp.asarray([[0] * 6 + [1] * 8, [0] * 10 + [-1] * 4])  # row 1: one clip + 4 padding tokens
  attention = Attention(num_heads=2, impl=impl, query_chunk_size=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 14, 24))
  rope = _packed_rope(12)
  params = attention.init(jax.random.PRNGKey(1), x, rope=rope, segment_ids=(segments, segments))

  def run(inputs):
    return attention.apply(params, inputs, rope=rope, segment_ids=(segments, segments))

  out = run(x)
  changed = x.at[0, 6:].set(jax.random.normal(jax.random.PRNGKey(2), (8, 24)) * 3.0)
  changed = changed.at[1, 10:].set(7.0)  # and row 1's padding
  out_changed = run(changed)
  np.testing.assert_array_equal(np.asarray(out_changed[0, :6]), np.asarray(out[0, :6]))
  np.testing.assert_array_equal(np.asarray(out_changed[1, :10]), np.asarray(out[1, :10]))
  assert not np.allclose(np.asarray(out_changed[0, 6:]), np.asarray(out[0, 6:])), "the changed clip does change"

  # A packed clip computes what it computes alone (its own grid's RoPE, no other tokens); float32 sums over a
  # different number of keys may round differently in the last bits.
  alone = attention.apply(params, x[:1, :6], rope=tuple(t[:6] for t in rope))
  np.testing.assert_allclose(np.asarray(out[0, :6]), np.asarray(alone[0]), rtol=1e-5, atol=1e-6)


def test_segment_mask_and_its_checks():
  q = jnp.asarray([[0, 0, 1, -1]])
  mask = np.asarray(segment_mask(q, q))[0]
  expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(mask, expected)
  x = jnp.ones((1, 4, 2, 8))
  out = dot_product_attention(x, x, x, segment_mask(q, q), impl="einsum")
  assert out.shape == (1, 4, 2, 8) and float(jnp.abs(out[0, 3]).max()) == 0.0, "padding rows attend to nothing"
  with pytest.raises(ValueError, match=r"\[B, N, L\]"):
    dot_product_attention(x, x, x, jnp.ones((1, 3, 4), bool), impl="einsum")
