"""Checkpoints: bit-exact restore onto other meshes, data-iterator state, config, clear errors."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import base
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning
from sora_jax.training import checkpointing, optimizer, train_state


def _init_fn(ema=True):
  model = nn.Dense(16, kernel_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed", "mlp")))
  tx = optimizer.make_optimizer(base.get_config().train)
  return lambda rng: train_state.create_train_state(model.init(rng, jnp.zeros((1, 8)))["params"], tx, ema=ema)


def _rules():
  return partitioning.logical_rules(base.get_config())


def _sharded_state(shape=(1, 2, 1, 4), ema=True):
  mesh = mesh_lib.make_mesh(shape)
  state, _ = partitioning.init_sharded_state(_init_fn(ema), mesh, _rules(), jax.random.key(0))
  # Make the optimizer state non-trivial so the round trip checks real values.
  state = state.replace(step=state.step + 7, opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))
  return state


def _abstract(shape, ema=True):
  devices = jax.devices()[: int(np.prod(shape))]
  mesh = mesh_lib.make_mesh(shape, devices=devices)
  abstract, _ = partitioning.abstract_state(_init_fn(ema), mesh, _rules(), jax.random.key(0))
  return abstract


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A workdir with checkpoints at steps 5 (bytes data state + config) and 7 (dict data state)."""
  workdir = tmp_path_factory.mktemp("run")
  state = _sharded_state()
  with checkpointing.Checkpointer(workdir, keep=3) as ckpt:
    ckpt.save(5, state, data_state=b'{"last_seen_indices": {"0": 41}}', config=base.get_config())
    ckpt.save(7, state, data_state={"next_index": 12})
  return workdir, state


@pytest.mark.parametrize("shape", [(8, 1, 1, 1), (2, 2, 1, 2), (1, 1, 1, 1)])
def test_restore_onto_another_mesh_is_bit_exact(saved, shape):
  workdir, state = saved
  with checkpointing.Checkpointer(workdir) as ckpt:
    restored, data_state = ckpt.restore(_abstract(shape), step=5)
  _assert_same(restored, state)
  kernel = restored.params["kernel"]
  assert kernel.sharding.mesh.devices.shape == shape and kernel.sharding.spec == P("fsdp", "tensor")
  assert data_state == b'{"last_seen_indices": {"0": 41}}'


def test_latest_step_and_dict_data_state(saved):
  workdir, state = saved
  with checkpointing.Checkpointer(workdir) as ckpt:
    assert ckpt.all_steps() == [5, 7] and ckpt.latest_step() == 7
    restored, data_state = ckpt.restore(_abstract((8, 1, 1, 1)))
    _, no_data = ckpt.restore(_abstract((8, 1, 1, 1)), restore_data=False)
  assert data_state == {"next_index": 12} and no_data is None
  assert int(restored.step) == int(state.step)


def test_config_is_saved_in_the_workdir_and_the_checkpoint(saved):
  workdir, _ = saved
  config = checkpointing.load_config_from_workdir(workdir)
  assert config.train.steps == base.get_config().train.steps
  assert tuple(config.mesh.logical_axis_rules) == base.LOGICAL_AXIS_RULES
  assert json.loads((workdir / "config.json").read_text())["dit"]["patch_size"] == [1, 2, 2]
  with checkpointing.Checkpointer(workdir) as ckpt:
    assert ckpt.restore_config(step=5).data.num_frames == base.get_config().data.num_frames


def test_load_config_falls_back_to_the_checkpoint(tmp_path):
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    config = base.get_config()
    config.train.steps = 123
    ckpt.save(1, {"x": jnp.ones(2)}, config=config)
  (tmp_path / "config.json").unlink()
  assert checkpointing.load_config_from_workdir(tmp_path).train.steps == 123


def test_state_without_ema_round_trips(tmp_path):
  state = _sharded_state(ema=False)
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, state)
    ckpt.wait()
    restored, data_state = ckpt.restore(_abstract((8, 1, 1, 1), ema=False))
  assert restored.ema_params is None and data_state is None
  _assert_same(restored, state)


def test_keep_limits_the_number_of_checkpoints(tmp_path):
  with checkpointing.Checkpointer(tmp_path, keep=2) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, {"x": jnp.full(2, step)})
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    assert ckpt.all_steps() == [2, 3]


def test_missing_checkpoint_says_what_was_looked_for(tmp_path):
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpointing.CheckpointNotFoundError) as error:
      ckpt.restore({"x": jax.ShapeDtypeStruct((2,), jnp.float32)})
  assert str(tmp_path / "checkpoints") in str(error.value) and "train_dit.py" in str(error.value)
  with pytest.raises(checkpointing.CheckpointNotFoundError, match="config.json"):
    checkpointing.load_config_from_workdir(tmp_path / "nowhere")
  with checkpointing.Checkpointer(tmp_path / "typo") as ckpt:
    assert ckpt.latest_step() is None
  assert not (tmp_path / "typo").exists()  # reading never creates directories


def test_unknown_step_lists_the_available_ones(saved):
  workdir, _ = saved
  with checkpointing.Checkpointer(workdir) as ckpt:
    with pytest.raises(checkpointing.CheckpointNotFoundError, match=r"step 6 .*\[5, 7\]"):
      ckpt.restore(_abstract((8, 1, 1, 1)), step=6)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax cleanup noise
@pytest.mark.parametrize("damage", ["truncate_data", "garble_metadata"])
def test_corrupt_checkpoint_names_the_step_dir_and_the_way_out(tmp_path, damage):
  state = _sharded_state()
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(2, state)
    ckpt.save(4, state)
  step_dir = tmp_path / "checkpoints" / "4"
  if damage == "truncate_data":
    for path in (step_dir / "state").rglob("*"):
      if path.is_file() and path.parent.name == "d":
        path.write_bytes(path.read_bytes()[:10])
  else:
    (step_dir / "state" / "_METADATA").write_text("{not json")
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpointing.CorruptCheckpointError) as error:
      ckpt.restore(_abstract((8, 1, 1, 1)))
    message = str(error.value)
    assert str(step_dir) in message and "delete" in message and "[2]" in message
    restored, _ = ckpt.restore(_abstract((8, 1, 1, 1)), step=2)  # the earlier step still works
  _assert_same(restored, state)
