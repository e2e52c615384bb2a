"""From logical axis names to shardings: rules, state shardings, sharded init, batch placement.

Modules annotate parameters with logical names (`nn.with_logical_partitioning`, e.g.
("embed", "mlp")) and activations with `nn.with_logical_constraint`. The rules in
`config.mesh.logical_axis_rules` map those names to mesh axes. Here we turn that into
concrete `NamedSharding`s without allocating anything:

    jax.eval_shape(init_fn)  ->  LogicallyPartitioned boxes (shape + names)
                             ->  mesh PartitionSpec per array (mesh axes that do not
                                 divide a dimension are dropped for that array)
                             ->  NamedSharding per array

and then run `init_fn` under `jit(out_shardings=...)`, so every array is born on the
devices that own it (a model larger than one device's memory can be initialised).

Typical use (what `sora_jax.training.loop.train` does):

    rules = logical_rules(config)
    state, shardings = init_sharded_state(init_fn, mesh, rules, rng)
    with use_mesh(mesh, rules):
      step = jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh), replicated(mesh)),
                     out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
      state, metrics = step(state, shard_batch(numpy_batch, mesh), rng)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sora_jax.sharding.mesh import BATCH_AXES

Rules = tuple[tuple[str, Any], ...]


def logical_rules(config: Any) -> Rules:
  """`config.mesh.logical_axis_rules` as a tuple of (logical name, mesh axis | tuple | None).

  Accepts the rules straight from a config, or after a JSON round trip (lists).
  """
  raw = config.mesh.logical_axis_rules if hasattr(config, "mesh") else config
  rules = []
  for rule in raw:
    if len(rule) != 2:
      raise ValueError(
        f"logical axis rule {rule!r} must be a pair (logical_name, mesh_axes); "
        f"see LOGICAL_AXIS_RULES in configs/base.py."
      )
    name, axes = rule
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
    rules.append((str(name), axes))
  return tuple(rules)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Makes `mesh` and the logical rules current (for tracing jitted code that uses
  `nn.with_logical_constraint`). Replaces the deprecated `with mesh:`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.Partitioned)


def unbox(tree: Any) -> Any:
  """Strips the `nn.LogicallyPartitioned` boxes, leaving plain arrays (or ShapeDtypeStructs).

  No sharding constraint is applied (unlike `nn.meta.unbox` under a mesh): placement is
  the job of the shardings derived here.
  """
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if _is_box(x) else x, tree, is_leaf=_is_box)


def _fit_axes(axes: Any, dim: int, mesh: Mesh, used: set[str]) -> Any:
  """The longest prefix of `axes` whose product of sizes divides `dim` (None if empty)."""
  if axes is None:
    return None
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  kept, ways = [], 1
  for axis in axes:
    size = mesh.shape[axis]
    if axis in used or dim % (ways * size):
      break
    kept.append(axis)
    ways *= size
  used.update(kept)
  if not kept:
    return None
  return kept[0] if len(kept) == 1 else tuple(kept)


def _check_names(names: Sequence[Any], rules: Rules, shape: Sequence[int]) -> None:
  known = {name for name, _ in rules}
  unknown = [n for n in names if n is not None and n not in known]
  if unknown:
    raise ValueError(
      f"logical axis names {unknown} (array of shape {tuple(shape)}, names {tuple(names)}) "
      f"have no rule in config.mesh.logical_axis_rules; use one of {sorted(known)} "
      f"or add a rule in configs/base.py."
    )
  if len(names) != len(shape):
    raise ValueError(
      f"logical names {tuple(names)} do not match the array rank {len(shape)} "
      f"(shape {tuple(shape)}); give one name (or None) per dimension."
    )


def leaf_partition_spec(leaf: Any, mesh: Mesh, rules: Rules) -> PartitionSpec:
  """Mesh PartitionSpec of one state leaf (a box or a bare array; bare = replicated)."""
  if not _is_box(leaf):
    return PartitionSpec()
  shape = leaf.value.shape
  if isinstance(leaf, nn.LogicallyPartitioned):
    _check_names(leaf.names, rules, shape)
    rule_of = {}
    for name, axes in rules:  # the first rule for a name wins, as in flax
      rule_of.setdefault(name, axes)
    mesh_axes = tuple(rule_of.get(name) for name in leaf.names)
  else:  # nn.Partitioned carries mesh axis names directly
    mesh_axes = tuple(leaf.names)
  mesh_axes += (None,) * (len(shape) - len(mesh_axes))
  used: set[str] = set()  # each mesh axis shards at most one dimension (repeated names are fine)
  return PartitionSpec(*(_fit_axes(a, d, mesh, used) for a, d in zip(mesh_axes, shape)))


def partition_specs(abstract_state: Any, mesh: Mesh, rules: Rules) -> Any:
  """PartitionSpec tree (structure of `unbox(abstract_state)`) from logical annotations."""
  return jax.tree.map(lambda x: leaf_partition_spec(x, mesh, rules), abstract_state, is_leaf=_is_box)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedSharding tree for a (boxed) abstract state from `jax.eval_shape(init_fn, ...)`.

  A mesh axis that does not divide an array dimension is dropped for that array (a
  3-channel conv or an odd-sized bias stays replicated instead of failing to compile).
  Leaves without a logical annotation (step counters, ...) are replicated.
  """
  specs = partition_specs(abstract_state, mesh, rules)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def abstract_state(init_fn: Callable[..., Any], mesh: Mesh, rules: Rules, *args) -> tuple[Any, Any]:
  """(ShapeDtypeStruct tree with `.sharding` set, NamedSharding tree) of `init_fn(*args)`.

  Allocates nothing. The first is the restore target for `Checkpointer.restore` and the
  input of memory estimates; the second the in/out shardings of the train step.
  """
  boxed = jax.eval_shape(init_fn, *args)  # outside use_mesh: init needs no constraints (see init_sharded_state)
  shardings = state_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unbox(boxed), shardings)
  return abstract, shardings


