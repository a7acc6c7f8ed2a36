#!/usr/bin/env bash
# Launch `cli.py fit` with torchrun on this node (run it once per node).
#
#   scripts/torchrun_fit.sh CONFIG [more cli.py fit arguments...]
#
# Environment (defaults in brackets):
#   GPUS_PER_NODE [8]  NNODES [1]  NODE_RANK [0]  MASTER_ADDR [127.0.0.1]  MASTER_PORT [29500]
#   STRATEGY [none: the config's own, FSDP2 for llama_*]  PYTHON [python]
#   JREG_DRY_RUN=1     print the command instead of running it
#
# Two nodes of 8 GPUs (on each node, NODE_RANK 0 and 1):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/torchrun_fit.sh configs/llama_1b_jreg.yaml
# The trainer's devices and num_nodes are set from these numbers, so they match the
# processes torchrun starts; FSDP2 shards over all of them by itself. DDP instead:
#   STRATEGY=configs/strategy/ddp.yaml scripts/torchrun_fit.sh configs/llama_1b_jreg.yaml
# Two "nodes" of one CPU process each on this machine (tests/test_multinode.py does this):
#   GPUS_PER_NODE=1 NNODES=2 NODE_RANK=0 STRATEGY=configs/strategy/fsdp_cpu.yaml \
#     scripts/torchrun_fit.sh configs/tiny_jreg.yaml --data.data_dir DIR   # and NODE_RANK=1
set -euo pipefail

CONFIG=${1:?usage: scripts/torchrun_fit.sh CONFIG [cli.py fit arguments...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
STRATEGY=${STRATEGY:-}
PYTHON=${PYTHON:-python}

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1

args=(fit --config "$CONFIG" ${STRATEGY:+--config "$STRATEGY"}
      --trainer.devices "$GPUS_PER_NODE" --trainer.num_nodes "$NNODES")
command=("$PYTHON" -m torch.distributed.run
         --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK"
         --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
         cli.py "${args[@]}" "$@")

if [[ "${JREG_DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${command[@]}"; echo
  exit 0
fi
exec "${command[@]}"
