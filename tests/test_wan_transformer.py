"""Our WanTransformer == diffusers' WanTransformer3DModel with the same random weights, both ways.

diffusers writes a tiny random model with `save_pretrained` (one file, and sharded); we load it
from disk and compare outputs; we export ours and diffusers' `from_pretrained` loads it back
with identical outputs. Parameter counts of the published 1.3B / 14B configs are compared
with diffusers' model built on the meta device. Needs the [peers] extra.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import wan_peers

torch = pytest.importorskip("torch", reason=wan_peers.PEERS_REASON)
diffusers = pytest.importorskip("diffusers", reason=wan_peers.PEERS_REASON)

from sora_jax.models.wan import folder as wan_folder  # noqa: E402
from sora_jax.models.wan import transformer as wan_transformer  # noqa: E402

pytestmark = pytest.mark.peers


def _inputs(seed=0, batch=2, frames=3, height=4, width=6, text_length=7):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, frames, height, width, wan_peers.TRANSFORMER["in_channels"])).astype(np.float32)
  t = np.array([999, 37][:batch], np.int64)
  text = rng.standard_normal((batch, text_length, wan_peers.TRANSFORMER["text_dim"])).astype(np.float32)
  return x, t, text


def _theirs(model, x, t, text):
  with torch.no_grad():
    out = model(wan_peers.to_torch(x), torch.from_numpy(t), torch.from_numpy(text), return_dict=False)[0]
  return wan_peers.from_torch(out)


def _ours(module, params, x, t, text):
  fn = jax.jit(lambda p, x, t, c: module.apply({"params": p}, x, t, c))
  return np.asarray(fn(params, jnp.asarray(x), jnp.asarray(t, jnp.float32), {"text": jnp.asarray(text)}))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(torch model, folder with its save_pretrained output)."""
  model = wan_peers.torch_transformer()
  folder = str(tmp_path_factory.mktemp("wan_transformer"))
  model.save_pretrained(folder)
  return model, folder


@pytest.mark.parametrize("scan_layers", [True, False])
def test_forward_matches_diffusers(saved, scan_layers):
  torch_model, folder = saved
  module, params = wan_folder.load_transformer(folder, scan_layers=scan_layers)
  assert module.depth == 2 and module.hidden_size == 32 and module.text_dim == 32
  x, t, text = _inputs()
  want = _theirs(torch_model, x, t, text)
  got = _ours(module, params, x, t, text)
  # float32 both sides; differences are summation order in matmuls, softmax and norms (~1e-6 of
  # outputs of size ~1). A wrong RoPE pair, norm axis or modulation order errs by > 1e-2.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
  assert np.abs(want).max() > 0.5


def test_other_grids_and_text_lengths_match(saved):
  """RoPE bands over a longer, non-square grid (4 frames, 8 x 4 patches) and a longer text."""
  torch_model, folder = saved
  module, params = wan_folder.load_transformer(folder)
  x, t, text = _inputs(seed=1, batch=1, frames=4, height=16, width=8, text_length=11)
  np.testing.assert_allclose(_ours(module, params, x, t, text), _theirs(torch_model, x, t, text), rtol=1e-4, atol=2e-5)


def test_sharded_save_pretrained_folder_loads(saved, tmp_path):
  torch_model, _ = saved
  torch_model.save_pretrained(str(tmp_path), max_shard_size="20KB")
  assert any(n.endswith(".index.json") for n in os.listdir(tmp_path))
  module, params = wan_folder.load_transformer(str(tmp_path))
  x, t, text = _inputs()
  np.testing.assert_allclose(_ours(module, params, x, t, text), _theirs(torch_model, x, t, text), rtol=1e-4, atol=2e-5)


def test_export_loads_in_diffusers_with_identical_outputs(saved, tmp_path):
  torch_model, folder = saved
  module, params = wan_folder.load_transformer(folder)
  params = jax.tree.map(lambda a: a * 1.01, params)  # "fine-tuned": not the weights diffusers started from
  out = str(tmp_path / "export")
  wan_folder.save_transformer(out, module, params, max_shard_bytes=30_000)
  reloaded = diffusers.WanTransformer3DModel.from_pretrained(out).eval()
  x, t, text = _inputs(seed=2)
  want = _ours(module, params, x, t, text)
  np.testing.assert_allclose(_theirs(reloaded, x, t, text), want, rtol=1e-4, atol=2e-5)
  assert np.abs(want - _theirs(torch_model, x, t, text)).max() > 1e-3  # the export carries the new weights
  exported = dict(reloaded.config)
  for key in ("num_layers", "ffn_dim", "text_dim", "patch_size", "num_attention_heads", "attention_head_dim"):
    assert tuple(np.ravel(exported[key])) == tuple(np.ravel(torch_model.config[key])), key


PUBLISHED = {  # Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers transformer/config.json
  "1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
  "14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
}


@pytest.mark.parametrize("size", ["1.3b", "14b"])
def test_published_sizes_have_diffusers_parameter_counts(size):
  config = dict(
    patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, eps=1e-6, **PUBLISHED[size]
  )
  with torch.device("meta"):
    theirs = sum(p.numel() for p in diffusers.WanTransformer3DModel(**config).parameters())
  ours = wan_transformer.num_params(wan_transformer.WanTransformer.from_diffusers_config(config))
  assert ours == theirs
  assert ours == {"1.3b": 1_418_996_800, "14b": 14_288_491_584}[size]


def test_image_conditioned_configs_are_refused():
  with pytest.raises(ValueError, match="image conditioning"):
    wan_transformer.WanTransformer.from_diffusers_config(dict(wan_peers.TRANSFORMER, image_dim=1280))


def test_export_pipeline_folder_loads_in_wan_pipeline(tmp_path):
  source = str(tmp_path / "source")
  wan_peers.save_wan_folder(source)
  module, params = wan_folder.load_transformer(source)
  params = jax.tree.map(lambda a: a + 0.01, params)
  out = str(tmp_path / "export")
  wan_folder.export_pipeline(out, module, params, base_folder=source)
  pipe = diffusers.WanPipeline.from_pretrained(out)
  x, t, text = _inputs(seed=3)
  np.testing.assert_allclose(
    _theirs(pipe.transformer, x, t, text), _ours(module, params, x, t, text), rtol=1e-4, atol=2e-5
  )
  assert pipe.scheduler.config.flow_shift == 3.0 and pipe.vae.config.z_dim == wan_peers.VAE["z_dim"]
  with pytest.raises(FileExistsError, match="nothing is overwritten"):
    wan_folder.export_pipeline(out, module, params, base_folder=source)
