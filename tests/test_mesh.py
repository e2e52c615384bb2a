"""Mesh construction and the divisibility checks that run before compiling."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType

from configs import base
from sora_jax.sharding import mesh as mesh_lib


def test_minus_one_takes_the_rest_of_the_devices():
  config = base.get_config()
  config.mesh.shape = (-1, 2, 1, 2)
  mesh = mesh_lib.make_mesh(config.mesh)
  assert mesh.axis_names == ("data", "fsdp", "context", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
  assert mesh.axis_types == (AxisType.Auto,) * 4  # linen logical partitioning needs Auto
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_explicit_shape_and_device_subset():
  mesh = mesh_lib.make_mesh((1, 2, 1, 1), devices=jax.devices()[:2])
  assert mesh.devices.shape == (1, 2, 1, 1)
  assert "fsdp=2" in mesh_lib.describe(mesh) and "2 devices" in mesh_lib.describe(mesh)


@pytest.mark.parametrize(
  "shape, match",
  [
    ((2, 2, 1, 1), "covers 4 devices but 8 are available"),
    ((-1, -1, 1, 1), "more than one -1"),
    ((-1, 3, 1, 1), "does not divide the 8 devices"),
    ((2, 4, 1), "must have 4 entries"),
    ((8, 0, 1, 1), "invalid sizes"),
  ],
)
def test_bad_mesh_shapes_say_how_to_fix(shape, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.make_mesh(shape)


def test_dcn_shape_must_divide_the_mesh():
  cfg = ml_collections.ConfigDict({"shape": (8, 1, 1, 1), "dcn_shape": (3, 1, 1, 1)})
  with pytest.raises(ValueError, match="dcn_shape"):
    mesh_lib.make_mesh(cfg)


def test_dcn_shape_must_match_the_number_of_slices_or_hosts():
  cfg = ml_collections.ConfigDict({"shape": (8, 1, 1, 1), "dcn_shape": (2, 1, 1, 1)})
  with pytest.raises(ValueError, match="1 TPU slice.* on 1 host"):
    mesh_lib.make_mesh(cfg)  # one process: nothing to span (tests/test_distributed.py runs 2 hosts)


def test_resolve_mesh_shape():
  assert mesh_lib.resolve_mesh_shape((1, -1, 4, 1), 16) == (1, 4, 4, 1)
  assert mesh_lib.resolve_mesh_shape((2, 2, 2, 2), 16) == (2, 2, 2, 2)


def test_check_divisibility_accepts_good_sizes():
  mesh = mesh_lib.make_mesh((2, 2, 1, 2))
  mesh_lib.check_divisibility(mesh, batch_size=8, num_heads=6, num_tokens=7)


@pytest.mark.parametrize(
  "kwargs, words",
  [
    ({"batch_size": 6}, ["global batch size 6", "data x fsdp = 4", "data.batch_size"]),
    ({"num_heads": 3}, ["attention heads 3", "tensor = 2", "dit.num_heads"]),
    ({"num_tokens": 9}, ["spacetime tokens 9", "context = 4"]),
  ],
)
def test_check_divisibility_errors_name_the_size_and_the_fix(kwargs, words):
  mesh = mesh_lib.make_mesh((1, 2, 4, 1) if "num_tokens" in kwargs else (2, 2, 1, 2))
  with pytest.raises(ValueError) as error:
    mesh_lib.check_divisibility(mesh, **kwargs)
  for word in words:
    assert word in str(error.value)
  assert "--config.mesh.shape" in str(error.value)


def test_axis_size():
  mesh = mesh_lib.make_mesh((2, 2, 1, 2))
  assert mesh_lib.axis_size(mesh, "data", "fsdp") == 4
  assert mesh_lib.axis_size(mesh) == 1
  assert np.asarray(mesh.devices).size == 8
