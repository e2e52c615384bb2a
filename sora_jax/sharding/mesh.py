"""The device mesh: axes ('data', 'fsdp', 'context', 'tensor') and checks made before compiling.

* data:    pure data parallelism (params replicated across it);
* fsdp:    data parallelism with params / optimizer state sharded across it (ZeRO-3);
* context: the spacetime token axis of the DiT (sequence / context parallelism);
* tensor:  attention heads and MLP hidden units (Megatron-style tensor parallelism).

`config.mesh.shape` gives the size of each axis; one entry may be -1, meaning "the
rest of the devices". On multi-slice TPU (or multi-node GPU), `config.mesh.dcn_shape`
gives the part of each axis that crosses slices (nodes) over the data-centre network,
and the devices are laid out with `mesh_utils.create_hybrid_device_mesh` so that the
fast ICI / NVLink links carry the chatty axes (typically dcn_shape = (slices, 1, 1, 1):
only data parallelism crosses the slow links).

All axes are `AxisType.Auto`: Flax linen's logical partitioning relies on it (the JAX
default of Explicit axes breaks `nn.with_logical_constraint`).

    mesh = make_mesh(config.mesh)                 # e.g. 8 devices, shape (-1, 2, 1, 2) -> (2, 2, 1, 2)
    check_divisibility(mesh, batch_size=8, num_heads=6, num_tokens=1024)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "context", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a global batch is split over


def _shape_of(mesh_cfg: Any, field: str, default: Sequence[int]) -> tuple[int, ...]:
  """Reads `mesh_cfg.<field>`; `mesh_cfg` may also be a bare shape tuple (for tests / notebooks)."""
  if isinstance(mesh_cfg, (tuple, list)):
    return tuple(int(s) for s in mesh_cfg) if field == "shape" else tuple(default)
  return tuple(int(s) for s in mesh_cfg[field])


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces a single -1 in `shape` by the rest of the devices and checks the product.

  Args:
    shape: one size per axis of MESH_AXES; at most one -1.
    num_devices: how many devices the mesh must cover.
  Returns:
    The concrete shape, whose product equals `num_devices`.
  Raises:
    ValueError: naming the shape, the device count, and how to fix it.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(
      f"mesh shape {shape} must have {len(MESH_AXES)} entries, one per axis {MESH_AXES}; "
      f"e.g. --config.mesh.shape='(-1, 1, 1, 1)'."
    )
  if shape.count(-1) > 1:
    raise ValueError(
      f"mesh shape {shape} has more than one -1; only one axis can take 'the rest of the "
      f"devices'. Give the others explicit sizes, e.g. (-1, 2, 1, 1)."
    )
  bad = [s for s in shape if s == 0 or s < -1]
  if bad:
    raise ValueError(f"mesh shape {shape} has invalid sizes {bad}; use positive sizes and at most one -1.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
        f"mesh shape {shape}: the explicit axes multiply to {known}, which does not divide "
        f"the {num_devices} devices, so -1 cannot fill the rest. Pick sizes whose product "
        f"divides {num_devices}."
      )
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(
      f"mesh shape {dict(zip(MESH_AXES, shape))} covers {math.prod(shape)} devices but "
      f"{num_devices} are available. Make the product equal {num_devices}, or put -1 on "
      f"one axis (e.g. --config.mesh.shape='(-1, 1, 1, 1)')."
    )
  return shape


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the 4-axis device mesh described by `mesh_cfg`.

  Args:
    mesh_cfg: `config.mesh` (fields `shape` and optionally `dcn_shape`), or a bare
      shape tuple such as (2, 2, 1, 2).
    devices: the devices to lay out; default `jax.devices()` (all processes).
  Returns:
    A `jax.sharding.Mesh` with axis names MESH_AXES and Auto axis types.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(_shape_of(mesh_cfg, "shape", ()), len(devices))
  dcn_shape = _shape_of(mesh_cfg, "dcn_shape", (1,) * len(MESH_AXES))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if math.prod(dcn_shape) == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  if len(dcn_shape) != len(MESH_AXES) or any(s % d for s, d in zip(shape, dcn_shape)):
    raise ValueError(
      f"mesh dcn_shape {dcn_shape} must have one entry per axis {MESH_AXES} and divide the "
      f"mesh shape {shape} axis by axis (each axis = ICI part x DCN part)."
    )
  ici_shape = tuple(s // d for s, d in zip(shape, dcn_shape))
  # Granules joined by DCN: TPU slices when there are as many as dcn_shape asks for, else hosts
  # (GPU nodes; CPU devices report slice 0 everywhere).
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  num_hosts = len({d.process_index for d in devices})
  by_process = num_slices != math.prod(dcn_shape)
  if math.prod(dcn_shape) not in (num_slices, num_hosts):
    raise ValueError(
      f"mesh dcn_shape {dcn_shape} spans {math.prod(dcn_shape)} slices/hosts, but the devices "
      f"come from {num_slices} TPU slice(s) on {num_hosts} host(s). Make the product of "
      f"dcn_shape equal the number of slices (or of hosts on GPU), or use (1, 1, 1, 1)."
    )
  device_array = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=by_process)
  return Mesh(device_array, MESH_AXES, axis_types=axis_types)


def axis_size(mesh: Mesh, *axes: str) -> int:
  """Product of the sizes of `axes` in `mesh` (1 for an axis the mesh does not have)."""
  return math.prod(mesh.shape.get(a, 1) for a in axes)


def check_divisibility(
  mesh: Mesh, *, batch_size: int | None = None, num_heads: int | None = None, num_tokens: int | None = None
) -> None:
  """Fails early (before compiling) when a size does not split evenly over its mesh axes.

  Args:
    mesh: from `make_mesh`.
    batch_size: the global batch; must divide over data x fsdp.
    num_heads: attention heads; must divide over tensor.
    num_tokens: spacetime tokens per example; must divide over context.
  Raises:
    ValueError: saying which size, which axes, and what to change.
  """
  shape = dict(mesh.shape)
  checks = (
    ("global batch size", "data.batch_size", batch_size, BATCH_AXES),
    ("number of attention heads", "dit.num_heads", num_heads, ("tensor",)),
    ("number of spacetime tokens", "the clip size or dit.patch_size", num_tokens, ("context",)),
  )
  for what, knob, value, axes in checks:
    if value is None:
      continue
    ways = axis_size(mesh, *axes)
    if value % ways:
      divisors = [d for d in range(1, ways + 1) if ways % d == 0 and value % d == 0]
      raise ValueError(
        f"{what} {value} is not divisible by the mesh's {' x '.join(axes)} = {ways} "
        f"(mesh {shape}). Change {knob} to a multiple of {ways}, or shrink "
        f"{'*'.join(axes)} in --config.mesh.shape to one of {divisors} (moving the rest to "
        f"another axis)."
      )


def describe(mesh: Mesh) -> str:
  """'data=2 fsdp=2 context=1 tensor=2 (8 devices, cpu)': for logs."""
  sizes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
  platform = np.asarray(mesh.devices).flat[0].platform
  return f"{sizes} ({mesh.devices.size} devices, {platform})"
