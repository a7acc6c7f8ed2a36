#!/usr/bin/env bash
# The project's one GPU check (one GPU, about 8 minutes). A plain sequence of checks: each
# writes its log to $OUT/<name>.log and its result lines to $OUT/summary.txt; a failing
# check does not stop the others. Arguments pick checks by name prefix:
#
#   OUT=/tmp/gpu_check bash bench/gpu_check.sh              # 1-4
#   OUT=/tmp/gpu_check bash bench/gpu_check.sh headline     # 1 only
#   OUT=/tmp/gpu_check bash bench/gpu_check.sh perf         # bench/gpu_perf.sh (not in "all")
#
# 1 headline: `cli.py fit --config configs/llama_1b_jreg.yaml` as shipped (FSDP2Strategy
#   over a world of one, bf16-mixed, per-block compile, activation checkpointing, fused
#   AdamW, gradient clipping at 1.0, batch 8 x 2048), on random-token shards, for 30
#   steps with a validation and last.ckpt at the end; then `--ckpt_path last` to 35.
#   Only the step counts, the validation size and the data folder differ from the file.
# 2 optimizer: bench/optimizer_step.py at the 1B shape: norm + clip + AdamW step, fused
#   vs foreach, side by side.
# 3-4 overlays: configs/strategy/ddp.yaml and fsdp1_gpu.yaml after llama_300m_jreg.yaml,
#   10 steps each (the clip of FSDP1's flat shards goes through its own clip_grad_norm_).
# 5 single_device: tiny_jreg.yaml on one GPU without a distributed strategy, bf16 (the
#   model is built under Lightning's GPU default device, as under DDP).
#
# On a machine without the project's venv, PYTHON=python3 and a folder of wheels in .whl
# (installed into /tmp/site first; see bench/README.md, "GPU check"). FIT_FLAGS are added to
# every fit: a dry run of the script on a CPU passes --trainer.accelerator cpu and a small
# shape there (bench/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-.venv/bin/python}
WORK=${WORK:-/tmp/jreg_gpu_check}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
: > "$OUT/summary.txt"
ONLY=("$@")
if [[ -d .whl ]] && ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi

check() {  # check NAME SECONDS COMMAND...
  local name=$1 seconds=$2 prefix pick=0; shift 2
  if (( ${#ONLY[@]} == 0 )); then [[ $name != perf* ]] && pick=1; fi
  for prefix in "${ONLY[@]}"; do [[ $name == "$prefix"* ]] && pick=1; done
  (( pick )) || return 0
  local start=$SECONDS
  timeout "$seconds" bash -c '"$@"' _ "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local result
  result=$(grep -h "run_summary\|^  \|optimizer_step:\|fit_throughput:\|^|\|^error" "$OUT/$name.log" | tail -n 24)
  printf '%s rc=%s %ss\n%s\n' "$name" "$rc" "$((SECONDS - start))" "$result" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi; "$PY" -c "import torch, lightning, transformers, litdata; print(torch.__version__, \
lightning.__version__, transformers.__version__, litdata.__version__, torch.cuda.get_device_name())"; } \
  > "$OUT/environment.txt" 2>&1

SHARDS=$WORK/shards_32000_2048
shards() {  # random tokens, vocab 32000, whole blocks of 2048 + 1
  [[ -d $SHARDS/train ]] || "$PY" -c "import sys; sys.path.insert(0, 'bench'); \
from fit_throughput import write_shards; from pathlib import Path; \
write_shards(Path('$SHARDS'), 32000, 2048, 8 * 40)"
}

fit() {  # fit RUN_DIR STEPS CONFIG... [--flags]: a shipped config, only steps and data changed
  local run=$1 steps=$2; shift 2
  "$PY" cli.py fit "$@" --data.data_dir "$SHARDS" --trainer.default_root_dir "$run" \
    --trainer.max_steps "$steps" --trainer.val_check_interval "$steps" \
    --trainer.limit_val_batches 2 --trainer.log_every_n_steps 5 --trainer.enable_progress_bar false \
    ${FIT_FLAGS:-}
}

headline() {
  shards && fit "$WORK/headline" 30 --config configs/llama_1b_jreg.yaml \
    && fit "$WORK/headline" 35 --config configs/llama_1b_jreg.yaml --ckpt_path last
  local rc=$?
  "$PY" bench/run_summary.py "$WORK/headline"
  return $rc
}

overlay() {  # overlay NAME: llama_300m_jreg.yaml + configs/strategy/NAME.yaml, 10 steps
  shards && fit "$WORK/$1" 10 --config configs/llama_300m_jreg.yaml --config "configs/strategy/$1.yaml" \
    --data.batch_size 8
  local rc=$?
  "$PY" bench/run_summary.py "$WORK/$1"
  return $rc
}

export PY WORK SHARDS FIT_FLAGS
export -f shards fit headline overlay
check headline 330 headline
check optimizer 120 "$PY" bench/optimizer_step.py --device cuda --layers 22 --hidden 2048 \
  --intermediate 5632 --heads 32 --kv-heads 4 --vocab 32000 --steps 10
check overlay_ddp 150 overlay ddp
check overlay_fsdp1 150 overlay fsdp1_gpu
check single_device 120 "$PY" bench/fit_throughput.py --config configs/tiny_jreg.yaml --gpu \
  --steps 40 --log-every 10
check perf 330 bash bench/gpu_perf.sh
