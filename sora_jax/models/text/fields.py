"""The text of a batch as the DiT consumes it: the "text fields", the null prompt, and the DiT's `cond`.

Two layouts, chosen by whether the text encoder trains with the DiT:

  trainable encoder ("small"), which then runs inside the train step:
      text_ids     int32 [B, L]
      text_mask    bool  [B, L]
  frozen encoder ("minilm"), whose embeddings are computed once (latent cache, sampling):
      text_tokens  f32   [B, L, D]
      text_mask    bool  [B, L]
      text_pooled  f32   [B, D]

The latent cache stores these fields per clip, CFG dropout swaps them for the null prompt's,
and the train step, the eval loss and the sampler turn them into the DiT's conditioning
`cond = {"text": [B, L, D], "text_mask": [B, L], "pooled": [B, D]}` with `text_condition`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

TEXT_KEYS = ("text_ids", "text_mask", "text_tokens", "text_pooled")


def field_specs(text_encoder) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{field: (shape of one example, numpy dtype)} of the encoder's layout (see module docstring)."""
  length, width = text_encoder.max_length, text_encoder.output_dim
  if text_encoder.trainable:
    return {"text_ids": ((length,), np.int32), "text_mask": ((length,), np.bool_)}
  return {
    "text_tokens": ((length, width), np.float32),
    "text_mask": ((length,), np.bool_),
    "text_pooled": ((width,), np.float32),
  }


def text_fields(text_encoder, text_params, prompts: Sequence[str]) -> dict[str, np.ndarray]:
  """The text fields [B, ...] of `prompts`.

  Token ids for a trainable encoder (`text_params` unused: the encoder runs later, inside the
  step); embeddings for a frozen one, computed here with `text_params` (its `load_pretrained()`).
  """
  if text_encoder.trainable:
    ids, mask = text_encoder.tokenize(prompts)
    return {"text_ids": np.asarray(ids, np.int32), "text_mask": np.asarray(mask, bool)}
  tokens, mask, pooled = text_encoder.encode(text_params, prompts)
  return {
    "text_tokens": np.asarray(tokens, np.float32),
    "text_mask": np.asarray(mask, bool),
    "text_pooled": np.asarray(pooled, np.float32),
  }


def null_text_fields(text_encoder, text_params) -> dict[str, np.ndarray]:
  """The unconditional ("") text fields of one example (no batch axis).

  CFG dropout during training replaces a clip's text by these; sampling uses the same as
  the negative prompt when none is given, so train and sample agree.
  """
  return {k: v[0] for k, v in text_fields(text_encoder, text_params, [""]).items()}


def text_fields_of(batch: Mapping[str, Any]) -> dict[str, Any]:
  """The text fields of a batch dict (which also holds latents, captions, ...)."""
  return {k: batch[k] for k in TEXT_KEYS if k in batch}


def text_condition(text_encoder, params: Mapping[str, Any], fields: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The DiT's `cond` {text [B, L, D], text_mask [B, L] bool, pooled [B, D]} from text fields.

  `params` is the trainable tree {"dit": ..., "text": ...}; "text" is read only when the
  fields hold token ids (a trainable encoder runs here, inside the jitted step).
  """
  if "text_ids" in fields:
    tokens, pooled = text_encoder.module.apply({"params": params["text"]}, fields["text_ids"], fields["text_mask"])
  else:
    tokens, pooled = fields["text_tokens"], fields["text_pooled"]
  return {"text": tokens, "text_mask": fields["text_mask"].astype(bool), "pooled": pooled}
