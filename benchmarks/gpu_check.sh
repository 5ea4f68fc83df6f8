#!/usr/bin/env bash
# On a CUDA machine: the test suite's GPU-marked tests, then the benchmarks with their defaults,
# printing every figure (`name: value` lines) after a header naming the device.
#
#   benchmarks/gpu_check.sh [PYTHON]      # PYTHON defaults to .venv/bin/python, else python3
#
# The benchmarks' `dissect run` takes --device auto, so the pass runs on the GPU; their bare
# reference loops stay where each script puts them (bench_run's on the GPU too; read the ratios
# with that in mind). bench_dtype gives the bfloat16 label agreement and cost on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=${PYTHONPATH:-$PWD}
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check."
    exit 2
fi
"$python" - <<'PY'
import torch
print(f"device: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)")
print(f"torch: {torch.__version__} cuda {torch.version.cuda}; torch threads: {torch.get_num_threads()}")
PY
status=0
echo "== GPU-marked tests"
"$python" -m pytest -m gpu -q -p no:cacheprovider tests || status=1
for bench in bench_run.py bench_dtype.py bench_zoo.py bench_iou.py bench_rf.py; do
    echo "== benchmarks/$bench (defaults)"
    start=$(date +%s)
    "$python" "benchmarks/$bench" || status=1
    echo "wall_seconds: $(( $(date +%s) - start ))"
done
exit $status
