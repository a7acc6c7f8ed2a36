#!/usr/bin/env bash
# PERF's GPU-only measurements, run by bench/gpu_check.sh on one GPU (about 4-5
# minutes on an H100/H200-class card; gpu_check.sh gives it 330 s). Not run yet:
# the task that wrote it had no GPU. Each line prints its own table or summary.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# 1. JREG overhead in bf16 autocast: tiny shape at 4/8/16 blocks, then the 1B shape.
"$PY" bench/jreg_overhead.py --device cuda --bf16 --layers 4 8 16 --steps 20 --compile-term
"$PY" bench/jreg_overhead.py --device cuda --bf16 --layers 22 --hidden 2048 --intermediate 5632 \
    --heads 32 --kv-heads 4 --vocab 32000 --batch 4 --seq 2048 --steps 8 --compile-term
# 2. tokens/s and MFU of real fits (TokenThroughputMonitor) of the tiny config, eager and
#    compiled (one GPU, no activation checkpointing: compile_scope auto -> the whole training
#    loss as one graph). The 1B config's pair is gpu_check.sh's headline checks.
"$PY" bench/fit_throughput.py --config configs/tiny_jreg.yaml --gpu --steps 60 --log-every 10 \
    --set model.parallel.compile=false
"$PY" bench/fit_throughput.py --config configs/tiny_jreg.yaml --gpu --steps 60 --log-every 10 \
    --set model.parallel.compile=true
# (Lightning loop vs hand-written loop on the GPU, if time is left:
#  "$PY" bench/loop_overhead.py --device cuda --rounds 4 --steps-per-round 21 --no-progress-bar)