def init_sharded_state(init_fn: Callable[..., Any], mesh: Mesh, rules: Rules, *args) -> tuple[Any, Any]:
  """Runs `init_fn(*args)` under jit with out_shardings: the state is born sharded.

  Args:
    init_fn: returns the training state (any pytree) whose parameters carry logical
      annotations (`nn.LogicallyPartitioned`), e.g. `create_train_state(model.init(...)["params"], tx)`.
    mesh, rules: from `make_mesh` and `logical_rules`.
    *args: passed to `init_fn` (typically a PRNG key).
  Returns:
    (state with plain jax.Arrays, NamedSharding tree of the same structure).
  """
  _, shardings = abstract_state(init_fn, mesh, rules, *args)
  # Run without a current mesh or rules: flax would otherwise constrain every param as it
  # is created, with its own (non-divisibility-aware) mapping. XLA propagates the
  # out_shardings back to where the arrays are computed, so nothing is materialised whole.
  state = jax.jit(lambda *a: unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return state, shardings


def jit_sharded_step(step_fn: Callable, state_shardings: Any, mesh: Mesh, frozen_shardings: Any = None) -> Callable:
  """`jax.jit` of a step `(state, batch, rng) -> (state, metrics)` with its shardings.

  The state keeps `state_shardings` and is donated (updated in place), the batch is split over
  ('data', 'fsdp'), the rng and the metrics are replicated. Trace (call or lower) it under
  `use_mesh(mesh, rules)` so the modules' logical constraints resolve. With `frozen_shardings`
  the step is `(state, batch, rng, frozen)`: frozen weights (a LoRA's base) that are read, not donated.
  """
  extra = () if frozen_shardings is None else (frozen_shardings,)
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh), *extra),
    out_shardings=(state_shardings, replicated(mesh)),
    donate_argnums=0,
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """A sharding that keeps a full copy on every device (metrics, rng keys)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ('data', 'fsdp'); other axes replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def _is_text(x: np.ndarray) -> bool:
  return x.dtype.kind in "USO"


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's numpy batch -> global jax.Arrays, batch axis over ('data', 'fsdp').

  Each process passes only its own rows (its share of the global batch: global batch
  / process count, as `sora_jax.data.pipeline` yields); the global batch is their
  concatenation in process order. String arrays (captions) are dropped: they cannot
  live on a device.
  """
  sharding = batch_sharding(mesh)
  ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if _is_text(value):
      continue
    if value.ndim == 0:
      raise ValueError(f"batch field {key!r} is a scalar; every batch field needs a leading batch axis.")
    global_rows = value.shape[0] * jax.process_count()
    if global_rows % ways:
      raise ValueError(
        f"batch field {key!r} has {global_rows} rows in all, not divisible by the mesh's "
        f"data x fsdp = {ways}; change data.batch_size to a multiple of {ways}."
      )
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out
