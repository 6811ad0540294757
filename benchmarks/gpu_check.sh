#!/usr/bin/env bash
# One call on a lent GPU machine (no internet, torch + triton preinstalled), from the repo root:
#
#     bash benchmarks/gpu_check.sh [bench_gpu.py options]
#
# 1. the split path's GPU tests first (its cross-program step barrier only runs compiled), so a
#    broken barrier shows in seconds, and the fp32 precision switches read and restored under
#    this machine's torch (every fp32 call reads them);
# 2. where the peak memory goes (benchmarks/gpu_memory.py, about 30 s), and where a call's host
#    time goes with the real launches (benchmarks/host_profile.py, cProfile, about 20 s), and
#    what one launch costs the host (a torch op, Triton kernels, a cooperative launch);
# 3. the benchmark (it compiles every kernel variant up front in parallel processes, checks each
#    Triton path against cuDNN, then times cuDNN, the fused engine and the Triton paths);
# 4. the other GPU-only correctness tests (most kernels are in Triton's disk cache by then), and
#    the task commands trained and scored on the GPU.
# Logs and benchmarks/results/gpu.json and gpu_memory.json go to $OUT when the device tool provides it.
# Time limits (seconds): SPLIT_S, MEM_S, HOST_S, BENCH_S, TESTS_S.
set -u -o pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
export TRITON_DEFAULT_FP_FUSION=1  # Triton >= 3.9 warns when unset; 1 is the historical default
OUT=${OUT:-/tmp/rnnkit_gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

pytest_gpu() {
    python -m pytest tests/test_triton.py tests/test_native.py tests/test_tasks_cli.py -q -p no:cacheprovider -k "$1"
}
timeout "${SPLIT_S:-150}" bash -c "$(declare -f pytest_gpu); pytest_gpu '(gpu and split) or tf32_switches'" 2>&1 | tee "$OUT/split_tests.log"
split_rc=$?

timeout "${MEM_S:-90}" python benchmarks/gpu_memory.py 2>&1 | tee "$OUT/memory.log"
mem_rc=$?
[ -f benchmarks/results/gpu_memory.json ] && cp benchmarks/results/gpu_memory.json "$OUT/"

timeout "${HOST_S:-60}" python benchmarks/host_profile.py --out "$OUT/host_gpu.json" 2>&1 | tee "$OUT/host.log"
host_rc=$?

timeout "${BENCH_S:-330}" python benchmarks/bench_gpu.py "$@" 2>&1 | tee "$OUT/bench.log"
bench_rc=$?
[ -f benchmarks/results/gpu.json ] && cp benchmarks/results/gpu.json "$OUT/"

timeout "${TESTS_S:-240}" bash -c "$(declare -f pytest_gpu); pytest_gpu 'gpu and not split'" 2>&1 | tee "$OUT/tests.log"
test_rc=$?
echo "split tests rc=$split_rc, gpu_memory rc=$mem_rc, host_profile rc=$host_rc, bench_gpu rc=$bench_rc, other gpu tests rc=$test_rc"
exit $((split_rc != 0 || mem_rc != 0 || host_rc != 0 || bench_rc != 0 || test_rc != 0))
