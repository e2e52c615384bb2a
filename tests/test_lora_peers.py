"""LoRA files in the PEFT/diffusers format against the peers, both ways (needs the [peers] extra, peft included).

A LoRA made by peft on a tiny random diffusers WanTransformer3DModel (tests/wan_peers.py), saved by
`WanPipeline.save_lora_weights`, gives the same outputs in diffusers and in ours; a LoRA saved by us
loads into diffusers with `WanPipeline.load_lora_weights` and gives our outputs there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import wan_peers

torch = pytest.importorskip("torch", reason=wan_peers.PEERS_REASON)
diffusers = pytest.importorskip("diffusers", reason=wan_peers.PEERS_REASON)
peft = pytest.importorskip("peft", reason=wan_peers.PEERS_REASON + " peft")

from sora_jax.models import lora, lora_format  # noqa: E402
from sora_jax.models.wan import folder as wan_folder  # noqa: E402

pytestmark = pytest.mark.peers

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
# float32 on both sides; the LoRA path adds two small matmuls in another summation order (~1e-6 of
# outputs of size ~1). A transposed lora_A/B, a wrong alpha/rank scale or a missing module errs by > 1e-2.
RTOL, ATOL = 1e-4, 3e-5


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 3, 4, 6, wan_peers.TRANSFORMER["in_channels"])).astype(np.float32)
  t = np.array([999, 37], np.int64)
  text = rng.standard_normal((2, 7, wan_peers.TRANSFORMER["text_dim"])).astype(np.float32)
  return x, t, text


def _theirs(model, x, t, text):
  with torch.no_grad():
    out = model(wan_peers.to_torch(x), torch.from_numpy(t), torch.from_numpy(text), return_dict=False)[0]
  return wan_peers.from_torch(out)


def _ours(model, params, x, t, text):
  fn = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c))
  return np.asarray(fn(params, jnp.asarray(x), jnp.asarray(t, jnp.float32), {"text": jnp.asarray(text)}))


def _pipeline(transformer):
  return diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=None)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """(torch model without adapters, our module, our params) of the same random weights."""
  folder = str(tmp_path_factory.mktemp("wan_base"))
  wan_peers.torch_transformer().save_pretrained(folder)
  module, params = wan_folder.load_transformer(folder, scan_layers=True)
  return folder, module, params


def test_peft_lora_gives_diffusers_outputs_in_ours(base, tmp_path):
  folder, module, params = base
  torch_model = diffusers.WanTransformer3DModel.from_pretrained(folder).eval()
  torch.manual_seed(3)
  config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)  # random B != 0
  torch_model.add_adapter(config)
  diffusers.WanPipeline.save_lora_weights(
    str(tmp_path),
    transformer_lora_layers=peft.get_peft_model_state_dict(torch_model),
    transformer_lora_adapter_metadata=config.to_dict(),
  )
  x, t, text = _inputs()
  want = _theirs(torch_model, x, t, text)
  adapters, info = lora_format.load_lora(str(tmp_path), params)
  assert info["rank"] == 4 and info["alpha"] == 8.0 and len(info["modules"]) == 10  # attn1 + attn2 x 4, ffn x 2
  model = lora.LoraModel(module, lora.LoraSpec(rank=4, alpha=8), scale=1.0)  # alpha / rank folded in lora_B
  got = _ours(model, lora.merge_trees(params, adapters), x, t, text)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  assert np.abs(got - _ours(module, params, x, t, text)).max() > 1e-2  # the LoRA changes the output


def test_our_lora_loads_into_diffusers(base, tmp_path):
  folder, module, params = base
  spec = lora.LoraSpec(rank=3, alpha=6.0, targets="attention,mlp")
  model = lora.LoraModel(module, spec)
  x, t, text = _inputs(seed=1)
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x), jnp.asarray(t, jnp.float32), {"text": text})
  _, abstract = lora.split_adapters(boxed["params"])
  rng = np.random.default_rng(5)
  adapters = jax.tree.map(
    lambda a: np.asarray(0.1 * rng.standard_normal(a.value.shape), np.float32),
    abstract,
    is_leaf=lambda a: hasattr(a, "value"),
  )
  path = lora_format.save_lora(str(tmp_path), adapters, rank=spec.rank, alpha=spec.alpha)
  got = _ours(model, lora.merge_trees(params, adapters), x, t, text)

  pipe = _pipeline(diffusers.WanTransformer3DModel.from_pretrained(folder).eval())
  pipe.load_lora_weights(path, adapter_name="ours")
  np.testing.assert_allclose(_theirs(pipe.transformer, x, t, text), got, rtol=RTOL, atol=ATOL)
  # and back: the same file read by us gives the same outputs (alpha / rank from the metadata)
  loaded, info = lora_format.load_lora(path, params)
  assert info["alpha"] == 6.0 and info["rank"] == 3
  again = _ours(lora.LoraModel(module, spec, scale=1.0), lora.merge_trees(params, loaded), x, t, text)
  np.testing.assert_allclose(again, got, rtol=RTOL, atol=ATOL)
