"""bench_gpu.py's whole run on the CPU: Triton's interpreter for the kernels, ``torch.cuda`` faked.

A typo in the benchmark costs a session its few GPU minutes, so this runs ``bench_gpu.main()``
end to end first (the variants asked for, the fixed-cost probe, the table, the JSON, the
Markdown and the per-variant summary) on two tiny points of each mode and dtype, then
``gpu_memory.main()`` on two (``tests/test_benchmarks.py`` runs it in CI). The timings and
memory it prints mean nothing. The kernels' own correctness on the GPU is the GPU-only tests'
job.

    PYTHONPATH=src python benchmarks/bench_gpu_dryrun.py --out /tmp/gpu_dryrun.json  # + gpu_memory.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined; it must stay set
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import bench_gpu  # noqa: E402
from rnnkit.engine import triton_engine  # noqa: E402, F401  (defines the kernels, interpreted)


class _Event:
    """A wall-clock stand-in for ``torch.cuda.Event``."""

    def __init__(self, enable_timing: bool = True) -> None:
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: _Event) -> float:
        return (end.t - self.t) * 1000.0


def _fake_cuda() -> None:
    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda.synchronize = lambda *a: None
    cuda.Event = _Event
    cuda.reset_peak_memory_stats = lambda *a: None
    cuda.max_memory_allocated = lambda *a: 0
    cuda.memory_allocated = lambda *a: 0
    cuda.empty_cache = lambda: None
    cuda.current_device = lambda: 0
    cuda.get_device_name = lambda *a: "none (dry run)"
    cuda.get_device_properties = lambda *a: types.SimpleNamespace(name="none", multi_processor_count=132)
    cuda.memory_reserved = lambda *a: 0
    cuda.memory._record_memory_history = lambda *a, **k: None
    # one block of 1 MiB allocated, as the allocator's trace would show it
    trace = [{"action": "alloc", "addr": 1, "size": 2**20, "frames": []}]
    cuda.memory._snapshot = lambda: {"device_traces": [trace]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where the JSON goes (the .md beside it)")
    ap.add_argument(
        "--extra-paths",
        default="w16,graph,gemm_graph,splitk,w16k,resident_wide,bw4,w16bw4,side,sidebw4,sidek",
        help="bench_gpu's variants to run (default: those the next GPU call times, and w16, w16k, "
        "splitk and w16bw4, which earlier calls timed; 'all': every one)",
    )
    args = ap.parse_args()
    _fake_cuda()
    bench_gpu.DEVICE = "cpu"
    bench_gpu.ISSUE_GRID = [(64, 2, 8, 16)]  # B >= 64: every variant applies
    bench_gpu.LAYERS_GRID = [(3, 2, 8, 16)]
    bench_gpu.PROBE_SIZES = [("lstm", "bf16", 3, 8, 16), ("gru", "fp32", 3, 8, 16)]
    bench_gpu.PROBE_T = (2, 3)
    bench_gpu.LIBRARY_POINTS = [("lstm", "fp32", 3, 2, 8, 16)]
    # the worker processes would import bench_gpu afresh, for CUDA: compile nothing up front
    bench_gpu.precompile = lambda *a: {"variants": 0, "workers": 0, "seconds": 0.0, "errors": []}
    bench_gpu.machine = lambda: {
        "gpu": "none (dry run)", "capability": "-", "sms": 132, "torch": torch.__version__, "cuda": None,
        "cudnn": None, "triton": "interpreter", "python": sys.version.split()[0], "cudnn_allow_tf32": True,
        "matmul_allow_tf32": False, "date_utc": "-",
    }  # fmt: skip
    # main() refuses TRITON_INTERPRET=1 (it would time the interpreter); here that is the point
    bench_gpu.os = types.SimpleNamespace(environ={}, cpu_count=os.cpu_count)
    extra = ",".join(bench_gpu.ALL_EXTRA_PATHS) if args.extra_paths == "all" else args.extra_paths
    sys.argv = [
        "bench_gpu.py", "--budget-s", "600", "--skip-fused", "--target-s", "0.001", "--max-reps", "3",
        "--extra-paths", extra, "--out", str(args.out),
    ]  # fmt: skip
    rc = bench_gpu.main()
    # gpu_check.sh's memory stage too: benchmarks/gpu_memory.py on two tiny points
    import gpu_memory

    gpu_memory.POINTS = [("lstm", "fp32", (3, 4, 8, 16)), ("gru", "bf16", (3, 4, 8, 16))]
    gpu_memory.machine = bench_gpu.machine
    sys.argv = ["gpu_memory.py", "--out", str(args.out.with_name("gpu_memory.json"))]
    return rc or gpu_memory.main()


if __name__ == "__main__":
    raise SystemExit(main())
