#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every worker; jax.distributed
# finds the coordinator itself (--config.distributed.mode=on).
#
#   tools/launch/tpu_pod.sh TPU_NAME ZONE gs://bucket/runs/wan13b [extra --config.* flags]
#
# Expects the repo at ~/sora_jax on every worker (e.g. `--command="git clone ..."` once) and a
# dataset + latent cache reachable from all workers (gs:// paths work for Orbax and TFDS data dirs).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; WORKDIR=$3; shift 3
CONFIG=${CONFIG:-configs/dit/video.py:wan-1.3b}
VAE_WORKDIR=${VAE_WORKDIR:?set VAE_WORKDIR to the trained VAE workdir}
CMD="cd ~/sora_jax && make install && .venv/bin/python tools/train_dit.py --config=${CONFIG} \
  --workdir=${WORKDIR} --config.vae_workdir=${VAE_WORKDIR} --config.distributed.mode=on $*"
echo "on every worker of ${TPU_NAME}: ${CMD}" >&2
exec gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="${CMD}"
