"""Pipeline.from_pretrained on a diffusers Wan 2.1 folder == diffusers' WanPipeline on the same folder.

A tiny random folder written by `WanPipeline.save_pretrained` (umT5, VAE, transformer, UniPC
scheduler with flow shift 3, a tokenizer.json); both pipelines start from the same initial
latents and sample with the folder's scheduler. Needs the [peers] extra.
"""

import os

import numpy as np
import pytest
import wan_peers

torch = pytest.importorskip("torch", reason=wan_peers.PEERS_REASON)
diffusers = pytest.importorskip("diffusers", reason=wan_peers.PEERS_REASON)
pytest.importorskip("transformers", reason=wan_peers.PEERS_REASON)

from sora_jax import Pipeline  # noqa: E402
from sora_jax.restore import wan_folder_config  # noqa: E402

pytestmark = [pytest.mark.peers, pytest.mark.slow]

PROMPTS = ["a red circle moving left", "the cat staying still"]
SIZE = dict(num_frames=5, height=32, width=32)  # latent [2, 4, 4, 4]: two latent frames, 2x2 tokens per frame


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("wan_t2v"))
  wan_peers.save_wan_folder(path, flow_shift=3.0)
  return path


@pytest.fixture(scope="module")
def theirs(folder):
  return diffusers.WanPipeline.from_pretrained(folder)


def _diffusers(pipe, latents, output_type, steps=4, guidance=5.0):
  with torch.no_grad():
    out = pipe(
      prompt=PROMPTS,
      negative_prompt="",
      num_inference_steps=steps,
      guidance_scale=guidance,
      latents=wan_peers.to_torch(latents),
      output_type=output_type,
      **SIZE,
    ).frames
  return wan_peers.from_torch(out) if output_type == "latent" else np.asarray(out)


def test_config_of_the_folder(folder):
  config = wan_folder_config(folder)
  assert config.dit.architecture == "wan2.1" and config.dit.depth == 2 and config.dit.hidden_size == 32
  assert config.sample.sampler == "unipc" and config.diffusion.shift == 3.0
  assert config.vae.latent_channels == 4 and config.text.encoder == "umt5" and config.text.pretrained == folder


def test_samples_match_wan_pipeline(folder, theirs):
  ours = Pipeline.from_pretrained(folder)
  latents = np.random.default_rng(0).standard_normal((2, 2, 4, 4, 4)).astype(np.float32)  # [B, T', H', W', C]
  want_latents = _diffusers(theirs, latents, "latent")
  got_latents = ours(PROMPTS, num_steps=4, guidance_scale=5.0, latents=latents, output_type="latent", **SIZE)
  # float32 both sides through umT5, 4 UniPC steps x 2 guided transformer calls: summation order only
  # (measured ~3e-6); a wrong timestep, shift, text padding or guidance form errs by > 1e-2.
  np.testing.assert_allclose(got_latents, want_latents, atol=1e-4)
  assert np.abs(want_latents - latents).max() > 0.1  # the sampler moved them
  want_frames = _diffusers(theirs, latents, "np")
  got_frames = ours(PROMPTS, num_steps=4, guidance_scale=5.0, latents=latents, output_type="float", **SIZE)
  assert got_frames.shape == want_frames.shape == (2, 5, 32, 32, 3)
  np.testing.assert_allclose(got_frames, want_frames, atol=1e-3)  # as above, through the Wan VAE decode
  frames_u8 = ours(PROMPTS, num_steps=4, guidance_scale=5.0, latents=latents, **SIZE)
  assert frames_u8.dtype == np.uint8 and np.abs(frames_u8 / 255.0 - want_frames).max() <= 1 / 255 + 1e-3


def test_latents_argument_is_checked(folder):
  ours = Pipeline.from_pretrained(folder)
  with pytest.raises(ValueError, match=r"latents must be the initial noise \[B=2, T', H', W', C\]"):
    ours(PROMPTS, num_steps=2, latents=np.zeros((2, 2, 4, 4, 3)), **SIZE)
  with pytest.raises(ValueError, match="output_type='png' is not one of"):
    ours(PROMPTS, num_steps=2, output_type="png", **SIZE)


def test_incomplete_folders_name_what_is_missing(folder, tmp_path):
  import shutil

  broken = str(tmp_path / "broken")
  shutil.copytree(folder, broken)
  shutil.rmtree(f"{broken}/text_encoder")
  with pytest.raises(ValueError, match=r"lacks the component folder\(s\) \['text_encoder'\]"):
    Pipeline.from_pretrained(broken)
  shutil.copytree(f"{folder}/text_encoder", f"{broken}/text_encoder")
  weights = f"{broken}/transformer/diffusion_pytorch_model.safetensors"
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) - 100)  # an interrupted copy
  with pytest.raises(ValueError, match=f"{weights} is truncated"):
    Pipeline.from_pretrained(broken)
