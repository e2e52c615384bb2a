"""The latent cache: ArrayRecord round trip, reuse when unchanged, rebuild when the request changes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sora_jax.data import latent_cache
from sora_jax.models.text import build_text_encoder


def _source(n, frames=5, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return [
    {
      "video": rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
      "caption": f"a red circle moving left {i}",
      "color": "red",
    }
    for i in range(n)
  ]


def _encode(video):
  """A stand-in VAE: 2x2 spatial mean-pool as the mean, a constant log-variance."""
  b, t, h, w, c = video.shape
  mean = video.reshape(b, t, h // 2, 2, w // 2, 2, c).mean(axis=(3, 5))
  return mean, jnp.full(mean.shape, -2.0)


@pytest.fixture
def small_encoder():
  cfg = base.get_config().text
  cfg.update(dict(encoder="small", max_length=32, width=32, depth=1, num_heads=2))
  return build_text_encoder(cfg)


def test_round_trip_and_reuse(tmp_path, small_encoder):
  source = _source(5)
  encode_fn = jax.jit(_encode)
  meta = {"vae_step": 3, "data": {"num_frames": 5}}
  counts = latent_cache.build_latent_cache(
    cache_dir=str(tmp_path),
    splits={"train": source},
    encode_fn=encode_fn,
    text_encoder=small_encoder,
    text_params=None,
    meta=meta,
    batch_size=2,
  )
  assert counts == {"train": 5}
  cache = latent_cache.LatentCacheSource(str(tmp_path), "train")
  assert len(cache) == 5
  for i in (0, 4):  # the last record comes from a padded batch: padding must not leak in
    record = cache[i]
    video = source[i]["video"].astype(np.float32)[None] / 127.5 - 1.0
    expected_mean, _ = _encode(jnp.asarray(video))
    np.testing.assert_allclose(record["latent_mean"], np.asarray(expected_mean[0]), atol=2e-3)  # float16 storage
    assert record["latent_mean"].dtype == np.float32 and record["latent_mean"].shape == (5, 4, 4, 3)
    np.testing.assert_allclose(record["latent_logvar"], -2.0)
    ids, mask = small_encoder.tokenize([source[i]["caption"]])
    np.testing.assert_array_equal(record["text_ids"], ids[0])
    np.testing.assert_array_equal(record["text_mask"], mask[0])
    assert record["caption"] == source[i]["caption"] and record["color"] == "red"

  path = latent_cache.cache_path(str(tmp_path), "train")
  before = os.path.getmtime(path)
  latent_cache.build_latent_cache(
    cache_dir=str(tmp_path),
    splits={"train": source},
    encode_fn=encode_fn,
    text_encoder=small_encoder,
    text_params=None,
    meta=meta,
  )
  assert os.path.getmtime(path) == before, "an unchanged request must reuse the cache"
  latent_cache.build_latent_cache(
    cache_dir=str(tmp_path),
    splits={"train": source[:3]},
    encode_fn=encode_fn,
    text_encoder=small_encoder,
    text_params=None,
    meta=dict(meta, vae_step=4),
  )
  assert len(latent_cache.LatentCacheSource(str(tmp_path), "train")) == 3, "a new VAE step must rebuild"


def test_missing_cache_error_says_how_to_build(tmp_path):
  with pytest.raises(FileNotFoundError, match="train_dit.py"):
    latent_cache.LatentCacheSource(str(tmp_path), "train")
