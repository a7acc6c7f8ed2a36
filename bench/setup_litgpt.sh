#!/usr/bin/env bash
# litgpt for bench/vs_litgpt.py only, in its own venv: it sees the main venv's
# packages (torch, lightning, litdata, transformers) through a .pth file, and
# gets litgpt and the jsonargparse its CLI pins, without dependencies: litgpt
# also pins huggingface-hub<1.4, which would shadow the main venv's newer copy
# and break transformers (imported by torchmetrics); pretraining does not use
# the hub. .venv is not changed.
# Usage: bash bench/setup_litgpt.sh [VENV_DIR, default /tmp/litgpt-venv]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-/tmp/litgpt-venv}"
.venv/bin/python -m venv "$VENV"
SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TARGET="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$SITE" > "$TARGET/jreg_main_venv.pth"
"$VENV/bin/pip" install -q --no-deps "litgpt==0.5.13" "jsonargparse==4.41.0"
"$VENV/bin/python" -c "import litgpt, torch; print('litgpt ready in $VENV, torch', torch.__version__)"
