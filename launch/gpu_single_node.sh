#!/usr/bin/env bash
# One node, all its GPUs, one process: JAX drives every local GPU from a single process, so
# no launcher is needed; the mesh spans jax.devices(). Usage:
#   bash launch/gpu_single_node.sh configs/dpo.py:llava-1.5-7b \
#       --config.model.hf_checkpoint=/ckpt/llava-1.5-7b-hf --config.data.data_dir=/data/prefs
# Install once: pip install -r requirements.txt 'jax[cuda12]' && pip install -e .
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG [--config.x=v ...]}; shift
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec python -m mmalign_jax.train --config "$CONFIG" "$@"
