"""Mapping tables between our parameter trees and PyTorch state dicts, and loading along them onto a mesh.

A `Table` lists one `Rule` per tensor: where it lives in our Flax params (`ours`, a path), its
key in the PyTorch checkpoint (`theirs`; "{i}" stands for a layer index), how the array is
laid out on each side (`kind`) and both shapes. Rules of repeated layers are written once and
apply to every layer; our side keeps those layers stacked on a leading axis (the `nn.scan`
layout, "blocks") or as `blocks_0, blocks_1, ...`.

    table = weights.transformer_table(model)
    params = load_onto_mesh(table, SafetensorsCheckpoint(folder), abstract_params, dtype=jnp.bfloat16)
    state_dict = to_state_dict(table, params)          # and back, for export

Loading checks everything before it reads a byte of weights: keys missing from the checkpoint
and keys no rule maps are one error listing them (with their files); a tensor of the wrong
shape is an error naming its file and key. Then every parameter is built directly in its
sharded form: the tensors it needs are read (memory-mapped), converted on the host, cut into
the pieces each addressable device owns under its `NamedSharding`, and only those pieces are
put on the devices (`jax.make_array_from_single_device_arrays`). No device ever holds more of
a parameter than its shard, so a model larger than one device loads onto a mesh. The host
holds at most one parameter's addressable part (plus one source tensor) at a time.

Layouts (`kind`):
  "linear"  torch Linear weight [out, in]  <->  our kernel [*in_dims, *out_dims]
  "conv"    torch Conv weight [O, I, *k]   <->  our kernel [*k, I, O] (or flattened to [prod(k) * I, O])
  "reshape" same values in the same order, another shape (biases, norms, tables)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models.safetensors_io import SafetensorsCheckpoint, describe_keys

KINDS = ("linear", "conv", "reshape")


@dataclasses.dataclass(frozen=True)
class Rule:
  """One tensor: our path (inside one layer for a layer rule), their key, the layout and both shapes."""

  ours: tuple[str, ...]
  theirs: str
  kind: str
  ours_shape: tuple[int, ...]
  theirs_shape: tuple[int, ...]
  aliases: tuple[str, ...] = ()  # other keys the same tensor may be saved under (tied weights)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"rule {self.theirs}: kind {self.kind!r} is not one of {KINDS}")
    if int(np.prod(self.ours_shape)) != int(np.prod(self.theirs_shape)):
      raise ValueError(f"rule {self.theirs}: shapes {self.ours_shape} and {self.theirs_shape} differ in size")

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.theirs

  def to_ours(self, a: np.ndarray) -> np.ndarray:
    if self.kind == "linear":
      return a.T.reshape(self.ours_shape)
    if self.kind == "conv":
      return a.transpose(tuple(range(2, a.ndim)) + (1, 0)).reshape(self.ours_shape)
    return a.reshape(self.ours_shape)

  def to_theirs(self, a: np.ndarray) -> np.ndarray:
    if self.kind == "linear":
      return a.reshape(self.theirs_shape[1], self.theirs_shape[0]).T
    if self.kind == "conv":
      out_ch, in_ch, *kernel = self.theirs_shape
      n = len(kernel)
      return a.reshape(*kernel, in_ch, out_ch).transpose((n + 1, n) + tuple(range(n)))
    return a.reshape(self.theirs_shape)


def linear_rules(ours: tuple[str, ...], theirs: str, in_shape, out_shape, bias: bool = True) -> list[Rule]:
  """kernel [*in, *out] (+ bias [*out]) <-> `theirs`.weight [out, in] (+ `theirs`.bias [out])."""
  in_shape, out_shape = tuple(in_shape), tuple(out_shape)
  n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
  rules = [Rule(ours + ("kernel",), f"{theirs}.weight", "linear", in_shape + out_shape, (n_out, n_in))]
  if bias:
    rules.append(Rule(ours + ("bias",), f"{theirs}.bias", "reshape", out_shape, (n_out,)))
  return rules


@dataclasses.dataclass(frozen=True)
class Table:
  """All rules of one module (e.g. the transformer of a diffusers folder).

  Attributes:
    name: what it maps, for messages ("transformer").
    rules: the rules; layer rules ("{i}" in `theirs`) apply to layers 0 .. num_layers - 1.
    num_layers: repeated layers.
    layer_prefix: our name of the layer stack: "blocks" holds them stacked (scan layout) when
      `stacked`, else "blocks_0", "blocks_1", ...
    stacked: our layers are stacked on a leading axis.
    ignored: their keys that may be present and carry nothing we use.
  """

  name: str
  rules: tuple[Rule, ...]
  num_layers: int = 0
  layer_prefix: str = "blocks"
  stacked: bool = True
  ignored: tuple[str, ...] = ()

  def their_keys(self, rule: Rule) -> list[str]:
    return [rule.theirs.format(i=i) for i in range(self.num_layers)] if rule.per_layer else [rule.theirs]

  def our_path(self, rule: Rule) -> tuple[str, ...]:
    """Path of the rule's leaf in our tree (stacked layout); per-layer paths come from `our_layer_path`."""
    return (self.layer_prefix,) + rule.ours if rule.per_layer else rule.ours

  def our_layer_path(self, rule: Rule, i: int) -> tuple[str, ...]:
    return (f"{self.layer_prefix}_{i}",) + rule.ours

  def leaves(self) -> list[tuple[tuple[str, ...], Rule, list[int] | None]]:
    """(our path, rule, layers) for every leaf of our tree: layers = the stacked layer indices, or None."""
    out = []
    for rule in self.rules:
      if not rule.per_layer:
        out.append((rule.ours, rule, None))
      elif self.stacked:
        out.append((self.our_path(rule), rule, list(range(self.num_layers))))
      else:
        out.extend((self.our_layer_path(rule, i), rule, [i]) for i in range(self.num_layers))
    return out

  def our_shape(self, rule: Rule, layers: list[int] | None) -> tuple[int, ...]:
    return (len(layers),) + rule.ours_shape if (layers is not None and self.stacked) else rule.ours_shape


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  if isinstance(tree, dict) or hasattr(tree, "items") and not hasattr(tree, "shape"):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
    return out
  return {prefix: tree}


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def _resolve_key(rule: Rule, key: str, available: set[str]) -> str | None:
  if key in available:
    return key
  for alias in rule.aliases:
    if alias in available:
      return alias
  return None


