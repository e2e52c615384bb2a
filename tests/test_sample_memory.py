"""The memory estimate for sampling: sharded weights, the guided step's activations, text encoder and VAE."""

import pytest

from configs.dit import wan21
from sora_jax.models import counting
from sora_jax.models.wan.transformer import WanTransformer
from sora_jax.sampling import memory


def test_tiny_wan_on_eight_devices():
  config = wan21.get_config("tiny")
  config.dit.dtype = "bfloat16"
  one = memory.estimate_sample_memory(config, mesh_shape=(1, 1, 1, 1))
  assert one["vae_decode_temp_bytes"] > 0
  eight = memory.estimate_sample_memory(config, mesh_shape=(1, 8, 1, 1))
  total = counting.count_params(WanTransformer.from_config(config.dit, in_channels=16, text_dim=4096))["total"]
  assert one["dit_params_bytes"] == 2 * total  # bfloat16 weights, whole on one device
  # 8-way FSDP: the matrices split, small vectors (biases, norms, tables) stay whole
  assert 2 * total / 8 <= eight["dit_params_bytes"] < 2 * total / 2
  assert one["tokens"] == 2 * 2 * 2 and one["latent_shape"] == [2, 4, 4, 16]
  for r in (one, eight):
    assert r["step_temp_bytes"] > 0 and r["peak_bytes"] > r["dit_params_bytes"] + r["text_encoder_params_bytes"]
  # without a pretrained folder the text encoder is umT5-XXL (Wan 2.1's), float32 in this config
  assert one["text_encoder_params_bytes"] == 4 * UMT5_XXL_ENCODER_PARAMS
  assert any("peak" in line for line in memory.summary_lines(eight))


# transformers' UMT5EncoderModel(google/umt5-xxl config), counted on the meta device (test below)
UMT5_XXL_ENCODER_PARAMS = 5_680_910_336


@pytest.mark.peers
def test_umt5_xxl_count_matches_transformers():
  torch = pytest.importorskip("torch", reason="needs the [peers] extra")
  transformers = pytest.importorskip("transformers", reason="needs the [peers] extra")
  config = transformers.UMT5Config(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"
  )
  with torch.device("meta"):
    model = transformers.UMT5EncoderModel(config)
  assert sum(p.numel() for p in model.parameters()) == UMT5_XXL_ENCODER_PARAMS
