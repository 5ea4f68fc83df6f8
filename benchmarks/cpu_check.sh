#!/usr/bin/env bash
# The CPU figures of README's "Benchmarks" section, measured back to back: every benchmark that
# section quotes, one after the other with one torch thread (OMP_NUM_THREADS=1), each after a
# header naming the commit, the machine and its load. Run it on a quiet machine (nothing else
# on the cores: the load before and after each step is printed); about 20 minutes on 2 cores.
#
#   benchmarks/cpu_check.sh [PYTHON] | tee cpu_check.log   # PYTHON: .venv/bin/python or python3
#
# CPU_CHECK_SECONDS (default 1200) bounds each step (benchmarks/steps.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
python=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=${PYTHONPATH:-$PWD} OMP_NUM_THREADS=1
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); cores: $(nproc --all)"
"$python" -c 'import torch; print(f"torch: {torch.__version__}; torch threads: {torch.get_num_threads()}")'
seconds=${CPU_CHECK_SECONDS:-1200}
source benchmarks/steps.sh
step "bench_run.py (defaults)" "$python" benchmarks/bench_run.py
step "bench_threshold.py (defaults)" "$python" benchmarks/bench_threshold.py
step "bench_dtype.py (defaults)" "$python" benchmarks/bench_dtype.py
step "bench_zoo.py --families resnet18" "$python" benchmarks/bench_zoo.py --families resnet18
step "bench_iou.py (defaults)" "$python" benchmarks/bench_iou.py
step "bench_allocator.py (defaults)" "$python" benchmarks/bench_allocator.py
step "bench_rf.py (defaults)" "$python" benchmarks/bench_rf.py
step "bench_startup.py (defaults)" "$python" benchmarks/bench_startup.py
step "bench_startup.py --model bench_iou.py:resnet18" "$python" benchmarks/bench_startup.py \
    --model benchmarks/bench_iou.py:resnet18
step "bench_ablate.py (defaults)" "$python" benchmarks/bench_ablate.py
exit $status