def check_checkpoint(table: Table, ckpt: SafetensorsCheckpoint) -> dict[str, str]:
  """Checks keys and shapes of `ckpt` against `table`; returns {rule key: key in the checkpoint}.

  Raises ValueError listing missing and unexpected keys (with their files), or naming the file
  and key of the first tensor whose shape is not the table's.
  """
  available = ckpt.keys()
  resolved, missing = {}, []
  for rule in table.rules:
    for key in table.their_keys(rule):
      found = _resolve_key(rule, key, available)
      if found is None:
        missing.append(key)
      else:
        resolved[key] = found
  used = set(resolved.values())
  aliases = {a for rule in table.rules for a in rule.aliases}
  unexpected = sorted(available - used - set(table.ignored) - aliases)
  if missing or unexpected:
    parts = [f"the {table.name} checkpoint in {ckpt.folder} does not match the model built from its config:"]
    if missing:
      parts.append(f"{len(missing)} missing keys: {describe_keys(missing)}")
    if unexpected:
      files = sorted({ckpt.file_of(k) for k in unexpected})
      parts.append(
        f"{len(unexpected)} unexpected keys (no rule maps them; in {', '.join(files)}): " + describe_keys(unexpected)
      )
    parts.append("is the config.json of the folder the one these weights were saved with?")
    raise ValueError("\n  ".join(parts))
  for rule in table.rules:
    for key in table.their_keys(rule):
      shape = ckpt.shape(resolved[key])
      if shape != rule.theirs_shape:
        raise ValueError(
          f"{ckpt.file_of(resolved[key])}: tensor {resolved[key]!r} has shape {shape}, but the {table.name} "
          f"built from the config expects {rule.theirs_shape}; the file and its config.json disagree"
        )
  return resolved


