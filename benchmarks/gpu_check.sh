#!/usr/bin/env bash
# One GPU, one table, at most 8 minutes (see benchmarks/gpu_check.py for what it measures).
#
#   benchmarks/gpu_check.sh               # on a GPU node with raytag installed (CUDA torch)
#   benchmarks/gpu_check.sh --cpu-smoke   # every section tiny on the CPU: checks the script
#
# Uses the python of the installed raytag (RAYTAG_PYTHON, else the active `python`);
# writes results/benchmarks/gpu_check.md. Where there is no GPU it says so and exits 0
# without measuring anything.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${RAYTAG_PYTHON:-$(command -v python || command -v python3)}"

if ! "$PY" -c "import raytag" 2>/dev/null; then
    echo "gpu_check: $PY cannot import raytag; install it (pip install -e .) or set RAYTAG_PYTHON" >&2
    exit 2
fi
LIMIT_S=480  # 8 minutes in all: the script skips sections past --budget-s (420 s); this is the hard stop
if [[ " $* " == *" --cpu-smoke "* ]]; then
    LIMIT_S=1200  # a 2-core laptop trains the tiny runs in minutes
else
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "gpu_check: no GPU here (nvidia-smi not found); nothing measured."
        echo "gpu_check: run it on a GPU node, or with --cpu-smoke to check the script on the CPU."
        exit 0
    fi
    if ! nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu_check: nvidia-smi finds no usable GPU ($(nvidia-smi -L 2>&1 | head -1)); nothing measured."
        exit 0
    fi
fi
exec timeout --signal=INT --kill-after=20 "$LIMIT_S" "$PY" benchmarks/gpu_check.py "$@"
