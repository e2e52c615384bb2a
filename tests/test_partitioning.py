"""Logical annotations -> shardings, sharded init, and batch placement on 8 CPU devices."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import base
from sora_jax import configuration
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning
from sora_jax.training import optimizer, train_state


class _Annotated(nn.Module):
  """Params: w [6, 16] (embed, mlp), b [16] (norm), odd [3, 5] (conv_in, conv_out), Dense kernel [16, 3]."""

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.normal(0.1)
    w = self.param("w", nn.with_logical_partitioning(init, ("embed", "mlp")), (x.shape[-1], 16))
    b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (16,))
    odd = self.param("odd", nn.with_logical_partitioning(init, ("conv_in", "conv_out")), (3, 5))
    h = nn.with_logical_constraint(x @ w + b, ("activation_batch", "activation_mlp"))
    out = nn.Dense(3, kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")))(h)
    return out + odd.sum()


def _rules():
  return partitioning.logical_rules(base.get_config())


def _init_fn(x_dim=6):
  model = _Annotated()
  tx = optimizer.make_optimizer(base.get_config().train)
  return lambda rng: train_state.create_train_state(model.init(rng, jnp.zeros((1, x_dim)))["params"], tx)


def test_logical_rules_survive_a_json_round_trip():
  config = base.get_config()
  restored = configuration.from_dict(json.loads(configuration.to_json(config)))
  assert partitioning.logical_rules(restored) == partitioning.logical_rules(config)
  assert dict(partitioning.logical_rules(config))["activation_batch"] == ("data", "fsdp")


def test_specs_follow_the_rules_and_drop_axes_that_do_not_divide():
  mesh = mesh_lib.make_mesh((2, 2, 1, 2))
  abstract = jax.eval_shape(_init_fn(), jax.random.key(0))
  specs = partitioning.partition_specs(abstract, mesh, _rules())
  assert specs.params["w"] == P("fsdp", "tensor")
  assert specs.params["b"] == P(None)
  assert specs.params["odd"] == P(None, None)  # 5 output channels do not divide fsdp=2
  assert specs.params["Dense_0"]["kernel"] == P("tensor", None)  # 3 does not divide fsdp=2
  assert specs.step == P()  # unannotated -> replicated
  # The optimizer state and EMA inherit the parameter annotations.
  adam_state = specs.opt_state[1][0]
  assert adam_state.mu["w"] == P("fsdp", "tensor") and adam_state.nu["w"] == P("fsdp", "tensor")
  assert specs.ema_params["w"] == P("fsdp", "tensor")


def test_multi_axis_rule_keeps_the_prefix_that_divides():
  mesh = mesh_lib.make_mesh((2, 4, 1, 1))
  rules = (("batchy", ("data", "fsdp")),)
  boxed = nn.LogicallyPartitioned(jax.ShapeDtypeStruct((6, 3), jnp.float32), ("batchy", None))
  assert partitioning.leaf_partition_spec(boxed, mesh, rules) == P("data", None)  # 6 % 8 != 0, 6 % 2 == 0
  boxed = nn.LogicallyPartitioned(jax.ShapeDtypeStruct((16, 3), jnp.float32), ("batchy", None))
  assert partitioning.leaf_partition_spec(boxed, mesh, rules) == P(("data", "fsdp"), None)


def test_unknown_logical_name_is_a_clear_error():
  mesh = mesh_lib.make_mesh((8, 1, 1, 1))
  boxed = nn.LogicallyPartitioned(jax.ShapeDtypeStruct((4,), jnp.float32), ("embd",))
  with pytest.raises(ValueError, match=r"\['embd'\].*no rule"):
    partitioning.leaf_partition_spec(boxed, mesh, _rules())


def test_init_sharded_state_is_born_sharded():
  mesh = mesh_lib.make_mesh((2, 2, 1, 2))
  state, shardings = partitioning.init_sharded_state(_init_fn(), mesh, _rules(), jax.random.key(0))
  w = state.params["w"]
  assert w.sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in w.addressable_shards} == {(3, 8)}  # [6, 16] over fsdp=2 x tensor=2
  assert shardings.params["w"] == w.sharding
  # Same values as an unsharded (eager) init, up to jit-vs-eager rounding.
  plain = partitioning.unbox(_init_fn()(jax.random.key(0)))
  np.testing.assert_allclose(np.asarray(w), np.asarray(plain.params["w"]), rtol=1e-6, atol=1e-7)
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, jax.Array) for x in leaves)  # boxes stripped


def test_abstract_state_allocates_nothing_and_carries_shardings():
  mesh = mesh_lib.make_mesh((1, 8, 1, 1))
  abstract, shardings = partitioning.abstract_state(_init_fn(16), mesh, _rules(), jax.random.key(0))
  w = abstract.params["w"]
  assert isinstance(w, jax.ShapeDtypeStruct) and w.shape == (16, 16)
  assert w.sharding.spec == P("fsdp", "tensor") and w.sharding == shardings.params["w"]


def test_shard_batch_splits_rows_over_data_and_fsdp_and_drops_strings():
  mesh = mesh_lib.make_mesh((2, 2, 1, 2))
  video = np.arange(8 * 3 * 2, dtype=np.float32).reshape(8, 3, 2)
  batch = partitioning.shard_batch({"video": video, "caption": np.array(["a"] * 8)}, mesh)
  assert set(batch) == {"video"}
  assert batch["video"].sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in batch["video"].addressable_shards} == {(2, 3, 2)}
  np.testing.assert_array_equal(np.asarray(batch["video"]), video)


def test_shard_batch_rejects_a_batch_that_does_not_divide():
  mesh = mesh_lib.make_mesh((2, 2, 1, 2))
  with pytest.raises(ValueError, match="data.batch_size"):
    partitioning.shard_batch({"video": np.zeros((6, 2), np.float32)}, mesh)


def test_activation_constraint_applies_under_use_mesh():
  mesh = mesh_lib.make_mesh((2, 2, 1, 2))
  rules = _rules()
  state, _ = partitioning.init_sharded_state(_init_fn(), mesh, rules, jax.random.key(0))
  model = _Annotated()
  x = partitioning.shard_batch({"x": np.ones((8, 6), np.float32)}, mesh)["x"]
  with partitioning.use_mesh(mesh, rules):
    out = jax.jit(lambda p, x: model.apply({"params": p}, x))(state.params, x)
    text = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(state.params, x).as_text()
  assert out.shape == (8, 3)
  # The hidden activation [8, 16] is constrained to batch over data*fsdp, mlp over tensor.
  assert re.search(r'sharding_constraint %\d+ <@mesh, \[\{"data", "fsdp"\}, \{"tensor"\}\]>', text)