def _slices(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
  return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def _cast(a: np.ndarray, dtype: Any) -> np.ndarray:
  """a as `dtype` if both are floating point (bfloat16 included); other arrays unchanged."""
  a = np.asarray(a)
  if dtype is None or not (jnp.issubdtype(a.dtype, jnp.floating) and jnp.issubdtype(dtype, jnp.floating)):
    return a
  return a.astype(dtype, copy=False)


def _place_leaf(
  abstract: jax.ShapeDtypeStruct, read_layer: Callable[[int | None], np.ndarray], layers: list[int] | None, dtype: Any
) -> jax.Array:
  """Builds one sharded parameter from host data without materialising it on any device whole.

  read_layer(i) returns layer i's converted array (or the whole leaf for read_layer(None)).
  """
  shape, sharding = tuple(abstract.shape), abstract.sharding
  if sharding is None:
    raise ValueError("abstract parameters need shardings (e.g. from sharding.partitioning.abstract_state)")
  device_index = sharding.addressable_devices_indices_map(shape)
  distinct: dict[tuple, tuple[slice, ...]] = {}
  for index in device_index.values():
    distinct.setdefault(_slices(index, shape), index)
  target = np.dtype(dtype) if dtype is not None else np.dtype(abstract.dtype)
  buffers = {}
  if layers is None:
    full = _cast(read_layer(None), target)
    buffers = {key: np.ascontiguousarray(full[index]) for key, index in distinct.items()}
    del full
  else:
    for key in distinct:
      (start, stop) = key[0]
      buffers[key] = np.empty((stop - start,) + tuple(b - a for a, b in key[1:]), target)
    for position, layer in enumerate(layers):
      array = _cast(read_layer(layer), target)
      for key, index in distinct.items():
        start, stop = key[0]
        if start <= position < stop:
          buffers[key][position - start] = array[index[1:]]
      del array
  arrays = [jax.device_put(buffers[_slices(index, shape)], device) for device, index in device_index.items()]
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def load_onto_mesh(
  table: Table,
  ckpt: SafetensorsCheckpoint,
  abstract_params: Any,
  *,
  dtype: Any = None,
  on_leaf: Callable[[tuple[str, ...], jax.Array], None] | None = None,
) -> dict:
  """Our params tree holding the checkpoint's weights, each leaf sharded like `abstract_params`.

  Args:
    table: the mapping (its layer layout must match `abstract_params`).
    ckpt: the checkpoint folder.
    abstract_params: nested dict of `jax.ShapeDtypeStruct` with `.sharding` (the unboxed params
      of `partitioning.abstract_state`), i.e. the model's own init shapes.
    dtype: cast floating weights to this dtype (None: the abstract leaf's dtype).
    on_leaf: called with (path, array) after each parameter is placed (progress, memory checks).
  Returns:
    The params tree (plain jax.Arrays), same structure as `abstract_params`.
  """
  resolved = check_checkpoint(table, ckpt)
  wanted = _flatten(abstract_params)
  leaves = table.leaves()
  mapped = {path for path, _, _ in leaves}
  if set(wanted) != mapped:
    only_model = describe_keys("/".join(p) for p in set(wanted) - mapped)
    only_table = describe_keys("/".join(p) for p in mapped - set(wanted))
    raise ValueError(
      f"the {table.name} table and the model disagree: model only: {only_model}; table only: {only_table}"
    )
  out = {}
  for path, rule, layers in leaves:
    abstract = wanted[path]
    expected = table.our_shape(rule, layers)
    if tuple(abstract.shape) != expected:
      raise ValueError(f"{table.name} parameter {'/'.join(path)}: model shape {abstract.shape}, table {expected}")

    def read_layer(i, rule=rule, layers=layers):
      key = rule.theirs if i is None else rule.theirs.format(i=i)
      return rule.to_ours(ckpt.read(resolved[key]))

    if layers is not None and not table.stacked:  # one layer of an unstacked stack: a plain leaf
      read_layer = lambda _, read=read_layer, layer=layers[0]: read(layer)  # noqa: E731
    array = _place_leaf(abstract, read_layer, layers if (layers is not None and table.stacked) else None, dtype)
    out[path] = array
    if on_leaf is not None:
      on_leaf(path, array)
  return _unflatten(out)


def _host(value: Any) -> np.ndarray:
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return np.asarray(jax.device_get(value))


def to_state_dict(table: Table, params: Any, *, dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """The PyTorch state dict (numpy, `dtype`) of our `params` along `table`; the inverse of loading.

  Raises ValueError if the params tree and the table do not have the same leaves and shapes.
  """
  flat = _flatten(params)
  leaves = table.leaves()
  mapped = {path for path, _, _ in leaves}
  if set(flat) != mapped:
    raise ValueError(
      f"the params do not fit the {table.name} table: params only: "
      f"{describe_keys('/'.join(p) for p in set(flat) - mapped)}; table only: "
      f"{describe_keys('/'.join(p) for p in mapped - set(flat))}"
    )
  out = {}
  for path, rule, layers in leaves:
    value = _host(flat[path])
    if tuple(value.shape) != table.our_shape(rule, layers):
      raise ValueError(f"parameter {'/'.join(path)} has shape {value.shape}, the table {table.our_shape(rule, layers)}")
    value = _cast(value, jnp.dtype(dtype))
    if layers is not None and table.stacked:
      for position, layer in enumerate(layers):
        out[rule.theirs.format(i=layer)] = np.ascontiguousarray(rule.to_theirs(value[position]))
    else:
      key = rule.theirs.format(i=layers[0]) if layers is not None else rule.theirs
      out[key] = np.ascontiguousarray(rule.to_theirs(value))
  return out
