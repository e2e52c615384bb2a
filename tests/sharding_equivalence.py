"""Helpers: train a few steps on several meshes and compare with one device; golden partition specs.

    losses, split = assert_equivalent(init_fn, train_step, batches, rules)

runs `train_step` (jitted with the same in/out shardings and donation as the training
loop) for len(batches) steps on every mesh of EQUIVALENCE_MESHES and checks that the
losses and updated params match the 1-device run to float32 tolerance, and that the
params are really laid out (and split) as the logical rules say.

`param_specs_table(init_fn, mesh_sizes, rules)` gives {param path: [mesh axes per dim]}
for any virtual mesh size (an AbstractMesh: no devices needed), for golden files.
"""

import math

import jax
import numpy as np
from jax.sharding import AbstractMesh, PartitionSpec

from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import partitioning

EQUIVALENCE_MESHES = ((8, 1, 1, 1), (1, 8, 1, 1), (2, 2, 1, 2), (1, 2, 4, 1), (2, 1, 2, 2))
# Test-only: faster XLA:CPU compiles (the same on every mesh, so comparisons stay fair).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def initial_state(init_fn, seed=0):
  """The unboxed initial state as numpy arrays (initialised once, then placed on each mesh)."""
  state = jax.jit(lambda rng: partitioning.unbox(init_fn(rng)), compiler_options=FAST_COMPILE)(jax.random.key(seed))
  return jax.device_get(state)


def run_on_mesh(boxed, train_step, batches, mesh_shape, rules, host_state, seed=0):
  """(losses [steps], params as numpy, final state) after one step per batch on `mesh_shape`.

  `host_state` (from `initial_state`) is placed with the shardings the rules derive from
  `boxed` = jax.eval_shape(init_fn, key), exactly as `init_sharded_state` lays it out.
  """
  devices = jax.devices()[: math.prod(mesh_shape)]
  mesh = mesh_lib.make_mesh(mesh_shape, devices=devices)
  shardings = partitioning.state_shardings(boxed, mesh, rules)
  state = jax.device_put(host_state, shardings)
  replicated = partitioning.replicated(mesh)
  losses = []
  with partitioning.use_mesh(mesh, rules):
    step = jax.jit(
      train_step,
      in_shardings=(shardings, partitioning.batch_sharding(mesh), replicated),
      out_shardings=(shardings, replicated),
      donate_argnums=0,
      compiler_options=FAST_COMPILE,
    )
    for i, batch in enumerate(batches):
      state, metrics = step(
        state, partitioning.shard_batch(batch, mesh), jax.random.fold_in(jax.random.key(seed + 1), i)
      )
      losses.append(float(metrics["loss"]))
  params = jax.tree.map(np.asarray, jax.device_get(state.params))
  return np.asarray(losses), params, state


def _num_split_params(boxed, state, rules) -> int:
  """Checks every param is laid out (and really split) as the rules say; returns how many are split."""
  mesh = jax.tree.leaves(state.params)[0].sharding.mesh
  expected = partitioning.partition_specs(boxed, mesh, rules).params
  flat_expected = jax.tree.leaves(expected, is_leaf=lambda x: isinstance(x, PartitionSpec))
  split = 0
  for spec, leaf in zip(flat_expected, jax.tree.leaves(state.params), strict=True):
    assert leaf.sharding.spec == spec, (leaf.shape, leaf.sharding.spec, spec)
    ways = math.prod(
      math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
      for axes in spec
      if axes is not None
    )
    assert leaf.addressable_shards[0].data.size * ways == leaf.size  # really split that many ways
    split += ways > 1
  return split


def assert_equivalent(init_fn, train_step, batches, rules, meshes=EQUIVALENCE_MESHES, rtol=2e-5, atol=1e-6):
  """Every mesh in `meshes` gives the 1-device losses and params (float32 tolerance).

  Use an optimizer whose update is well conditioned in the gradient (e.g. Adam with
  eps=1e-4, not 1e-8): some gradients are exactly zero in exact arithmetic (an attention
  key bias cancels in the softmax), so they are pure rounding noise that differs with
  the summation order, and Adam with a tiny eps would blow that noise up to +-lr.

  Returns:
    (1-device losses, {mesh shape: number of params split across devices}).
  """
  boxed = jax.eval_shape(init_fn, jax.random.key(0))
  host_state = initial_state(init_fn)
  ref_losses, ref_params, _ = run_on_mesh(boxed, train_step, batches, (1, 1, 1, 1), rules, host_state)
  assert np.all(np.isfinite(ref_losses))
  split = {}
  for shape in meshes:
    losses, params, state = run_on_mesh(boxed, train_step, batches, shape, rules, host_state)
    np.testing.assert_allclose(losses, ref_losses, rtol=rtol, atol=atol, err_msg=f"losses on mesh {shape}")
    for (path, ref), value in zip(jax.tree_util.tree_leaves_with_path(ref_params), jax.tree.leaves(params)):
      np.testing.assert_allclose(
        value, ref, rtol=rtol, atol=atol, err_msg=f"param {jax.tree_util.keystr(path)} on mesh {shape}"
      )
    split[shape] = _num_split_params(boxed, state, rules)
  return ref_losses, split


def param_specs_table(init_params_fn, mesh_sizes, rules):
  """{'/'-joined param path: [mesh axes or None per dim]} on a virtual mesh of `mesh_sizes`."""
  mesh = AbstractMesh(tuple(mesh_sizes), mesh_lib.MESH_AXES)
  boxed = jax.eval_shape(init_params_fn, jax.random.key(0))
  specs = partitioning.partition_specs(boxed, mesh, rules)
  table = {}
  for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    table[name] = [list(a) if isinstance(a, tuple) else a for a in spec]
  return table
