#!/usr/bin/env bash
# On a CUDA machine: bench_gpu (images/s of `dissect run` and `run --iou` against a bare forward,
# ResNet-50 at 224 px, batch 256), the GPU-marked tests, then the other benchmarks with their
# defaults, printing every figure (`name: value` lines) after a header naming the device.
#
#   benchmarks/gpu_check.sh [PYTHON]      # PYTHON defaults to .venv/bin/python, else python3
#
# GPU_CHECK_SECONDS (default 900) bounds each step; a step that runs out is named and the next
# one runs (benchmarks/steps.sh). The benchmarks' `dissect run` takes --device auto, so the pass
# runs on the GPU; their bare reference loops stay where each script puts them (bench_gpu's and
# bench_run's on the GPU too; read the ratios with that in mind). bench_dtype gives the bfloat16
# label agreement and cost on the GPU.
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
seconds=${GPU_CHECK_SECONDS:-900}
source benchmarks/steps.sh
step "benchmarks/bench_gpu.py (defaults, with a profile)" "$python" benchmarks/bench_gpu.py --profile 30
# only the GPU tests' file: the others import test-only packages a GPU image may lack
step "GPU-marked tests" "$python" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
for bench in bench_dtype.py bench_run.py bench_iou.py bench_zoo.py bench_rf.py; do
    step "benchmarks/$bench (defaults)" "$python" "benchmarks/$bench"
done
exit $status
