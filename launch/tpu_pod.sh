#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create the TPU VM, install mmalign-jax on every worker, run
# the same command on all workers (JAX finds the other hosts itself; each host feeds its own
# data shard). Usage:
#   TPU_NAME=mmalign ZONE=us-central2-b ACCELERATOR=v4-32 PROJECT=my-proj \
#   CONFIG="configs/dpo.py:llava-1.5-13b" \
#   EXTRA="--config.model.hf_checkpoint=/mnt/ckpt/llava-1.5-13b-hf --config.data.data_dir=/mnt/data/prefs --config.workdir=/mnt/runs/dpo13b" \
# /mnt must be storage every worker sees (e.g. a Filestore/NFS or gcsfuse mount): the
# checkpoint, data and workdir paths are plain filesystem paths.
#   bash launch/tpu_pod.sh [create|setup|run|delete]
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${PROJECT:?set PROJECT}"
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REPO=${REPO:-https://github.com/your-org/mmalign-jax.git}
CONFIG=${CONFIG:-configs/dpo.py}
EXTRA=${EXTRA:-}
tpu() { gcloud compute tpus tpu-vm "$@" --zone "$ZONE" --project "$PROJECT"; }
case "${1:-run}" in
  create) tpu create "$TPU_NAME" --accelerator-type "$ACCELERATOR" --version "$RUNTIME" ;;
  setup)  tpu ssh "$TPU_NAME" --worker=all --command "
            set -e; git clone $REPO mmalign-jax 2>/dev/null || (cd mmalign-jax && git pull)
            cd mmalign-jax && pip install -r requirements.txt 'jax[tpu]' && pip install -e ." ;;
  run)    tpu ssh "$TPU_NAME" --worker=all --command "
            cd mmalign-jax && python -m mmalign_jax.train --config $CONFIG $EXTRA" ;;
  delete) tpu delete "$TPU_NAME" --quiet ;;
  *) echo "usage: $0 [create|setup|run|delete]" >&2; exit 2 ;;
esac
