"""LoRA adapters (models/lora.py): on our DiT and the Wan transformer, scanned or not; init == base,
fused == unfused, scale 0 == base, several LoRAs combined, sharding names, errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.models import dit, lora
from sora_jax.models.wan.transformer import WanTransformer

TINY = dict(in_channels=4, text_dim=8, hidden_size=32, depth=2, num_heads=2, mlp_dim=64)
MODELS = {
  "dit": lambda scan: dit.DiT(**TINY, scan_layers=scan),
  "wan": lambda scan: WanTransformer(**TINY, scan_layers=scan),
}
# float32 end to end; fused and unfused sum the same products in another order (kernel + A@B vs
# x@kernel + (x@A)@B): a few ulps of outputs of size ~1.
ATOL = 2e-5


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((2, 3, 4, 4, 4)), jnp.float32)
  t = jnp.asarray([10.0, 500.0], jnp.float32)
  mask = np.ones((2, 5), bool)
  mask[0, 3:] = False
  cond = dict(
    text=jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32),
    text_mask=jnp.asarray(mask),
    pooled=jnp.asarray(rng.standard_normal((2, 8)), jnp.float32),
  )
  return x, t, cond


def _noisy(tree, seed, scale):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: p + scale * jnp.asarray(rng.standard_normal(p.shape), p.dtype), tree)


_CACHE = {}


def _setup(name, scan, rank=3, alpha=6.0, targets="attention,mlp"):
  """(base module, LoraModel, boxed init params, base params perturbed, trained-like adapters)."""
  key = (name, scan, rank, alpha, targets)
  if key not in _CACHE:
    module = MODELS[name](scan)
    model = lora.LoraModel(module, lora.LoraSpec(rank=rank, alpha=alpha, targets=targets))
    boxed = jax.jit(model.init)(jax.random.key(0), *_inputs())["params"]
    base, adapters = lora.split_adapters(nn.unbox(boxed))
    # zero-initialised gates make a fresh DiT block the identity: move every base weight off its init
    base = _noisy(base, 1, 0.05)
    _CACHE[key] = (module, model, boxed, base, adapters)
  return _CACHE[key]


@pytest.mark.parametrize("name, scan", [("dit", True), ("wan", False)])  # both models, both layer layouts
def test_init_is_base_and_fused_equals_unfused(name, scan):
  module, model, _, base, adapters = _setup(name, scan)
  zero = lora.LoraModel(module, model.spec, scale=0.0)
  merged = lora.LoraModel(module, dataclasses.replace(model.spec, compute="merged"))
  trained = _noisy(adapters, 2, 0.1)

  @jax.jit
  def outputs(x, t, cond):
    fused = lora.fuse(lora.merge_trees(base, trained), model.scale)
    return dict(
      base=module.apply({"params": base}, x, t, cond),
      init=model.apply({"params": lora.merge_trees(base, adapters)}, x, t, cond),  # B = 0
      lora=model.apply({"params": lora.merge_trees(base, trained)}, x, t, cond),
      fused=module.apply({"params": fused}, x, t, cond),
      scale0=zero.apply({"params": lora.merge_trees(base, trained)}, x, t, cond),
      merged=merged.apply({"params": lora.merge_trees(base, trained)}, x, t, cond),
    )

  y = jax.device_get(outputs(*_inputs()))
  # B = 0 at init, exactly: the adapter adds an exact zero to every projection ...
  lora_b = [b for path, b in jax.tree_util.tree_leaves_with_path(adapters) if "lora_B" in str(path)]
  assert lora_b and not any(np.any(np.asarray(b)) for b in lora_b)
  # ... so init and scale 0 are the base model. They are other XLA programs, though: the zero term changes how XLA
  # fuses and emits the base matmuls, and their sums may be accumulated in another order (seen: 4 float32 ulps at
  # XLA:CPU optimisation level 1). 1e-6 absorbs that and still catches any live adapter (> 1e-2, next line).
  np.testing.assert_allclose(y["init"], y["base"], rtol=1e-6, atol=1e-6)
  assert np.abs(y["lora"] - y["base"]).max() > 1e-2  # the adapters do something
  np.testing.assert_allclose(y["fused"], y["lora"], atol=ATOL)
  np.testing.assert_allclose(y["scale0"], y["base"], rtol=1e-6, atol=1e-6)  # scale 0: the base model again
  np.testing.assert_allclose(y["merged"], y["lora"], atol=ATOL)  # lora.compute="merged": same function
  fused = lora.fuse(lora.merge_trees(base, trained), model.scale)
  assert jax.tree.structure(fused) == jax.tree.structure(base)


def test_adapters_shard_like_their_kernel():
  _, _, boxed, _, _ = _setup("dit", True)
  for parent, name in (("self_attention", "query"), ("cross_attention", "out"), ("mlp", "fc1"), ("mlp", "fc2")):
    module = boxed["blocks"][parent][name]
    kernel = module["kernel"].names
    n_in = len(module["lora_A"].names) - 1
    assert module["lora_A"].names[:-1] == kernel[:n_in] and module["lora_A"].names[-1] is None
    assert module["lora_B"].names == (kernel[0], None) + kernel[n_in:]  # ("layers", rank, *out)


def test_targets_select_projections():
  _, _, _, _, adapters = _setup("dit", True, targets="self_attention.query,value,fc2")
  paths = {"/".join(p) for p in lora.adapter_paths(adapters)}
  assert paths == {
    "blocks/self_attention/query",
    "blocks/self_attention/value",
    "blocks/cross_attention/value",
    "blocks/mlp/fc2",
  }
  a = adapters["blocks"]["self_attention"]["query"]
  assert a["lora_A"].shape == (2, 32, 3) and a["lora_B"].shape == (2, 3, 2, 16)
  assert not np.any(np.asarray(a["lora_B"]))  # B = 0
  assert np.any(np.asarray(a["lora_A"]))


def test_combine_is_the_sum_of_loras():
  module, model, _, base, adapters = _setup("dit", True)
  _, _, _, _, only_q = _setup("dit", True, rank=2, alpha=2.0, targets="query")
  x, t, cond = _inputs()
  first, second = _noisy(adapters, 3, 0.1), _noisy(only_q, 4, 0.1)
  combined = lora.combine([(first, 0.7 * model.scale), (second, -1.5)])
  fused = lora.fuse(lora.merge_trees(lora.fuse(lora.merge_trees(base, first), 0.7 * model.scale), second), -1.5)
  unit = lora.LoraModel(module, model.spec, scale=1.0)
  y, y_fused = jax.jit(
    lambda x, t, c: (
      unit.apply({"params": lora.merge_trees(base, combined)}, x, t, c),
      module.apply({"params": fused}, x, t, c),
    )
  )(x, t, cond)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_fused), atol=ATOL)
  q = combined["blocks"]["self_attention"]["query"]
  assert q["lora_A"].shape == (2, 32, 5) and q["lora_B"].shape == (2, 5, 2, 16)  # ranks 3 + 2
  assert combined["blocks"]["mlp"]["fc1"]["lora_A"].shape == (2, 32, 3)  # only the first adapts it


def test_errors():
  with pytest.raises(ValueError, match=r"unknown \['attn'\].*valid: attention"):
    lora.LoraSpec(rank=4, alpha=4, targets="attn,mlp")
  with pytest.raises(ValueError, match="rank=0 must be >= 1"):
    lora.LoraSpec(rank=0, alpha=1)
  module, model, _, base, adapters = _setup("dit", True)
  wrong = jax.tree.map(lambda a: a[..., :1] if a.ndim == 3 else a, adapters)  # lora_A rank 1, lora_B rank 3
  with pytest.raises(ValueError, match="do not fit"):
    jax.eval_shape(lambda p: model.apply({"params": p}, *_inputs()), lora.merge_trees(base, wrong))
  with pytest.raises(ValueError, match="has no module in the base params"):
    lora.merge_trees(base, {"blockz": adapters["blocks"]})


def test_lora_file_round_trip_and_errors(tmp_path):
  from safetensors.numpy import save_file

  from sora_jax.models import lora_format

  _, model, _, base, adapters = _setup("dit", True)
  trained = _noisy(adapters, 6, 0.1)
  written = lora_format.save_lora(str(tmp_path / "ours"), trained, rank=3, alpha=6.0)
  loaded, info = lora_format.load_lora(written, base)
  assert info["rank"] == 3 and info["alpha"] == 6.0
  want = jax.tree.map(np.asarray, trained)
  for p in lora.adapter_paths(want):
    got, ref = lora._get(loaded, p), lora._get(want, p)
    np.testing.assert_allclose(got["lora_A"], ref["lora_A"], rtol=1e-6)
    np.testing.assert_allclose(got["lora_B"], ref["lora_B"] * 2.0, rtol=1e-6)  # alpha / rank folded in
  tensors = lora_format.to_state_dict(trained)
  assert tensors["transformer.blocks.1.attn1.to_q.lora_A.weight"].shape == (3, 32)
  assert tensors["transformer.blocks.1.attn1.to_out.0.lora_A.weight"].shape == (3, 32)
  assert tensors["transformer.blocks.0.ffn.net.0.proj.lora_B.weight"].shape == (64, 3)

  bad = dict(tensors)
  bad["transformer.blocks.0.attn1.to_q.lora_A.weight"] = np.zeros((3, 31), np.float32)  # wrong in-features
  bad["transformer.blocks.0.attn1.to_k.lora_B.weight"] = np.zeros((32, 2), np.float32)  # wrong rank
  bad["transformer.blocks.5.attn1.to_q.lora_A.weight"] = np.zeros((3, 32), np.float32)  # no such layer
  bad["transformer.proj_out.lora_A.weight"] = np.zeros((3, 32), np.float32)  # not a block projection
  save_file(bad, str(tmp_path / "bad.safetensors"))
  with pytest.raises(ValueError) as err:
    lora_format.load_lora(str(tmp_path / "bad.safetensors"), base)
  message = str(err.value)
  for needle in ("proj_out.lora_A", "to_q.lora_A.weight (3, 31)", "to_k.lora_B.weight (32, 2)", "layer 5"):
    assert needle in message
  with pytest.raises(FileNotFoundError, match="does not exist"):
    lora_format.load_lora(str(tmp_path / "nothing.safetensors"), base)


def test_a_lora_step_trains_only_the_adapters():
  """make_lora_train_step: the adapters (and their optimizer state / EMA) change, the frozen base
  params are bit-identical, and the optimizer state holds nothing of the base."""
  from configs import base as base_config
  from sora_jax.diffusion import build_diffusion
  from sora_jax.models import factory
  from sora_jax.models.text import fields
  from sora_jax.sharding import partitioning
  from sora_jax.training import dit_step
  from sora_jax.training.optimizer import make_optimizer

  config = base_config.get_config()
  config.dit.update(dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64))
  config.text.update(dict(encoder="small", max_length=32, width=32, depth=1, num_heads=2))
  config.train.update(dict(learning_rate=1e-2, warmup_steps=0, lr_schedule="constant"))
  config.lora.update(dict(rank=2, alpha=4.0, dropout=0.1, targets="attention"))
  latent = (3, 4, 4, 4)
  denoiser = factory.build_denoiser(config, latent)
  frozen = _noisy(partitioning.unbox(denoiser.init(jax.random.key(1))), 7, 0.05)
  lora_denoiser = dataclasses.replace(
    denoiser, dit=lora.LoraModel(denoiser.dit, lora.LoraSpec.from_config(config.lora))
  )
  tx = make_optimizer(config.train)
  state = partitioning.unbox(dit_step.make_lora_init_fn(lora_denoiser, tx, ema=True)(jax.random.key(0)))
  assert set(state.params) == {"dit"} and not jax.tree.leaves(lora.split_adapters(state.params["dit"])[0])
  assert lora.count(state.params) == 2 * 2 * 4 * (32 * 2 + 2 * 32)  # layers x self/cross x q,k,v,out x (A + B)
  n_opt = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)
  assert n_opt == 2 * lora.count(state.params)  # Adam's two moments of the adapters, nothing of the base
  step = dit_step.make_lora_train_step(
    denoiser=lora_denoiser,
    diffusion=build_diffusion(config.diffusion),
    latent_stats={"mean": jnp.zeros(4), "std": jnp.ones(4)},
    null_fields=fields.null_text_fields(denoiser.text_encoder, None),
    cfg_dropout=0.1,
    tx=tx,
    ema_decay=0.9,
  )
  ids, mask = denoiser.text_encoder.tokenize(["an orange diamond moving left", "a red circle staying still"])
  rng = np.random.default_rng(0)
  batch = {
    "latent_mean": rng.normal(size=(2, *latent)).astype(np.float32),
    "latent_logvar": np.full((2, *latent), -8.0, np.float32),
    "text_ids": ids,
    "text_mask": mask,
  }
  before_base = jax.tree.map(np.array, frozen)
  before = jax.tree.map(np.array, state.params)
  step = jax.jit(step)
  new_state, metrics = step(state, batch, jax.random.key(3), frozen)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  # B = 0 at init, so the first step's gradient reaches lora_B only; the second moves lora_A too
  new_state, _ = step(new_state, batch, jax.random.key(4), frozen)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, frozen), before_base)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), new_state.params, before)
  assert all(jax.tree.leaves(changed))  # every lora_A and lora_B moved
