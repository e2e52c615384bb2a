"""The DiT network: patchify, RoPE, attention, adaLN-Zero, scan/remat, bf16, partitioning, errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sora_jax.models import attention, dit, embeddings, patchify, rope, variants

TEXT_DIM = 8
TINY = dict(in_channels=4, text_dim=TEXT_DIM, hidden_size=32, depth=2, num_heads=2, mlp_dim=64, learn_sigma=True)


def _inputs(b=2, t=3, h=4, w=4, c=4, length=5, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, t, h, w, c)), jnp.float32)
  steps = jnp.asarray(rng.uniform(0, 1000, b), jnp.float32)
  mask = np.ones((b, length), bool)
  mask[0, 3:] = False  # sample 0 has 2 padding tokens
  cond = dict(
    text=jnp.asarray(rng.standard_normal((b, length, TEXT_DIM)), jnp.float32),
    text_mask=jnp.asarray(mask),
    pooled=jnp.asarray(rng.standard_normal((b, TEXT_DIM)), jnp.float32),
  )
  return x, steps, cond


def _perturbed(params, seed=1, scale=0.1):
  """Every parameter moved off its init (zero-init layers would otherwise hide bugs)."""
  rng = np.random.default_rng(seed)  # numpy: eager jax.random would compile one program per shape
  return jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + scale * rng.standard_normal(p.shape), jnp.float32), params)


_JITTED = {}


def _jitted(model, method):
  """One jitted function per (model, method), so tests share compilations (eager flax is slow)."""
  key = (model, method)
  if key not in _JITTED:
    _JITTED[key] = jax.jit(getattr(model, method))
  return _JITTED[key]


def _init(model, *args):
  return nn.unbox(_jitted(model, "init")(jax.random.key(0), *args))


def _apply(model, params, *args):
  return _jitted(model, "apply")({"params": params}, *args)


@pytest.fixture(scope="module")
def text_model():
  """(model, init params, perturbed params) of a tiny text-conditional video DiT with learned sigma."""
  model = dit.DiT(**TINY)
  params = _init(model, *_inputs())["params"]
  return model, params, _perturbed(params)


@pytest.fixture(scope="module")
def image_model():
  """(model, perturbed params) of a tiny DiT-paper-style class-conditional image DiT."""
  model = dit.DiT(
    in_channels=4,
    hidden_size=32,
    depth=2,
    num_heads=2,
    conditioning="class",
    num_classes=10,
    pos_embedding="sincos2d",
    qk_norm=False,
    learn_sigma=True,
  )
  params = _init(model, jnp.zeros((2, 1, 8, 8, 4)), jnp.zeros(2), {"label": jnp.array([3, 10])})["params"]
  return model, _perturbed(params)


# ----------------------------------------------------------------------------- patchify


@pytest.mark.parametrize(
  "shape,patch",
  [
    ((2, 1, 8, 8, 4), (1, 2, 2)),
    ((1, 5, 4, 6, 3), (1, 2, 2)),
    ((2, 4, 4, 8, 2), (2, 2, 4)),
    ((1, 3, 6, 2, 16), (3, 3, 1)),
  ],
)
def test_patchify_round_trip_and_token_layout(shape, patch):
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
  tokens, grid = patchify.patchify(x, patch)
  pt, ph, pw = patch
  assert grid == (shape[1] // pt, shape[2] // ph, shape[3] // pw)
  assert tokens.shape == (shape[0], np.prod(grid), pt * ph * pw * shape[4])
  np.testing.assert_array_equal(patchify.unpatchify(tokens, grid, patch), x)
  # The last token is the bottom-right patch of the last frames, values in (pt, ph, pw, C) order.
  corner = x[:, -pt:, -ph:, -pw:, :].reshape(shape[0], -1)
  np.testing.assert_array_equal(tokens[:, -1], corner)
  # Token 1 is the next patch along W (raster order within a frame).
  if grid[2] > 1:
    np.testing.assert_array_equal(tokens[:, 1], x[:, :pt, :ph, pw : 2 * pw, :].reshape(shape[0], -1))


def test_patchify_errors_name_axis_and_working_sizes():
  with pytest.raises(ValueError, match=r"T \(latent frames\) = 3 is not divisible by the patch size 2.*2, 4"):
    patchify.patchify(jnp.zeros((1, 3, 4, 4, 4)), (2, 2, 2))
  with pytest.raises(ValueError, match=r"W \(latent width\) = 5"):
    patchify.patchify(jnp.zeros((1, 1, 4, 5, 4)), (1, 2, 2))
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    patchify.patchify(jnp.zeros((1, 4, 4, 4)), (1, 2, 2))


# ----------------------------------------------------------------------------- RoPE


def test_rope_scores_depend_only_on_relative_position():
  head_dim = 24
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((1, 1, 1, head_dim)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, head_dim)), jnp.float32)

  def score(pos_q, pos_k):
    cq, sq = (f(rope.rope_angles(np.array([pos_q]), head_dim)) for f in (jnp.cos, jnp.sin))
    ck, sk = (f(rope.rope_angles(np.array([pos_k]), head_dim)) for f in (jnp.cos, jnp.sin))
    return float(jnp.sum(rope.apply_rope(q, cq, sq) * rope.apply_rope(k, ck, sk)))

  base = score((1, 2, 3), (4, 0, 7))
  for shift in [(1, 0, 0), (0, 5, 0), (0, 0, 9), (3, 2, 1)]:
    shifted = score(tuple(a + s for a, s in zip((1, 2, 3), shift)), tuple(a + s for a, s in zip((4, 0, 7), shift)))
    assert shifted == pytest.approx(base, rel=1e-4, abs=1e-4)
  # Each axis has its own band: moving only t, only h or only w changes the score.
  for other in [(5, 0, 7), (4, 1, 7), (4, 0, 8)]:
    assert abs(score((1, 2, 3), other) - base) > 1e-3
  # Rotations preserve norms.
  cos, sin = rope.rope_tables((2, 3, 4), head_dim)
  x = jnp.asarray(rng.standard_normal((1, 24, 2, head_dim)), jnp.float32)
  np.testing.assert_allclose(
    jnp.linalg.norm(rope.apply_rope(x, cos, sin), axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
  )


def test_rope_band_split_and_errors():
  assert rope.band_sizes(64) == (24, 20, 20)
  assert sum(rope.band_sizes(128)) == 128
  with pytest.raises(ValueError, match="even head_dim"):
    rope.band_sizes(7)


def test_sincos_3d_table_encodes_each_coordinate_in_its_band():
  t_dim, h_dim, w_dim = embeddings.sincos_3d_bands(128)
  assert (t_dim, h_dim, w_dim) == (32, 48, 48)
  table = embeddings.sincos_3d_embedding(128, 3, 4, 5)
  assert table.shape == (60, 128) and table.dtype == np.float32
  grid = np.asarray(rope.grid_positions((3, 4, 5)))  # patchify (t, h, w) order
  for axis, (start, size) in enumerate(((0, t_dim), (t_dim, h_dim), (t_dim + h_dim, w_dim))):
    band = table[:, start : start + size]
    omega = 1.0 / 10_000 ** (np.arange(size // 2) / (size / 2))
    angles = grid[:, axis, None] * omega[None, :]
    np.testing.assert_allclose(band, np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=1e-6)
  with pytest.raises(ValueError, match="divisible by 4"):
    embeddings.sincos_3d_bands(30)


def test_absolute_positions_break_the_translation_symmetry_of_rope():
  """A latent that is the same at every voxel: with RoPE only every token computes the same thing
  (attention over identical values), so the output is uniform; sincos3d lets each token know its place."""
  x, t, cond = _inputs(t=3, h=4, w=4)
  x = jnp.broadcast_to(x[:, :1, :1, :1, :], x.shape)
  outputs = {}
  for kind in ("none", "sincos3d"):
    model = dit.DiT(**dict(TINY, abs_pos_embedding=kind))
    params = _perturbed(_init(model, x, t, cond)["params"])
    outputs[kind] = np.asarray(_apply(model, params, x, t, cond))

  def spread(out):  # how much tokens' outputs differ (patches, not pixels: a patch has its own layout)
    tokens, _ = patchify.patchify(jnp.asarray(out), model.patch_size)
    return float(jnp.abs(tokens - tokens[:, :1]).max())

  assert spread(outputs["none"]) < 1e-4
  assert spread(outputs["sincos3d"]) > 1e-2


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("chunk", [1, 3, 5, 64])
def test_chunked_attention_equals_full(chunk):
  rng = np.random.default_rng(chunk)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in [(2, 7, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8)])
  mask = jnp.asarray([[True, True, False, True, False], [True] * 5])
  full = jax.jit(attention.dot_product_attention, static_argnames=("impl",))(q, k, v, mask, impl="xla")
  chunked = attention.dot_product_attention(q, k, v, mask, impl="chunked", query_chunk_size=chunk)
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-6)
  # And the gradients (the chunked path rematerialises each chunk).
  loss = lambda impl: (
    lambda q: jnp.sum(
      jnp.sin(
        attention.dot_product_attention(  # noqa: E731
          q, k, v, mask, impl=impl, query_chunk_size=chunk
        )
      )
    )
  )
  np.testing.assert_allclose(
    jax.jit(jax.grad(loss("chunked")))(q), jax.jit(jax.grad(loss("xla")))(q), rtol=1e-5, atol=1e-6
  )


def test_attention_masks_padding_and_zeroes_fully_masked_rows():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 4, 2, 8)), jnp.float32) for _ in range(3))
  mask = jnp.asarray([[True, True, False, False], [False] * 4])
  out = attention.dot_product_attention(q, k, v, mask)
  v2 = v.at[0, 2:].set(100.0).at[1].set(-5.0)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v2, mask), out, atol=1e-6)
  np.testing.assert_array_equal(out[1], 0.0)
  with pytest.raises(ValueError, match="unknown attention_impl 'flash'"):
    attention.dot_product_attention(q, k, v, impl="flash")


# ----------------------------------------------------------------------------- blocks and the model


@pytest.mark.parametrize("modulation", ["per_block", "shared"])
def test_adaln_zero_block_is_identity_at_init(modulation):
  block = dit.DiTBlock(num_heads=2, mlp_dim=64, qk_norm=True, cross_attention=True, modulation=modulation)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 6, 32)), jnp.float32)
  # "shared": the block receives the model-level projection, which is zero-initialised.
  cond = jnp.asarray(rng.standard_normal((2, 32)), jnp.float32) if modulation == "per_block" else jnp.zeros((2, 6, 32))
  text = jnp.asarray(rng.standard_normal((2, 3, 32)), jnp.float32)
  mask = jnp.ones((2, 3), bool)
  rope_tables = rope.rope_tables((1, 2, 3), 16)
  params = _init(block, x, cond, rope_tables, text, mask)["params"]
  np.testing.assert_array_equal(_apply(block, params, x, cond, rope_tables, text, mask), x)
  # Not vacuous: once the zero-initialised layers move, the block does something.
  moved = _apply(block, _perturbed(params), x, cond, rope_tables, text, mask)
  assert float(jnp.abs(moved - x).max()) > 1e-2


def test_dit_output_is_zero_at_init_and_has_learn_sigma_channels(text_model):
  model, init_params, _ = text_model
  x, t, cond = _inputs()
  out = _apply(model, init_params, x, t, cond)
  assert out.shape == x.shape[:-1] + (8,) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)


def test_cross_attention_ignores_padded_text_tokens(text_model):
  model, _, params = text_model
  x, t, cond = _inputs()
  out = _apply(model, params, x, t, cond)
  padded = dict(cond, text=cond["text"].at[0, 3:].set(50.0))  # only padding of sample 0 changes
  np.testing.assert_allclose(_apply(model, params, x, t, padded), out, atol=1e-6)
  real = dict(cond, text=cond["text"].at[0, 1].set(50.0))  # a real token of sample 0 changes
  changed = _apply(model, params, x, t, real)
  assert float(jnp.abs(changed[0] - out[0]).max()) > 1e-3
  np.testing.assert_allclose(changed[1], out[1], atol=1e-6)  # samples do not leak into each other


def test_dit_chunked_attention_matches_xla(text_model):
  model, _, params = text_model
  x, t, cond = _inputs()
  chunked = _apply(model.clone(attention_impl="chunked", query_chunk_size=5), params, x, t, cond)
  np.testing.assert_allclose(chunked, _apply(model, params, x, t, cond), rtol=1e-5, atol=1e-5)


def test_scan_equals_unrolled_layers(text_model):
  model, _, params = text_model
  x, t, cond = _inputs()
  unrolled = model.clone(scan_layers=False)
  layer_params = {k: v for k, v in params.items() if k != "blocks"}
  layer_params.update({f"blocks_{i}": p for i, p in enumerate(dit.unstack_layers(params["blocks"], model.depth))})
  assert jax.tree.structure(layer_params) == jax.tree.structure(
    jax.eval_shape(lambda: nn.unbox(unrolled.init(jax.random.key(0), x, t, cond))["params"])
  )
  np.testing.assert_allclose(
    _apply(unrolled, layer_params, x, t, cond), _apply(model, params, x, t, cond), rtol=1e-5, atol=1e-5
  )
  restacked = dit.stack_layers(dit.unstack_layers(params["blocks"], model.depth))
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), restacked, params["blocks"]))


def test_video_model_accepts_new_clip_sizes_with_the_same_params(text_model):
  model, _, params = text_model
  x, t, cond = _inputs(t=5, h=6, w=8, length=7)
  out = _apply(model, params, x, t, cond)
  assert out.shape == x.shape[:-1] + (8,) and bool(jnp.all(jnp.isfinite(out)))


def test_image_mode_is_the_dit_paper_network(image_model):
  model, params = image_model
  assert params["label_embedder"]["embedding"].shape == (11, 32)  # + the null class
  block = params["blocks"]
  assert set(block) == {"modulation", "self_attention", "mlp"}  # no cross-attention
  assert set(block["self_attention"]) == {"query", "key", "value", "out"}  # no QK norm
  with pytest.raises(ValueError, match="one latent frame"):
    _apply(model, params, jnp.zeros((2, 2, 8, 8, 4)), jnp.zeros(2), {"label": jnp.array([3, 10])})


@functools.cache
def _image_loss(model):
  """Jitted (loss, grads) of a fixed image batch; cached per model so tests share the compilation."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 1, 8, 8, 4)), jnp.float32)
  cond = {"label": jnp.array([3, 10])}
  return jax.jit(
    jax.value_and_grad(lambda p: jnp.mean(jnp.sin(model.apply({"params": p}, x, jnp.array([5.0, 900.0]), cond))))
  )


