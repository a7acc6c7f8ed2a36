#!/usr/bin/env bash
# Launch `cli.py fit` with torchrun on this node (run it once per node).
#
#   scripts/torchrun_fit.sh CONFIG [more cli.py fit arguments...]
#
# Environment (defaults in brackets):
#   GPUS_PER_NODE [8]  NNODES [1]  NODE_RANK [0]  MASTER_ADDR [127.0.0.1]  MASTER_PORT [29500]
#   STRATEGY [configs/strategy/fsdp.yaml]  PYTHON [python]
#   JREG_DRY_RUN=1     print the command instead of running it
#
# Two nodes of 8 GPUs, FSDP2 (on each node, NODE_RANK 0 and 1):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/torchrun_fit.sh configs/llama_1b_jreg.yaml
# The trainer's devices / num_nodes and FSDP2's data_parallel_size are set from
# these numbers, so they always match the processes torchrun starts.
set -euo pipefail

CONFIG=${1:?usage: scripts/torchrun_fit.sh CONFIG [cli.py fit arguments...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
STRATEGY=${STRATEGY:-configs/strategy/fsdp.yaml}
PYTHON=${PYTHON:-python}

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1

args=(fit --config "$CONFIG" --config "$STRATEGY"
      --trainer.devices "$GPUS_PER_NODE" --trainer.num_nodes "$NNODES")
if grep -q ModelParallelStrategy "$STRATEGY"; then
  # FSDP2 shards over every process: data_parallel_size = nodes x GPUs per node.
  args+=(--trainer.strategy.init_args.data_parallel_size "$((NNODES * GPUS_PER_NODE))")
fi
command=("$PYTHON" -m torch.distributed.run
         --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK"
         --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
         cli.py "${args[@]}" "$@")

if [[ "${JREG_DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${command[@]}"; echo
  exit 0
fi
exec "${command[@]}"
