"""Safetensors checkpoints and mapping tables: round trips, sharded placement, and the errors of bad folders.

No peers needed: a small random `WanTransformer` is written in the diffusers layout by our own
exporter, then read back. (Parity of that layout with diffusers is in test_wan_transformer.py.)
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from configs import base
from sora_jax.models import weight_mapping
from sora_jax.models.safetensors_io import SafetensorsCheckpoint, SafetensorsFile, write_checkpoint
from sora_jax.models.wan import folder as wan_folder
from sora_jax.models.wan import weights
from sora_jax.models.wan.transformer import WanTransformer
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning

RULES = partitioning.logical_rules(base.get_config())


def _model(**overrides):
  fields = dict(in_channels=4, text_dim=24, hidden_size=64, depth=2, num_heads=2, mlp_dim=128)
  fields.update(overrides)
  return WanTransformer(**fields)


def _random_params(model, seed=0):
  """Random numpy params of the model's init shapes (every leaf distinct, so a mix-up shows; nothing compiled)."""
  shapes = jax.eval_shape(lambda r: model.init(r, *wan_folder.transformer_example_inputs(model)), jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), partitioning.unbox(shapes["params"]))


@pytest.fixture(scope="module")
def small():
  """(model, params) of the small transformer most tests export and read back."""
  model = _model()
  return model, _random_params(model)


def _export(tmp_path, model, params, **kw):
  folder = str(tmp_path / "transformer")
  wan_folder.save_transformer(folder, model, params, **kw)
  return folder


def test_safetensors_reader_reads_bfloat16_and_float32_lazily(tmp_path):
  tensors = {
    "a": np.arange(12, dtype=np.float32).reshape(3, 4),
    "b": np.linspace(-2, 2, 6).astype(ml_dtypes.bfloat16),
    "c": np.arange(5, dtype=np.int64),
  }
  path = write_checkpoint(str(tmp_path), "model", tensors)[0]
  f = SafetensorsFile(path)
  assert sorted(f.keys()) == ["a", "b", "c"] and f.shape("a") == (3, 4) and f.dtype("b") == ml_dtypes.bfloat16
  for key, value in tensors.items():
    np.testing.assert_array_equal(f.read(key), value)


def test_sharded_checkpoint_round_trip_and_index(tmp_path, small):
  model, params = small
  folder = _export(tmp_path, model, params, max_shard_bytes=40_000)
  names = os.listdir(folder)
  shards = [n for n in names if n.endswith(".safetensors")]
  assert len(shards) > 2 and "diffusion_pytorch_model.safetensors.index.json" in names
  ckpt = SafetensorsCheckpoint(folder)
  assert len({ckpt.file_of(k) for k in ckpt.keys()}) == len(shards)
  loaded = wan_folder.load_transformer(folder, scan_layers=True)[1]
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  # Unstacked layers read the same keys.
  loaded = wan_folder.load_transformer(folder, scan_layers=False)[1]
  np.testing.assert_array_equal(loaded["blocks_1"]["mlp"]["fc2"]["kernel"], params["blocks"]["mlp"]["fc2"]["kernel"][1])


def test_cast_to_the_requested_dtype(tmp_path, small):
  model, params = small
  loaded = wan_folder.load_transformer(_export(tmp_path, model, params), dtype=jnp.bfloat16)[1]
  leaf = loaded["blocks"]["self_attention"]["query"]["kernel"]
  assert leaf.dtype == jnp.bfloat16
  np.testing.assert_array_equal(leaf, params["blocks"]["self_attention"]["query"]["kernel"].astype(jnp.bfloat16))


