"""One process of the multi-process training test (run by tests/test_distributed.py, not by pytest).

    python tests/multiprocess_worker.py WORKDIR NUM_PROCESSES PROCESS_ID PORT

Trains the toy model for 3 steps on a (2, 2, 1, 1) mesh of 4 CPU devices in total
(2 per process when NUM_PROCESSES=2, laid out as a hybrid DCN x ICI mesh with the data
axis across processes; 4 in one process when NUM_PROCESSES=1), saving the
final checkpoint to WORKDIR; writes the loss curve and the gathered final params to
WORKDIR/result_<PROCESS_ID>.npz.
"""

import os
import sys

NUM_PROCESSES, PROCESS_ID = int(sys.argv[2]), int(sys.argv[3])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // NUM_PROCESSES}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import toy_training  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from sora_jax.sharding import distributed  # noqa: E402
from sora_jax.training import loop  # noqa: E402


def main(workdir: str, port: int) -> None:
  config = toy_training.toy_config(steps=3, mesh_shape=(2, 2, 1, 1), checkpoint_every=0)
  if NUM_PROCESSES > 1:
    config.distributed.update(
      coordinator_address=f"127.0.0.1:{port}", num_processes=NUM_PROCESSES, process_id=PROCESS_ID
    )
    config.mesh.dcn_shape = (NUM_PROCESSES, 1, 1, 1)  # hybrid layout: data parallelism across hosts
  index, count = distributed.initialize(config.distributed)
  assert (index, count) == (PROCESS_ID, NUM_PROCESSES) and jax.device_count() == 4
  init_fn, train_step = toy_training.toy_fns(config)
  writer = toy_training.RecordingWriter()
  state = loop.train(
    config=config,
    workdir=workdir,
    init_fn=init_fn,
    train_step=train_step,
    make_iterator=lambda: toy_training.ToyIterator(process_index=index, process_count=count),
    writer=writer,
  )
  params = multihost_utils.process_allgather(state.params, tiled=True)
  flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(os.path.join(workdir, f"result_{index}.npz"), losses=np.asarray(writer.losses()), **flat)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[4]))