def test_remat_keeps_loss_and_gradients(image_model):
  model, params = image_model
  rematted = model.clone(remat_policy="full")
  x, label = jnp.zeros((2, 1, 8, 8, 4)), {"label": jnp.array([3, 10])}
  forward = lambda m: str(jax.make_jaxpr(lambda p: m.apply({"params": p}, x, jnp.zeros(2), label))(params))  # noqa
  assert "remat" not in forward(model) and "remat" in forward(rematted)  # the policy is wired in
  loss, grads = _image_loss(model)(params)
  remat_loss, remat_grads = _image_loss(rematted)(params)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), remat_grads, grads)


def test_bfloat16_compute_is_close_to_float32_and_keeps_float32_params(text_model, image_model):
  model, _, params = text_model
  x, t, cond = _inputs()
  bf16 = model.clone(dtype="bfloat16")
  abstract = jax.eval_shape(lambda: nn.unbox(bf16.init(jax.random.key(0), x, t, cond)))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract))
  ref = _apply(model, params, x, t, cond)
  out = _apply(bf16, params, x, t, cond)
  assert out.dtype == jnp.float32
  rel = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
  assert 0 < rel < 3e-2, rel
  image, image_params = image_model
  loss, grads = _image_loss(image)(image_params)
  bf16_loss, bf16_grads = _image_loss(image.clone(dtype="bfloat16"))(image_params)
  assert abs(float(bf16_loss - loss)) < 3e-2 * abs(float(loss)) + 1e-3
  for g in jax.tree.leaves(bf16_grads):
    assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
  cosine = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(bf16_grads), jax.tree.leaves(grads))) / (
    np.sqrt(sum(float(jnp.vdot(a, a)) for a in jax.tree.leaves(bf16_grads)))
    * np.sqrt(sum(float(jnp.vdot(b, b)) for b in jax.tree.leaves(grads)))
  )
  assert cosine > 0.99, cosine


