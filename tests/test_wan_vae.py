"""Our WanVAE == diffusers' AutoencoderKLWan with the same random weights; chunked == whole clip; tiling runs.

diffusers always encodes 1 + 4k frames chunk by chunk (1, 4, 4, ...) and decodes latent frame by
latent frame with its feature cache; our whole-clip computation reproduces that, and our own
streaming (`encode_video` / `decode_latents` with `chunk_frames`) reproduces the whole clip.
Needs the [peers] extra.
"""

import jax
import numpy as np
import pytest
import wan_peers

torch = pytest.importorskip("torch", reason=wan_peers.PEERS_REASON)
diffusers = pytest.importorskip("diffusers", reason=wan_peers.PEERS_REASON)

from sora_jax.models import vae as vae_lib  # noqa: E402
from sora_jax.models.wan import folder as wan_folder  # noqa: E402
from sora_jax.models.wan import vae as wan_vae  # noqa: E402

pytestmark = pytest.mark.peers

FRAMES, HEIGHT, WIDTH = 9, 32, 48  # latent 3 x 4 x 6: two time downsamplings and a time-only chunk boundary


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  """(torch VAE, our module, params, folder)."""
  model = wan_peers.torch_vae()
  folder = str(tmp_path_factory.mktemp("wan_vae"))
  model.save_pretrained(folder)
  module, params, config = wan_folder.load_vae(folder)
  return model, module, params, folder


def _video(seed=0):
  rng = np.random.default_rng(seed)
  return np.clip(0.5 * rng.standard_normal((1, FRAMES, HEIGHT, WIDTH, 3)), -1, 1).astype(np.float32)


@pytest.mark.slow
def test_encode_matches_diffusers_whole_and_chunked(loaded):
  torch_model, module, params, _ = loaded
  video = _video()
  with torch.no_grad():
    posterior = torch_model.encode(wan_peers.to_torch(video)).latent_dist
  want_mean, want_logvar = wan_peers.from_torch(posterior.mean), wan_peers.from_torch(posterior.logvar)
  mean, logvar = vae_lib.encode_video(module, params, video, chunk_frames=0)
  # float32 both sides (summation order only); latents are O(1), a wrong causal pad or time window errs by > 1e-2
  np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(logvar, want_logvar, rtol=1e-4, atol=2e-5)
  assert mean.shape == (1, 3, 4, 6, 4) and np.abs(want_mean).max() > 0.3
  # diffusers' own chunking (1 + 4 + 4 frames) through our caches: the same sums, fused differently by XLA
  chunked, _ = vae_lib.encode_video(module, params, video, chunk_frames=1)
  np.testing.assert_allclose(chunked, mean, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_decode_matches_diffusers_whole_and_chunked(loaded):
  torch_model, module, params, _ = loaded
  z = np.random.default_rng(1).standard_normal((1, 3, 4, 6, 4)).astype(np.float32)
  with torch.no_grad():
    want = wan_peers.from_torch(torch_model.decode(wan_peers.to_torch(z)).sample)
  video = np.asarray(vae_lib.decode_latents(module, params, z, chunk_frames=0))
  assert video.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
  np.testing.assert_allclose(video, want, rtol=1e-4, atol=2e-5)  # as above; frames in [-1, 1]
  assert 0.05 < np.abs(want).mean() and np.abs(video).max() <= 1.0
  for chunk in (1, 2):  # diffusers' frame-by-frame decode, and our 2-latent-frame chunks after the first
    chunked = np.asarray(vae_lib.decode_latents(module, params, z, chunk_frames=chunk))
    np.testing.assert_allclose(chunked, video, rtol=1e-5, atol=1e-5)  # float32 rounding of other fusions


@pytest.mark.slow
def test_tiled_encode_and_decode_run_and_stay_close(loaded):
  _, module, params, _ = loaded
  video = _video(2)
  mean, _ = vae_lib.encode_video(module, params, video, chunk_frames=0)
  tiled, _ = vae_lib.encode_video(module, params, video, chunk_frames=0, tile=32, tile_overlap=0.5)
  assert tiled.shape == mean.shape and not np.allclose(tiled, mean)  # tiles were really encoded apart
  # Random weights see across the whole 32x48 frame, so tiles differ from the whole frame near their
  # edges (trained weights are far more local); blended in the right places the results stay
  # correlated with the untiled ones (measured 0.97 encoding, 0.69 decoding); misplaced tiles give ~0.
  assert np.corrcoef(np.ravel(tiled), np.ravel(mean))[0, 1] > 0.9
  frames = vae_lib.decode_latents(module, params, mean, chunk_frames=0)
  tiled_frames = vae_lib.decode_latents(module, params, mean, chunk_frames=0, tile=32, tile_overlap=0.5)
  assert tiled_frames.shape == frames.shape and np.isfinite(np.asarray(tiled_frames)).all()
  assert np.corrcoef(np.ravel(tiled_frames), np.ravel(frames))[0, 1] > 0.5


def test_export_round_trip_through_diffusers(loaded, tmp_path):
  torch_model, module, params, _ = loaded
  params = jax.tree.map(lambda a: a * 0.99, params)
  wan_folder.save_vae(str(tmp_path), module, params)
  reloaded = diffusers.AutoencoderKLWan.from_pretrained(str(tmp_path)).eval()
  assert list(reloaded.config.latents_std) == pytest.approx(wan_peers.VAE["latents_std"])
  z = np.random.default_rng(3).standard_normal((1, 3, 4, 6, 4)).astype(np.float32)  # shapes compiled before
  with torch.no_grad():
    want = wan_peers.from_torch(reloaded.decode(wan_peers.to_torch(z)).sample)
  np.testing.assert_allclose(vae_lib.decode_latents(module, params, z), want, rtol=1e-4, atol=2e-5)


def test_config_round_trip_and_latent_statistics(loaded):
  torch_model, module, _, _ = loaded
  config = module.config
  assert (config.temporal_factor, config.spatial_factor, config.latent_channels) == (4, 8, 4)
  stats = wan_vae.latent_stats(config)
  np.testing.assert_allclose(stats["mean"], wan_peers.VAE["latents_mean"])
  exported = wan_vae.diffusers_vae_config(config)
  for key in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample"):
    assert exported[key] == torch_model.config[key], key
  with pytest.raises(ValueError, match="is_residual"):
    wan_vae.vae_config_from_diffusers({**dict(torch_model.config), "is_residual": True})
  released = wan_vae.vae_config()
  assert len(released.latents_mean) == len(released.latents_std) == 16
