"""Multi-process: cluster detection, explicit settings, and a real 2-process job on 127.0.0.1."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import toy_training

from sora_jax.sharding import distributed, partitioning
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.training import checkpointing

WORKER = Path(__file__).with_name("multiprocess_worker.py")


@pytest.mark.parametrize(
  "env, cluster",
  [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "SLURM"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1"}, "TPU pod"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
  ],
)
def test_detect_cluster(env, cluster):
  assert distributed.detect_cluster(env) == cluster


def _cfg(**kwargs):
  cfg = ml_collections.ConfigDict({"coordinator_address": "", "num_processes": 0, "process_id": -1, "mode": "auto"})
  cfg.update(kwargs)
  return cfg


def test_single_process_is_a_no_op():
  assert distributed.initialize(_cfg(), env={}) == (0, 1)
  assert distributed.initialize(_cfg(mode="off"), env={"OMPI_COMM_WORLD_SIZE": "2"}) == (0, 1)
  assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 2}, "process_id"),
    ({"coordinator_address": "127.0.0.1", "num_processes": 2, "process_id": 0}, "host:port"),
    ({"mode": "sometimes"}, "distributed.mode"),
  ],
)
def test_bad_settings_fail_before_contacting_anyone(kwargs, match):
  with pytest.raises(ValueError, match=match):
    distributed.initialize(_cfg(**kwargs), env={})


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, num_processes, process_id, port):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen(
    [sys.executable, str(WORKER), str(workdir), str(num_processes), str(process_id), str(port)],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait(process):
  try:
    output, _ = process.communicate(timeout=300)
  except subprocess.TimeoutExpired:
    process.kill()
    output, _ = process.communicate()
  assert process.returncode == 0, output[-4000:]


@pytest.mark.slow
def test_two_processes_train_and_checkpoint_as_one_job(tmp_path):
  two, one = tmp_path / "two_processes", tmp_path / "one_process"
  port = _free_port()
  processes = [_launch(two, 2, i, port) for i in range(2)] + [_launch(one, 1, 0, 0)]
  for process in processes:
    _wait(process)
  results = [np.load(two / f"result_{i}.npz") for i in range(2)]
  reference = np.load(one / "result_0.npz")

  # The 2-process loss curve is the 1-process 4-device one (both processes log the global loss).
  assert len(reference["losses"]) == 3
  np.testing.assert_array_equal(results[0]["losses"], results[1]["losses"])
  np.testing.assert_allclose(results[0]["losses"], reference["losses"], rtol=1e-6)

  # One process restores the 2-process checkpoint on 1 device: identical params.
  config = toy_training.toy_config(steps=3, mesh_shape=(1, 1, 1, 1))
  init_fn, _ = toy_training.toy_fns(config)
  mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
  abstract, _ = partitioning.abstract_state(init_fn, mesh, partitioning.logical_rules(config), jax.random.key(0))
  with checkpointing.Checkpointer(two) as ckpt:
    assert ckpt.latest_step() == 3
    state, _ = ckpt.restore(abstract)
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    key = jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(leaf), results[0][key])
    np.testing.assert_allclose(np.asarray(leaf), reference[key], rtol=1e-5, atol=1e-7)
  assert (two / "checkpoints" / "3" / "data" / "process_1-of-2.json").exists()
