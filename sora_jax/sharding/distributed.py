"""Multi-process start-up: one call at the top of every tool, before any JAX computation.

    from sora_jax.sharding import distributed
    distributed.initialize(config.distributed)   # no-op on one machine

Three ways to run:

* one process (laptop, one GPU/TPU host): nothing to do, `initialize` returns (0, 1);
* a cluster JAX knows (TPU pod slices, SLURM, Open MPI): run the same command on every
  host; `initialize` sees the scheduler's environment variables and calls
  `jax.distributed.initialize()`, which finds the coordinator and this process's id
  itself (`--config.distributed.mode=on` forces this where the variables are absent,
  e.g. a TPU VM pod whose workers do not export TPU_WORKER_HOSTNAMES);
* anything else: pass `--config.distributed.coordinator_address=host:port
  --config.distributed.num_processes=N --config.distributed.process_id=i` on each process
  (e.g. two processes on 127.0.0.1 in the tests).

Afterwards `jax.devices()` lists every process's devices; each process feeds its own
share of the global batch (`sora_jax.data.pipeline` shards by process index), and
`sora_jax.sharding.partitioning.shard_batch` assembles the global arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax

log = logging.getLogger(__name__)

_MODES = ("auto", "on", "off")


def _count(env: Mapping[str, str], key: str) -> int:
  try:
    return int(env.get(key, "1"))
  except ValueError:
    return 1


def _tpu_workers(env: Mapping[str, str]) -> int:
  return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()])


# Cluster name -> "does this environment say there is more than one process?"
CLUSTER_DETECTORS: dict[str, Callable[[Mapping[str, str]], bool]] = {
  "SLURM": lambda env: "SLURM_JOB_ID" in env and _count(env, "SLURM_NTASKS") > 1,
  "Open MPI": lambda env: _count(env, "OMPI_COMM_WORLD_SIZE") > 1,
  "TPU pod": lambda env: _tpu_workers(env) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env,
}


def detect_cluster(env: Mapping[str, str] | None = None) -> str | None:
  """The multi-process cluster this process runs in ("SLURM", "Open MPI", "TPU pod"), or None."""
  env = os.environ if env is None else env
  return next((name for name, detect in CLUSTER_DETECTORS.items() if detect(env)), None)


def _check_explicit(cfg: Any) -> None:
  if cfg.num_processes < 1 or not 0 <= cfg.process_id < cfg.num_processes:
    raise ValueError(
      f"distributed.coordinator_address={cfg.coordinator_address!r} needs distributed.num_processes >= 1 "
      f"and 0 <= distributed.process_id < num_processes (got num_processes={cfg.num_processes}, "
      f"process_id={cfg.process_id}); pass e.g. --config.distributed.num_processes=2 "
      f"--config.distributed.process_id=0 on the first process and process_id=1 on the second."
    )
  if ":" not in cfg.coordinator_address:
    raise ValueError(
      f"distributed.coordinator_address={cfg.coordinator_address!r} must be host:port, "
      f"e.g. 10.0.0.1:1234 (the same on every process; process 0 listens there)."
    )


def initialize(distributed_cfg: Any, env: Mapping[str, str] | None = None) -> tuple[int, int]:
  """Joins this process to the multi-process job described by `config.distributed`.

  Args:
    distributed_cfg: `config.distributed` (coordinator_address, num_processes, process_id, mode).
    env: environment variables to inspect (default os.environ; for tests).
  Returns:
    (process_index, process_count).
  Raises:
    ValueError: inconsistent explicit settings or an unknown mode.
  """
  mode = distributed_cfg.mode
  if mode not in _MODES:
    raise ValueError(f"distributed.mode={mode!r} is not one of {_MODES}.")
  if jax.distributed.is_initialized() or mode == "off":
    return jax.process_index(), jax.process_count()
  if distributed_cfg.coordinator_address:
    _check_explicit(distributed_cfg)
    log.info(
      "joining %d-process job at %s as process %d",
      distributed_cfg.num_processes,
      distributed_cfg.coordinator_address,
      distributed_cfg.process_id,
    )
    jax.distributed.initialize(
      distributed_cfg.coordinator_address,
      num_processes=distributed_cfg.num_processes,
      process_id=distributed_cfg.process_id,
    )
  else:
    cluster = detect_cluster(env)
    if cluster is None and mode == "auto":
      return 0, 1
    log.info("initialising jax.distributed from the %s environment", cluster or "cluster")
    jax.distributed.initialize()
  log.info(
    "process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return jax.process_index(), jax.process_count()
