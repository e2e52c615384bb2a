"""Frozen umT5 encoder (Wan 2.1's text encoder): transformers' `UMT5EncoderModel` in Flax, with its tokenizer.

ids int32 [B, L], mask bool [B, L] -> (tokens float32 [B, L, D], pooled float32 [B, D]).

T5 v1.1 layout with umT5's per-layer position bias: token embedding, then per layer
    x += SelfAttn(RMSNorm(x))            no 1/sqrt(d) scaling; + relative position bias of THIS layer
    x += W_o(act(W_i0 h) * W_i1 h)       gated FFN on h = RMSNorm(x) (act: GELU-tanh for "gated-gelu")
then a final RMS norm ("T5 layer norm": scale only, no mean). The bias comes from a table
[num_buckets, heads] indexed by the bucketed key-query offset (exact for small offsets,
logarithmic up to `max_distance`, bidirectional), `relative_buckets` below.

`tokens` is the last hidden state with the padding positions set to zero: Wan's pipeline keeps
each prompt's first seq_len states and zero-pads to the full length, and the Wan transformer
attends to all positions, so the zeros are part of its input. `pooled` is the masked mean (the
text-encoder interface asks for one; the Wan transformer does not use it).

Weights and tokenizer come from a local folder (`config.text.pretrained`): a diffusers Wan
folder (`text_encoder/` + `tokenizer/`) or a folder with `config.json`, `*.safetensors` and
`tokenizer.json`. The tokenizer runs with the `tokenizers` library from `tokenizer.json` (no
sentencepiece, no torch): "<prompt> </s>" padded with "<pad>", as transformers'
`T5TokenizerFast` does for Wan; prompts are cleaned like Wan's pipeline (HTML entities,
whitespace).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models.text import small_encoder
from sora_jax.models.text import tokenizers as tokenizers_lib

Dtype = Any
ACTIVATIONS = {
  "gelu_new": lambda x: nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
  "gelu": lambda x: nn.gelu(x, approximate=False),
  "relu": nn.relu,
}


def relative_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 position buckets [query_length, key_length] (int32) of offsets key - query.

  Half the buckets per direction; offsets below max_exact = num_buckets / 4 get their own
  bucket, larger ones share logarithmically wider buckets up to max_distance. Computed in
  float32 like transformers' `_relative_position_bucket`, so bucket edges agree.
  """
  offset = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
  half = num_buckets // 2
  buckets = (offset > 0).astype(np.int64) * half
  distance = np.abs(offset)
  max_exact = half // 2
  safe = np.maximum(distance, 1).astype(np.float32)  # distance 0 is exact anyway; avoids log(0)
  ratio = np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
  large = max_exact + (ratio * np.float32(half - max_exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class T5RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) * weight (float32 statistics; the T5 "layer norm")."""

  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (x32 * weight).astype(self.dtype)


class UMT5Layer(nn.Module):
  """One encoder layer: pre-norm self-attention with this layer's relative bias, pre-norm gated FFN."""

  num_heads: int
  head_dim: int
  mlp_dim: int
  num_buckets: int
  max_distance: int
  activation: str
  gated: bool
  epsilon: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    length = x.shape[1]
    heads = (self.num_heads, self.head_dim)
    linear = lambda features, axes, n_in=1, name=None: small_encoder.Linear(  # noqa: E731
      features, axes, num_in_axes=n_in, use_bias=False, dtype=self.dtype, name=name
    )
    h = T5RMSNorm(self.epsilon, self.dtype, name="attention_norm")(x)
    q = linear(heads, ("embed", "heads", "kv"), name="query")(h)
    k = linear(heads, ("embed", "heads", "kv"), name="key")(h)
    v = linear(heads, ("embed", "heads", "kv"), name="value")(h)
    q, k, v = (nn.with_logical_constraint(t, small_encoder.HEAD_AXES) for t in (q, k, v))
    table = self.param(
      "relative_attention_bias",
      nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "heads")),
      (self.num_buckets, self.num_heads),
      jnp.float32,
    )
    buckets = relative_buckets(length, length, self.num_buckets, self.max_distance)
    bias = jnp.transpose(table[jnp.asarray(buckets)], (2, 0, 1))  # [H, L, L]
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) + bias[None]
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqs,bshk->bqhk", weights.astype(self.dtype), v, preferred_element_type=jnp.float32)
    x = x + linear((x.shape[-1],), ("heads", "kv", "embed"), n_in=2, name="out")(out.astype(self.dtype))

    h = T5RMSNorm(self.epsilon, self.dtype, name="mlp_norm")(x)
    act = ACTIVATIONS[self.activation]
    if self.gated:
      hidden = act(linear((self.mlp_dim,), ("embed", "mlp"), name="wi_0")(h)) * linear(
        (self.mlp_dim,), ("embed", "mlp"), name="wi_1"
      )(h)
    else:
      hidden = act(linear((self.mlp_dim,), ("embed", "mlp"), name="wi")(h))
    x = x + linear((x.shape[-1],), ("mlp", "embed"), name="wo")(hidden.astype(self.dtype))
    return nn.with_logical_constraint(x, small_encoder.TOKEN_AXES)


