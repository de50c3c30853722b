#!/usr/bin/env bash
# Data-parallel training on several GPUs of one machine (or CPU processes), with torchrun.
#
#   pipelines/train_multi_gpu.sh CONFIG [NPROC]       # NPROC default: the number of GPUs (nvidia-smi -L)
#   NNODES=2 NODE_RANK=0 MASTER=10.0.0.5:29500 pipelines/train_multi_gpu.sh CONFIG 8   # first of 2 machines
#
# Every process takes its slice of each global batch; embeddings are gathered across processes so the
# contrastive negatives span the global batch (train.batch_size is the global batch); gradients are summed.
# Processes use NCCL on GPUs and gloo on CPUs. Run `geoembed build -c CONFIG` first (once, not per process).
# A killed run resumes from its last checkpoint when started again with the same command.
set -euo pipefail
config=${1:?usage: train_multi_gpu.sh CONFIG [NPROC]}
nproc=${2:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c GPU || true)}
if [ "${nproc:-0}" -lt 1 ]; then nproc=1; fi
python=${PYTHON:-python}
if [ -n "${MASTER:-}" ]; then
  exec "$python" -m torch.distributed.run --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --nproc_per_node "$nproc" --rdzv_backend c10d --rdzv_endpoint "$MASTER" -m geoembed.cli train -c "$config"
fi
exec "$python" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m geoembed.cli train -c "$config"
