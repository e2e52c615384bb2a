"""Pluggable text encoders: prompts -> token states [B, L, D], mask [B, L], pooled vector [B, D].

Selected by `config.text.encoder`:

* "small": a small transformer over UTF-8 bytes (`small_encoder.py`), random init,
  trained jointly with the DiT (`trainable=True`).
* "minilm": frozen pretrained all-MiniLM-L6-v2 (`minilm.py`, D = 384); its embeddings
  are computed once and cached (`trainable=False`).
* "umt5": frozen umT5 (`umt5.py`; Wan 2.1's umT5-XXL, D = 4096) read from a local folder
  (`config.text.pretrained`: a diffusers Wan 2.1 folder or a umT5 folder with tokenizer.json).

    encoder = build_text_encoder(config.text)           # cheap: no weights are read
    params = encoder.load_pretrained()                    # frozen "minilm": {'params': ...}, boxed like module.init
    params = encoder.init(jax.random.key(0))              # trainable "small": random, boxed like module.init
    tokens, mask, pooled = encoder.encode(params, ["a red circle moving left"])
    # or, inside a jitted train step:
    ids, mask = encoder.tokenize(captions)                # numpy int32 / bool [B, L]
    tokens, pooled = encoder.module.apply(params, ids, mask)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models.dtypes import compute_dtype
from sora_jax.models.text import minilm, small_encoder, tokenizers, umt5


@dataclasses.dataclass
class TextEncoder:
  """A tokenizer, a linen module and where its parameters come from.

  Attributes:
    name: "small", "minilm" or "umt5".
    tokenizer: `tokenizer(prompts) -> (ids int32 [B, L], mask bool [B, L])` (numpy).
    module: `module.apply(params, ids, mask) -> (tokens f32 [B, L, D], pooled f32 [B, D])`.
    output_dim: D.
    trainable: True if trained with the DiT; False for a frozen pretrained encoder.
    max_length: L.
    pretrained: () -> variables {'params': ...} read from disk (frozen encoders), or None
      for an encoder trained from scratch.
  """

  name: str
  tokenizer: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
  module: nn.Module
  output_dim: int
  trainable: bool
  max_length: int
  pretrained: Callable[[], dict] | None = dataclasses.field(default=None, repr=False)

  def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """list[str] -> (ids int32 [B, L], mask bool [B, L]); long prompts truncated with a warning."""
    return self.tokenizer(prompts)

  def init(self, rng: jax.Array) -> dict:
    """Randomly initialised variables {'params': ...} (what a trainable encoder starts from).

    Leaves are `nn.LogicallyPartitioned` boxes, as `module.init` returns them (derive
    shardings from them, or strip them with `nn.meta.unbox`); `module.apply` takes either.
    """
    ids = jnp.zeros((1, self.max_length), jnp.int32)
    return self.module.init(rng, ids, jnp.ones(ids.shape, bool))

  def load_pretrained(self) -> dict:
    """The pretrained variables {'params': ...} of a frozen encoder, read from disk, boxed like `init`."""
    if self.pretrained is None:
      raise ValueError(
        f"text encoder {self.name!r} has no pretrained weights: it is trained with the DiT "
        f"(its params are the 'text' subtree of the DiT run's checkpoint)"
      )
    return self.pretrained()

  @functools.cached_property
  def _apply(self):
    return jax.jit(self.module.apply)

  def encode(self, params: dict, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """prompts -> (tokens f32 [B, L, D], mask bool [B, L], pooled f32 [B, D]), jitted.

    `params` is a variables dict {'params': tree} (`init`, `load_pretrained`), or the bare tree.
    """
    ids, mask = self.tokenize(prompts)
    variables = params if set(params) == {"params"} else {"params": params}
    tokens, pooled = self._apply(variables, jnp.asarray(ids), jnp.asarray(mask))
    return tokens, jnp.asarray(mask), pooled


# Tokenizers of the trainable "small" encoder (config.text.tokenizer).
SMALL_TOKENIZERS = {"byte": tokenizers.ByteTokenizer, "word": tokenizers.HashedWordTokenizer}


def _build_small(text_cfg) -> TextEncoder:
  name = text_cfg.tokenizer
  if name not in SMALL_TOKENIZERS:
    raise ValueError(f"config.text.tokenizer={name!r} is not one of {sorted(SMALL_TOKENIZERS)}")
  tokenizer = SMALL_TOKENIZERS[name](text_cfg.max_length)
  module = small_encoder.SmallTextEncoder(
    vocab_size=tokenizer.vocab_size,
    max_length=tokenizer.max_length,
    width=text_cfg.width,
    depth=text_cfg.depth,
    num_heads=text_cfg.num_heads,
    dtype=compute_dtype(text_cfg.dtype, "text.dtype"),
  )
  if text_cfg.width % text_cfg.num_heads:
    raise ValueError(
      f"config.text.width={text_cfg.width} must be divisible by config.text.num_heads={text_cfg.num_heads}"
    )
  return TextEncoder("small", tokenizer, module, text_cfg.width, True, tokenizer.max_length)


def _build_minilm(text_cfg) -> TextEncoder:
  model_dir = tokenizers.minilm_model_dir()
  config = minilm.read_model_config(model_dir)
  if text_cfg.max_length > config["max_position_embeddings"]:
    raise ValueError(
      f"config.text.max_length={text_cfg.max_length} exceeds MiniLM's {config['max_position_embeddings']} positions"
    )
  tokenizer = tokenizers.WordPieceTokenizer(text_cfg.max_length, model_dir)
  module = minilm.minilm_from_config(config, dtype=compute_dtype(text_cfg.dtype, "text.dtype"))
  pretrained = lambda: minilm.load_minilm_params(module, model_dir)
  return TextEncoder("minilm", tokenizer, module, config["hidden_size"], False, tokenizer.max_length, pretrained)


def _build_umt5(text_cfg) -> TextEncoder:
  """umT5 from config.text.pretrained; without a folder, umT5-XXL's shapes (Wan 2.1's encoder) for
  estimates, with a tokenizer and weights that say which folder to set when used."""
  dtype = compute_dtype(text_cfg.dtype, "text.dtype")
  if not text_cfg.pretrained:
    module = umt5.UMT5Encoder(dtype=dtype)
    tokenizer = umt5.UnavailableTokenizer(text_cfg.max_length)
    return TextEncoder("umt5", tokenizer, module, module.width, False, text_cfg.max_length, tokenizer.load)
  weights_dir, tokenizer_dir = umt5.model_dirs(text_cfg.pretrained)
  module = umt5.UMT5Encoder.from_hf_config(umt5.read_config(weights_dir), dtype=dtype)
  tokenizer = umt5.UMT5Tokenizer(text_cfg.max_length, tokenizer_dir)
  if tokenizer.vocab_size > module.vocab_size:
    raise ValueError(
      f"{tokenizer_dir}/tokenizer.json has {tokenizer.vocab_size} tokens but the encoder in {weights_dir} embeds "
      f"{module.vocab_size}: tokenizer and weights do not belong together"
    )
  pretrained = lambda: umt5.load_variables(module, weights_dir, dtype)  # noqa: E731
  return TextEncoder("umt5", tokenizer, module, module.width, False, tokenizer.max_length, pretrained)


ENCODERS = {"small": _build_small, "minilm": _build_minilm, "umt5": _build_umt5}


def build_text_encoder(text_cfg) -> TextEncoder:
  """The encoder named by `text_cfg.encoder` ("small", "minilm" or "umt5"), sized by `text_cfg`.

  Cheap: reads at most the tokenizer and the model's config.json, never the weights.
  """
  if text_cfg.encoder not in ENCODERS:
    raise ValueError(f"config.text.encoder={text_cfg.encoder!r} is not one of {sorted(ENCODERS)}")
  return ENCODERS[text_cfg.encoder](text_cfg)


__all__ = ["TextEncoder", "build_text_encoder", "ENCODERS"]
