#!/usr/bin/env bash
# The project's one GPU check (one GPU, under 8 minutes). NOT RUN YET: the task
# that wrote it had no GPU. A plain sequence of commands: each writes its log
# to $OUT/<name>.log and one status line to $OUT/summary.txt; a failing line
# does not stop the others. Append new checks as more `check` lines.
#
#   OUT=/tmp/gpu_check bash bench/gpu_check.sh
#
# 1-2 (DISTRIBUTED): fits in bf16 with FSDP2 (ModelParallelStrategy, one GPU,
#     bf16 parameters gathered from fp32 shards, fp32 gradient reduction) of the
#     tiny config and of the 40-block 1.2B paper shape (activation checkpointing
#     on); tokens/s and MFU from the fit's TokenThroughputMonitor.
# 3   (PERF): bench/gpu_perf.sh (JREG overhead, eager vs compiled, loop overhead).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
: > "$OUT/summary.txt"

check() {  # check NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  local start=$SECONDS
  timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local result
  result=$(grep -h "fit_throughput:\|^|" "$OUT/$name.log" | tail -n 20)
  printf '%s rc=%s %ss\n%s\n' "$name" "$rc" "$((SECONDS - start))" "$result" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } \
  > "$OUT/environment.txt" 2>&1

FSDP2='trainer.strategy={class_path: lightning.pytorch.strategies.ModelParallelStrategy, init_args: {data_parallel_size: 1, tensor_parallel_size: 1}}'
check fsdp2_tiny 120 "$PY" bench/fit_throughput.py --config configs/tiny_jreg.yaml --gpu \
  --steps 60 --log-every 10 --set "$FSDP2" model.parallel.param_dtype=bfloat16
check fsdp2_1200m 240 "$PY" bench/fit_throughput.py --config configs/llama_1200m_jreg.yaml --gpu \
  --batch 4 --steps 20 --log-every 5 --set "$FSDP2" model.parallel.param_dtype=bfloat16 \
  model.parallel.activation_checkpointing=true
check perf 330 bash bench/gpu_perf.sh