def test_every_param_carries_logical_axis_names():
  model = dit.DiT(**dict(TINY, modulation="shared"))
  x, t, cond = _inputs()
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, cond))["params"]
  known = {name for name, _ in base.LOGICAL_AXIS_RULES} | {None}
  leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert leaves and all(isinstance(v, nn.Partitioned) for v in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known, leaf.names
  spec = nn.get_partition_spec(boxed)
  assert spec["blocks"]["self_attention"]["query"]["kernel"] == jax.sharding.PartitionSpec(
    "layers", "embed", "heads", "kv"
  )
  assert spec["blocks"]["mlp"]["fc2"]["kernel"] == jax.sharding.PartitionSpec("layers", "mlp", "embed")


# ----------------------------------------------------------------------------- config, variants, errors


def test_from_config_uses_the_variant_sizes():
  cfg = base.get_config()
  cfg.dit.variant = "video-tiny"
  cfg.dit = variants.apply_variant(cfg.dit)
  model = dit.DiT.from_config(cfg.dit, in_channels=16, text_dim=128)
  assert (model.depth, model.hidden_size, model.num_heads, model.mlp_dim) == (4, 128, 4, 512)
  with pytest.raises(ValueError, match=r"unknown DiT variant 'DiT-XXL/2'; known variants: DiT-S/2, .*wan-14b"):
    variants.variant_fields("DiT-XXL/2")
  cfg.dit.depth = 2
  assert variants.variant_mismatches(cfg.dit) == {"depth": (2, 4)}


@pytest.mark.parametrize(
  "change,message",
  [
    (dict(conditioning="image"), r"dit.conditioning='image' is not one of text, class"),
    (dict(remat_policy="some"), r"dit.remat_policy='some' is not one of none, full"),
    (dict(abs_pos_embedding="learned"), r"dit.abs_pos_embedding='learned' is not one of none, sincos3d"),
    (dict(hidden_size=30, num_heads=4), r"hidden_size=30 must be divisible by dit.num_heads=4"),
    (dict(attention_impl="cudnn"), r"'cudnn' runs in bfloat16: also set dit.dtype='bfloat16'"),
  ],
)
def test_bad_settings_raise_clear_errors(change, message):
  x, t, cond = _inputs()
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: dit.DiT(**dict(TINY, **change)).init(jax.random.key(0), x, t, cond))


def test_bad_inputs_raise_clear_errors(text_model):
  model, _, params = text_model
  x, t, cond = _inputs()
  apply = lambda *a: _apply(model, params, *a)  # noqa: E731
  with pytest.raises(ValueError, match=r"latents \[B, T, H, W, 4\]"):
    apply(x[..., :3], t, cond)
  with pytest.raises(ValueError, match=r"missing \['pooled'\]"):
    apply(x, t, {k: v for k, v in cond.items() if k != "pooled"})
  with pytest.raises(ValueError, match=r"text_mask'\] must be bool"):
    apply(x, t, dict(cond, text_mask=cond["text_mask"].astype(jnp.int32)))
  with pytest.raises(ValueError, match=r"text_dim=8"):
    apply(x, t, dict(cond, text=jnp.zeros((2, 5, 9))))
  with pytest.raises(ValueError, match=r"H \(latent height\) = 3"):
    apply(jnp.zeros((2, 3, 3, 4, 4)), t, cond)
