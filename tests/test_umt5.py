"""umT5: our encoder == transformers' UMT5EncoderModel, our tokenizer.json reading == transformers' tokenizer.

A tiny random UMT5EncoderModel and a small T5-style tokenizer (built with the `tokenizers`
library) are saved with `save_pretrained`; we load both from disk without torch or
sentencepiece. Needs the [peers] extra (the bucket table test does not).
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import wan_peers

from configs import base
from sora_jax.models.text import build_text_encoder, umt5

PROMPTS = ["a red circle moving left", "the   cat &amp; dog staying still", "", "purple elephant"]


def test_relative_buckets_are_bidirectional_and_logarithmic():
  buckets = umt5.relative_buckets(300, 300, num_buckets=32, max_distance=128)
  assert buckets[0, 0] == 0 and buckets[5, 5] == 0  # zero offset
  assert buckets[0, 1] == 17 and buckets[1, 0] == 1  # one step right / left: the two halves
  assert buckets[0, 7] == 23 and buckets[0, 8] > 23  # exact up to max_exact = 8, then log-spaced
  assert buckets[0, 299] == 31 and buckets[299, 0] == 15  # beyond max_distance: the last bucket of each half
  assert buckets.min() >= 0 and buckets.max() <= 31


def test_relative_buckets_match_transformers():
  torch = pytest.importorskip("torch", reason=wan_peers.PEERS_REASON)
  pytest.importorskip("transformers", reason=wan_peers.PEERS_REASON)
  attention = wan_peers.torch_umt5().encoder.block[0].layer[0].SelfAttention
  for length in (7, 513):  # 513: every bucket edge up to and past max_distance, float32 log included
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    want = attention._relative_position_bucket(offsets).numpy()
    np.testing.assert_array_equal(umt5.relative_buckets(length, length, 32, 128), want)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  pytest.importorskip("torch", reason=wan_peers.PEERS_REASON)
  pytest.importorskip("transformers", reason=wan_peers.PEERS_REASON)
  folder = str(tmp_path_factory.mktemp("umt5"))
  model = wan_peers.torch_umt5()
  model.save_pretrained(folder)
  hf_tokenizer = wan_peers.save_tokenizer(folder)
  return model, hf_tokenizer, folder


@pytest.mark.peers
def test_tokenizer_matches_transformers(saved):
  _, hf_tokenizer, folder = saved
  ours = umt5.UMT5Tokenizer(12, folder)
  ids, mask = ours(PROMPTS)
  want = hf_tokenizer(
    [umt5.clean_prompt(p) for p in PROMPTS], padding="max_length", max_length=12, truncation=True, return_tensors="np"
  )
  np.testing.assert_array_equal(ids, want["input_ids"])
  np.testing.assert_array_equal(mask, want["attention_mask"].astype(bool))
  assert ids[2, 0] == ours.end_id and mask[2].sum() == 1  # the empty prompt is "</s>"
  assert umt5.clean_prompt(" the \n cat &amp;amp; dog ") == "the cat & dog"
  with pytest.warns(UserWarning, match="truncated"):
    long_ids, _ = umt5.UMT5Tokenizer(4, folder)(["a red circle moving left"])
  np.testing.assert_array_equal(
    long_ids, hf_tokenizer(["a red circle moving left"], max_length=4, truncation=True)["input_ids"]
  )


@pytest.mark.peers
def test_encoder_matches_transformers(saved):
  import torch

  model, _, folder = saved
  config = base.get_config().text
  config.update(encoder="umt5", pretrained=folder, max_length=16)
  encoder = build_text_encoder(config)
  assert encoder.output_dim == 32 and not encoder.trainable
  variables = encoder.load_pretrained()
  tokens, mask, pooled = encoder.encode(variables, PROMPTS)
  ids, _ = encoder.tokenize(PROMPTS)
  with torch.no_grad():
    want = model(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(np.array(mask)).long()).last_hidden_state
  want = want.numpy() * np.asarray(mask)[..., None]  # Wan keeps each prompt's first seq_len states, zeros after
  # float32 both sides; summation order only. A wrong bucket, missing bias or norm errs by > 1e-2.
  np.testing.assert_allclose(tokens, want, rtol=1e-4, atol=2e-5)
  assert np.abs(want).max() > 0.5 and not np.asarray(tokens)[~np.asarray(mask)].any()
  expected_pooled = want.sum(1) / np.asarray(mask).sum(1, keepdims=True)
  np.testing.assert_allclose(pooled, expected_pooled, rtol=1e-4, atol=2e-5)


@pytest.mark.peers
def test_bfloat16_weights_stay_close(saved):
  _, _, folder = saved
  config = base.get_config().text
  config.update(encoder="umt5", pretrained=folder, max_length=16)
  full = build_text_encoder(config)
  config.update(dtype="bfloat16")
  half = build_text_encoder(config)
  variables = half.load_pretrained()
  assert variables["params"]["layer_0"]["wo"]["kernel"].value.dtype == jnp.bfloat16
  a = np.asarray(full.encode(full.load_pretrained(), PROMPTS)[0])
  b = np.asarray(half.encode(variables, PROMPTS)[0])
  assert np.abs(a - b).max() < 0.1 * np.abs(a).max()  # bf16 keeps ~3 significant digits per op


def test_missing_folder_or_tokenizer_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="--config.text.pretrained"):
    umt5.model_dirs("")
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    umt5.model_dirs(str(tmp_path))
  os.makedirs(tmp_path / "text_encoder")
  with pytest.raises(FileNotFoundError, match="text_encoder/config.json"):
    umt5.model_dirs(str(tmp_path))


def test_without_a_folder_the_encoder_has_umt5_xxl_shapes_and_says_what_to_set():
  config = base.get_config().text
  config.update(encoder="umt5", max_length=512)
  encoder = build_text_encoder(config)  # no files read
  assert encoder.output_dim == 4096 and encoder.max_length == 512 and encoder.module.depth == 24
  with pytest.raises(ValueError, match="--config.text.pretrained"):
    encoder.tokenize(["a cat"])
  with pytest.raises(ValueError, match="--config.text.pretrained"):
    encoder.load_pretrained()
