#!/usr/bin/env bash
# The project's one GPU check (one GPU). NOT RUN YET: the tasks that wrote it had
# no GPU. A plain sequence of checks: each writes its log to $OUT/<name>.log and
# one status line to $OUT/summary.txt; a failing check does not stop the others.
# Append new checks as more `check` lines. Arguments pick checks by name prefix:
#
#   OUT=/tmp/gpu_check bash bench/gpu_check.sh            # all, about 15 minutes
#   OUT=/tmp/gpu_check bash bench/gpu_check.sh headline   # 1-2 only, about 5 minutes
#
# 1-2 (HEADLINE, issue 15): tokens/s, MFU and peak memory of configs/llama_1b_jreg.yaml
#     as shipped (bf16-mixed, activation checkpointing, batch 4 x 2048) on one GPU,
#     eager vs compiled (per-block torch.compile, the GPU configs' default). One
#     device, strategy auto: no FSDP2 sharding over a world of one
#     (bench/fit_throughput.py overrides the config's strategy); 100 steps, the
#     rate of the last 30.
# 3-4 (DISTRIBUTED): the shipped FSDP2 path (jreg_lightning.strategy.FSDP2Strategy,
#     a world of one: bf16 parameters gathered from fp32 shards, fp32 gradient
#     reduction) on the tiny config and on the 40-block 1.2B paper shape as shipped
#     (activation checkpointing and per-block compile on).
# 5   (PERF): bench/gpu_perf.sh (JREG overhead, eager vs compiled, loop overhead).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
: > "$OUT/summary.txt"
ONLY=("$@")

check() {  # check NAME SECONDS COMMAND...
  local name=$1 seconds=$2 prefix pick=$(( ${#ONLY[@]} == 0 )); shift 2
  for prefix in "${ONLY[@]}"; do [[ $name == "$prefix"* ]] && pick=1; done
  (( pick )) || return 0
  local start=$SECONDS
  timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local result
  result=$(grep -h "fit_throughput:\|^|" "$OUT/$name.log" | tail -n 20)
  printf '%s rc=%s %ss\n%s\n' "$name" "$rc" "$((SECONDS - start))" "$result" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } \
  > "$OUT/environment.txt" 2>&1

HEADLINE=(bench/fit_throughput.py --config configs/llama_1b_jreg.yaml --gpu --batch 4
          --steps 100 --log-every 10)
check headline_eager 240 "$PY" "${HEADLINE[@]}" --set model.parallel.compile=false
check headline_compiled 360 "$PY" "${HEADLINE[@]}" --set model.parallel.compile=true

FSDP2='trainer.strategy={class_path: jreg_lightning.strategy.FSDP2Strategy}'
check fsdp2_tiny 120 "$PY" bench/fit_throughput.py --config configs/tiny_jreg.yaml --gpu \
  --steps 60 --log-every 10 --set "$FSDP2" model.parallel.param_dtype=bfloat16
check fsdp2_1200m 300 "$PY" bench/fit_throughput.py --config configs/llama_1200m_jreg.yaml --gpu \
  --batch 4 --steps 20 --log-every 5 --set "$FSDP2"
check perf 330 bash bench/gpu_perf.sh
