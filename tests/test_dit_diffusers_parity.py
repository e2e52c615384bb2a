"""Our class-conditional image DiT == diffusers' DiTTransformer2DModel with the same random weights.

Needs the [peers] extra (torch + diffusers); skipped with the reason otherwise.
"""

import numpy as np
import pytest

torch = pytest.importorskip(
  "torch", reason="parity with diffusers needs the [peers] extra: pip install torch==2.13.0 diffusers"
)
diffusers = pytest.importorskip(
  "diffusers", reason="parity with diffusers needs the [peers] extra: pip install torch==2.13.0 diffusers"
)

import jax.numpy as jnp  # noqa: E402

from sora_jax.models import convert_diffusers  # noqa: E402

pytestmark = pytest.mark.peers

NUM_LAYERS = 2


def _torch_dit(seed=0):
  torch.manual_seed(seed)
  model = diffusers.DiTTransformer2DModel(
    num_attention_heads=2,
    attention_head_dim=32,
    in_channels=4,
    out_channels=8,
    num_layers=NUM_LAYERS,
    sample_size=16,
    patch_size=2,
    num_embeds_ada_norm=10,
    norm_eps=1e-6,
  )
  with torch.no_grad():
    for p in model.parameters():  # diffusers zero-inits nothing here, but make every weight clearly non-trivial
      p.add_(0.02 * torch.randn_like(p))
    # The paper's network has one timestep/class embedder; diffusers keeps a copy per block.
    shared = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
      block.norm1.emb.load_state_dict(shared)
  return model.eval()


def _inputs(seed=1):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((3, 4, 16, 16)).astype(np.float32)  # [B, C, H, W]
  t = np.array([0, 321, 999], np.int64)
  labels = np.array([0, 7, 10], np.int64)  # 10 = the null class
  return x, t, labels


@pytest.mark.parametrize("scan_layers", [True, False])
def test_matches_diffusers(scan_layers):
  torch_model = _torch_dit()
  x, t, labels = _inputs()
  with torch.no_grad():
    expected = torch_model(
      torch.from_numpy(x), timestep=torch.from_numpy(t), class_labels=torch.from_numpy(labels)
    ).sample.numpy()  # [B, 2C, H, W]

  model = convert_diffusers.dit_from_diffusers_config(torch_model.config, scan_layers=scan_layers)
  params = convert_diffusers.params_from_diffusers_state_dict(torch_model.state_dict(), model)
  ours = model.apply(
    {"params": params},
    jnp.asarray(x.transpose(0, 2, 3, 1)[:, None]),
    jnp.asarray(t, jnp.float32),
    {"label": jnp.asarray(labels, jnp.int32)},
  )
  ours = np.asarray(ours)[:, 0].transpose(0, 3, 1, 2)

  assert ours.shape == expected.shape == (3, 8, 16, 16)
  assert np.abs(expected).max() > 0.1, "reference output is trivially small; the test would prove nothing"
  rel = np.abs(ours - expected).max() / np.abs(expected).max()
  assert rel < 1e-4, f"max relative difference {rel:.2e}"


def test_unshared_block_embedders_are_rejected():
  torch_model = _torch_dit()
  with torch.no_grad():
    torch_model.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
  model = convert_diffusers.dit_from_diffusers_config(torch_model.config)
  with pytest.raises(ValueError, match="differs from block 0"):
    convert_diffusers.params_from_diffusers_state_dict(torch_model.state_dict(), model)