def test_loading_onto_eight_devices_never_puts_more_than_a_shard_on_a_device(tmp_path, monkeypatch):
  """fsdp over 8 devices: every transfer to a device is at most that device's shard of one parameter,
  and the bytes alive per device after each parameter stay at the sharded size (not the full model)."""
  model = _model(hidden_size=128, mlp_dim=256, depth=3)
  params = _random_params(model)
  folder = _export(tmp_path, model, params)
  mesh = mesh_lib.make_mesh((1, 8, 1, 1))
  full_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  largest_leaf = max(x.nbytes for x in jax.tree.leaves(params))

  puts = []
  real_put = jax.device_put

  def recording_put(x, device=None, *args, **kwargs):
    puts.append(np.asarray(x).nbytes if not isinstance(x, jax.Array) else x.nbytes)
    return real_put(x, device, *args, **kwargs)

  monkeypatch.setattr(jax, "device_put", recording_put)
  before = {id(a) for a in jax.live_arrays()}
  peak = [0]

  def per_device_bytes(path, array):
    buffers = {}  # a global array and the per-device arrays it was built from share buffers: count each once
    for a in jax.live_arrays():
      if id(a) not in before:
        for shard in a.addressable_shards:
          buffers[(shard.device, shard.data.unsafe_buffer_pointer())] = shard.data.nbytes
    totals = {}
    for (device, _), nbytes in buffers.items():
      totals[device] = totals.get(device, 0) + nbytes
    peak[0] = max(peak[0], max(totals.values()))

  _, loaded = wan_folder.load_transformer(folder, mesh=mesh, rules=RULES, on_leaf=per_device_bytes)
  sharded_bytes = sum(max(s.data.nbytes for s in x.addressable_shards) for x in jax.tree.leaves(loaded))
  # The big matrices split 8 ways; only small biases / norms / tables stay whole.
  assert sharded_bytes < full_bytes / 4, (sharded_bytes, full_bytes)
  assert peak[0] <= sharded_bytes, (peak[0], sharded_bytes)
  assert max(puts) <= largest_leaf / 8, (max(puts), largest_leaf)
  kernel = loaded["blocks"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec[1] == "fsdp"  # [layers, embed, mlp]: embed on fsdp
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_missing_shard_is_an_error_naming_the_shard(tmp_path, small):
  model, params = small
  folder = _export(tmp_path, model, params, max_shard_bytes=40_000)
  victim = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))[1]
  os.remove(os.path.join(folder, victim))
  with pytest.raises(FileNotFoundError, match=victim):
    wan_folder.load_transformer(folder)


def test_truncated_file_is_an_error_naming_file_and_key(tmp_path, small):
  model, params = small
  folder = _export(tmp_path, model, params)
  path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)
  with pytest.raises(ValueError, match="truncated: tensor '.*'"):
    wan_folder.load_transformer(folder)


def _rewrite(folder, edit):
  path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
  ckpt = SafetensorsFile(path)
  tensors = {k: np.array(ckpt.read(k)) for k in ckpt.keys()}
  del ckpt
  edit(tensors)
  write_checkpoint(folder, "diffusion_pytorch_model", tensors)
  return path


def test_wrong_and_missing_keys_are_listed(tmp_path, small):
  model, params = small
  folder = _export(tmp_path, model, params)

  def rename(tensors):
    tensors["blocks.1.attn1.to_q.weight_renamed"] = tensors.pop("blocks.1.attn1.to_q.weight")
    tensors["extra.weight"] = np.zeros(3, np.float32)

  path = _rewrite(folder, rename)
  with pytest.raises(ValueError) as err:
    wan_folder.load_transformer(folder)
  message = str(err.value)
  assert "1 missing keys: blocks.1.attn1.to_q.weight" in message
  assert "2 unexpected keys" in message and "blocks.1.attn1.to_q.weight_renamed" in message
  assert "extra.weight" in message and path in message


def test_wrong_shape_is_an_error_naming_file_and_key(tmp_path, small):
  model, params = small
  folder = _export(tmp_path, model, params)

  def shrink(tensors):
    tensors["blocks.0.ffn.net.2.weight"] = tensors["blocks.0.ffn.net.2.weight"][:, :100]

  path = _rewrite(folder, shrink)
  with pytest.raises(ValueError, match=rf"{path}: tensor 'blocks.0.ffn.net.2.weight' has shape \(64, 100\)"):
    wan_folder.load_transformer(folder)


def test_config_and_weights_that_disagree_name_the_problem(tmp_path, small):
  model, params = small
  folder = _export(tmp_path, model, params)
  config_path = os.path.join(folder, "config.json")
  with open(config_path) as f:
    config = json.load(f)
  config["num_layers"] = 3
  with open(config_path, "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="missing keys: blocks.2.attn1.norm_k.weight"):
    wan_folder.load_transformer(folder)


def test_no_weights_and_pickles_are_refused(tmp_path):
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="pickled .bin/.pt checkpoints are not read"):
    SafetensorsCheckpoint(str(tmp_path))


def test_table_covers_the_model_exactly():
  """Every parameter of the module has exactly one rule, with the module's own shapes."""
  for scan in (True, False):
    model = _model(scan_layers=scan)
    table = weights.transformer_table(model)
    shapes = jax.eval_shape(
      lambda r, model=model: model.init(r, *wan_folder.transformer_example_inputs(model)), jax.random.key(0)
    )
    flat = {
      tuple(p.key for p in path): leaf.shape
      for path, leaf in jax.tree_util.tree_flatten_with_path(partitioning.unbox(shapes["params"]))[0]
    }
    assert flat == {path: table.our_shape(rule, layers) for path, rule, layers in table.leaves()}
    assert len({rule.theirs for rule in table.rules}) == len(table.rules)
    weight_mapping.Rule(("x",), "x", "reshape", (2, 3), (3, 2))  # constructible; a size mismatch is not:
    with pytest.raises(ValueError, match="differ in size"):
      weight_mapping.Rule(("x",), "x", "reshape", (2, 3), (3, 3))