class UMT5Encoder(nn.Module):
  """The umT5 encoder stack (defaults: umT5-XXL, Wan 2.1's text encoder). Build with `from_hf_config`."""

  vocab_size: int = 256384
  width: int = 4096
  depth: int = 24
  num_heads: int = 64
  head_dim: int = 64
  mlp_dim: int = 10240
  num_buckets: int = 32
  max_distance: int = 128
  activation: str = "gelu_new"
  gated: bool = True
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @classmethod
  def from_hf_config(cls, config: dict, dtype: Dtype = jnp.float32) -> UMT5Encoder:
    """From a transformers `UMT5Config` config.json (a dict)."""
    if config.get("model_type") not in ("umt5", "t5"):
      raise ValueError(f"expected a umT5 config (model_type 'umt5'), got model_type={config.get('model_type')!r}")
    proj = config.get("feed_forward_proj", "gated-gelu")
    gated = proj.startswith("gated-")
    activation = "gelu_new" if proj == "gated-gelu" else proj.split("-")[-1]
    if activation not in ACTIVATIONS:
      raise ValueError(f"feed_forward_proj={proj!r}: activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
    return cls(
      vocab_size=config["vocab_size"],
      width=config["d_model"],
      depth=config["num_layers"],
      num_heads=config["num_heads"],
      head_dim=config["d_kv"],
      mlp_dim=config["d_ff"],
      num_buckets=config.get("relative_attention_num_buckets", 32),
      max_distance=config.get("relative_attention_max_distance", 128),
      activation=activation,
      gated=gated,
      epsilon=config.get("layer_norm_epsilon", 1e-6),
      dtype=dtype,
    )

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    if ids.ndim != 2 or mask.shape != ids.shape:
      raise ValueError(f"expected ids and mask of shape [B, L], got {ids.shape} and {mask.shape}")
    mask = mask.astype(bool)
    table = self.param(
      "embedding",
      nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
      (self.vocab_size, self.width),
    )
    x = jnp.take(table, ids, axis=0).astype(self.dtype)
    x = nn.with_logical_constraint(x, small_encoder.TOKEN_AXES)
    settings = dict(
      num_heads=self.num_heads,
      head_dim=self.head_dim,
      mlp_dim=self.mlp_dim,
      num_buckets=self.num_buckets,
      max_distance=self.max_distance,
      activation=self.activation,
      gated=self.gated,
      epsilon=self.epsilon,
      dtype=self.dtype,
    )
    for i in range(self.depth):
      x = UMT5Layer(**settings, name=f"layer_{i}")(x, mask)
    x = T5RMSNorm(self.epsilon, jnp.float32, name="final_norm")(x)
    tokens = jnp.where(mask[..., None], x, 0.0).astype(jnp.float32)
    return tokens, small_encoder.masked_mean(tokens, mask)


# ------------------------------------------------------------------------------------------------- files


def model_dirs(path: str) -> tuple[str, str]:
  """(weights folder, tokenizer folder) of `path`: a diffusers Wan folder or one model folder."""
  path = os.fspath(path)
  if not path:
    raise ValueError(
      "the umT5 text encoder needs its weights: set --config.text.pretrained=PATH to a diffusers Wan 2.1 "
      "folder (with text_encoder/ and tokenizer/) or to a folder with config.json, *.safetensors and tokenizer.json"
    )
  if not os.path.isdir(path):
    raise FileNotFoundError(f"config.text.pretrained={path!r} is not a folder")
  weights = os.path.join(path, "text_encoder") if os.path.isdir(os.path.join(path, "text_encoder")) else path
  tokenizer = os.path.join(path, "tokenizer") if os.path.isdir(os.path.join(path, "tokenizer")) else path
  for folder, name in ((weights, "config.json"), (tokenizer, "tokenizer.json")):
    if not os.path.isfile(os.path.join(folder, name)):
      raise FileNotFoundError(
        f"{os.path.join(folder, name)} is missing: the umT5 encoder needs {name} (a tokenizer.json, not only "
        f"spiece.model: re-save the tokenizer with transformers' T5TokenizerFast.save_pretrained)"
      )
  return weights, tokenizer


def read_config(weights_dir: str) -> dict:
  with open(os.path.join(weights_dir, "config.json")) as f:
    return json.load(f)


def clean_prompt(text: str) -> str:
  """Wan's prompt cleaning: HTML entities unescaped (twice), whitespace runs collapsed, stripped."""
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()


class UMT5Tokenizer:
  """`tokenizer.json` of a T5 tokenizer via the `tokenizers` library: ids of "<prompt> </s>", "<pad>"-padded."""

  def __init__(self, max_length: int, tokenizer_dir: str, pad_token: str = "<pad>", end_token: str = "</s>"):
    import tokenizers  # pylint: disable=g-import-not-at-top

    path = os.path.join(tokenizer_dir, "tokenizer.json")
    self._tokenizer = tokenizers.Tokenizer.from_file(path)
    self._tokenizer.no_truncation()  # truncation keeps "</s>" and warns: `tokenizers_lib._pad_and_warn`
    self._tokenizer.no_padding()
    self.pad_id = self._tokenizer.token_to_id(pad_token)
    self.end_id = self._tokenizer.token_to_id(end_token)
    if self.pad_id is None or self.end_id is None:
      raise ValueError(f"{path} has no {pad_token!r} or {end_token!r} token: not a T5 tokenizer")
    if max_length < 2:
      raise ValueError(f"max_length={max_length} must be >= 2 (the end token is always emitted)")
    self.vocab_size = self._tokenizer.get_vocab_size()
    self.max_length = int(max_length)

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    prompts = [clean_prompt(p) for p in tokenizers_lib.check_prompts(prompts)]
    encodings = self._tokenizer.encode_batch(prompts) if prompts else []
    return tokenizers_lib._pad_and_warn(  # pylint: disable=protected-access
      [list(e.ids) for e in encodings], prompts, max_length=self.max_length, pad_id=self.pad_id, end_id=self.end_id
    )


class UnavailableTokenizer:
  """Stands in for the tokenizer (and weights) while config.text.pretrained is empty: the encoder's shapes
  are known (umT5-XXL), so sizes and memory can be estimated; using it raises what to set."""

  def __init__(self, max_length: int):
    self.max_length = int(max_length)

  def load(self, *_):
    model_dirs("")  # raises the error that names --config.text.pretrained

  def __call__(self, prompts):
    self.load()


def load_variables(module: UMT5Encoder, weights_dir: str, dtype: Dtype = None) -> dict:
  """Pretrained variables {'params': ...} of `module` from `weights_dir` (on one device), boxed with
  logical axis names like `module.init`; `dtype` casts the weights (e.g. bfloat16 halves umT5-XXL's 23 GB).

  Keys and shapes are checked against the umT5 table (`models.wan.weights.umt5_table`) first;
  `models.wan.folder.load_umt5` loads the same weights sharded onto a mesh instead.
  """
  from sora_jax.models import weight_mapping  # pylint: disable=g-import-not-at-top
  from sora_jax.models.safetensors_io import SafetensorsCheckpoint  # pylint: disable=g-import-not-at-top
  from sora_jax.models.wan import weights  # pylint: disable=g-import-not-at-top

  ids = jnp.zeros((1, 2), jnp.int32)
  boxed = jax.eval_shape(module.init, jax.random.key(0), ids, jnp.ones((1, 2), bool))["params"]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
  abstract = jax.tree.map(
    lambda box: jax.ShapeDtypeStruct(box.value.shape, box.value.dtype, sharding=device), boxed, is_leaf=is_box
  )
  table = weights.umt5_table(module)
  params = weight_mapping.load_onto_mesh(table, SafetensorsCheckpoint(weights_dir), abstract, dtype=dtype)
  return {"params": jax.tree.map(lambda box, value: box.replace_boxed(value), boxed, params, is_leaf=is_box)}
