#!/usr/bin/env bash
# One call on a lent GPU machine (no internet, torch + triton preinstalled), from the repo root:
#
#     bash benchmarks/gpu_check.sh
#
# 1. the benchmark (< 5 min; it compiles every kernel variant up front in parallel processes,
#    checks each Triton path against cuDNN, then times cuDNN, the fused engine and the Triton paths);
# 2. the GPU-only correctness tests (lengths, fp32/bf16/fp16, every path; most kernels are already
#    in Triton's disk cache from step 1).
# Results: benchmarks/results/gpu.json, also copied to $OUT when the device tool provides it.
set -u
export PYTHONPATH=src
export TRITON_DEFAULT_FP_FUSION=1  # Triton >= 3.9 warns when unset; 1 is the historical default
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

timeout 330 python benchmarks/bench_gpu.py "$@"
bench_rc=$?
if [ -n "${OUT:-}" ] && [ -f benchmarks/results/gpu.json ]; then cp benchmarks/results/gpu.json "$OUT/"; fi

timeout 240 python -m pytest tests/test_triton.py -q -x -k gpu -p no:cacheprovider
test_rc=$?
echo "bench_gpu rc=$bench_rc, gpu tests rc=$test_rc"
exit $((bench_rc != 0 || test_rc != 0))
