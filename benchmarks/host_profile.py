"""Where a Triton-engine call's host time goes, with the real launches: cProfile over eager calls.

Run 6's probe put the split path's fixed cost at about 1.5 ms a forward + backward on the lent
H100, most of it the host's (``bench_gpu.py``'s ``host_ms``), while ``bench_host.py``, with every
kernel a no-op on the CPU VM, finds about 0.4 ms of host work in the same call. The rest is
spent in the real launches: Triton's launcher, the library products, the driver. This runs the
default plan's forward + backward ``--calls`` times at a short ``T`` (so the GPU, busy well
under the host's time, never holds the host up), synchronising once at the end, under cProfile,
and reports per point:

- ``host_us``: wall time per call, the host's (the calls queue faster than the GPU drains them
  only where the GPU is the slower one, which a short ``T`` rules out);
- ``top``: the functions with the most own time per call (cProfile's ``tottime``), with where
  they live (``triton``, ``torch``, ``rnnkit``, or a builtin such as a kernel launch);
- ``by_area``: own time per call summed by where it lives.

And, once, ``launch_us``: the host time of one launch, without cProfile (median of repeats of
``--launches`` launches, the GPU kept ahead of nothing: each launch's work is empty): a torch op
(``torch.add`` into a preallocated tensor), a Triton kernel of one argument, one of the split
kernels' size (14 pointers, 8 integers, 4 compile-time switches), and that one launched
cooperatively as the barrier paths are. Whether Triton's own launch path, or a cooperative
launch, is what a call's launches cost decides the next lever (PyTorch Inductor, for one, calls
its compiled Triton kernels' launchers itself, not through Triton's ``JITFunction.run``).

On the CPU (no CUDA) the kernels run in Triton's interpreter: the numbers mean nothing there, and
the run only checks the script (``tests/test_benchmarks.py``).

    PYTHONPATH=src python benchmarks/host_profile.py --out benchmarks/results/host_gpu.json
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import pstats
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

import bench_gpu  # noqa: E402
from bench_gpu import DTYPES, Problem  # noqa: E402

if not torch.cuda.is_available():
    bench_gpu.DEVICE = "cpu"  # Problem's tensors

#: ``(mode, dtype name, B, T, I, H)``: run 6's fixed-cost probe points, at T = 8
POINTS = (
    ("lstm", "bf16", 64, 8, 512, 512),  # split
    ("lstm", "fp32", 16, 8, 128, 128),  # split
    ("gru", "fp32", 1, 8, 64, 64),  # resident
)


def _area(filename: str) -> str:
    """Where a profiled function lives, by its file."""
    if filename == "~" or filename.startswith("<"):
        return "builtin"  # C functions: kernel launches, torch ops, the driver
    for area in ("triton", "torch", "rnnkit"):
        if f"{os.sep}{area}{os.sep}" in filename:
            return area
    return "other"


@triton.jit
def _one_arg_kernel(p0):
    if tl.program_id(0) < 0:  # never: the launch alone is timed
        tl.store(p0, 0.0)


@triton.jit
def _split_sized_kernel(
    p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13,
    n0, n1, n2, n3, n4, n5, n6, n7,
    A: tl.constexpr, B: tl.constexpr, C: tl.constexpr, D: tl.constexpr,
):  # fmt: skip
    if tl.program_id(0) < n0 - n1:  # never (n0 == n1): the launch alone is timed
        tl.store(p0, (n2 + n3 + n4 + n5 + n6 + n7).to(tl.float32))


def launch_costs(launches: int, rounds: int = 5) -> dict:
    """Host µs of one launch of each kind (see the module docstring), the median of ``rounds``
    timings of ``launches`` launches each, after warm-up (which compiles)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    a, b, c = (torch.zeros(16, device=dev) for _ in range(3))
    ptrs = [torch.zeros(16, device=dev) for _ in range(14)]
    ints = (7, 7, 1, 2, 3, 4, 5, 6)
    switches = dict(A=16, B=32, C=True, D="ieee")
    kinds = {
        "torch_add": lambda: torch.add(a, b, out=c),
        "triton_1_arg": lambda: _one_arg_kernel[(1,)](a),
        "triton_split_sized": lambda: _split_sized_kernel[(1,)](*ptrs, *ints, **switches),
    }
    if dev == "cuda":  # the barrier paths' launch; the interpreter has no cooperative launches
        kinds["triton_split_sized_cooperative"] = lambda: _split_sized_kernel[(1,)](
            *ptrs, *ints, **switches, launch_cooperative_grid=True
        )
    costs = {}
    for name, launch in kinds.items():
        for _ in range(3):
            launch()
        sync()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(launches):
                launch()
            times.append((time.perf_counter() - start) / launches)
            sync()
        costs[name] = round(1e6 * sorted(times)[len(times) // 2], 2)
    return costs


def profile_point(mode: str, dname: str, B: int, T: int, I: int, H: int, calls: int, top: int) -> dict:
    """The default plan's forward + backward ``calls`` times under cProfile, after warm-up."""
    from rnnkit.engine import triton_engine as te

    p = Problem(mode, B, T, I, H, DTYPES[dname])
    plan = te.plan_for(mode, B, H, DTYPES[dname])
    for _ in range(3):  # compiles, fills the allocator's cache
        p.engine(te.run, plan=plan)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(calls):
        p.engine(te.run, plan=plan)
    profiler.disable()
    host = time.perf_counter() - start
    sync()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    rows, by_area = [], {}
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in stats.items():
        area = _area(filename)
        by_area[area] = by_area.get(area, 0.0) + tottime
        where = name if area == "builtin" else f"{Path(filename).name}:{line} {name}"
        rows.append(
            {
                "function": where,
                "area": area,
                "calls_per_call": round(ncalls / calls, 2),
                "own_us": round(1e6 * tottime / calls, 1),
                "cum_us": round(1e6 * cumtime / calls, 1),
            }
        )
    rows.sort(key=lambda r: -r["own_us"])
    return {
        "mode": mode,
        "dtype": dname,
        "B": B,
        "T": T,
        "I": I,
        "H": H,
        "plan": dataclasses.asdict(plan),
        "calls": calls,
        "host_us": round(1e6 * host / calls, 1),  # cProfile's own overhead included
        "by_area": {k: round(1e6 * v / calls, 1) for k, v in sorted(by_area.items(), key=lambda kv: -kv[1])},
        "top": rows[:top],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=50, help="profiled forward + backward calls a point")
    ap.add_argument("--top", type=int, default=25, help="functions listed a point")
    ap.add_argument(
        "--points",
        default=None,
        help="';'-separated 'mode dtype B T I H' (default: run 6's probe points at T = 8)",
    )
    ap.add_argument("--launches", type=int, default=200, help="launches a timing of launch_us")
    ap.add_argument("--out", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)
    points = POINTS
    if args.points:
        points = []
        for spec in args.points.split(";"):
            fields = spec.split()
            if len(fields) != 6 or fields[1] not in DTYPES:
                ap.error(
                    f"--points: expected 'mode dtype B T I H' with dtype in {list(DTYPES)}, got {spec!r}"
                )
            points.append((fields[0], fields[1], *map(int, fields[2:])))
    launch_us = launch_costs(args.launches)
    print(f"host us a launch: {launch_us}")
    results = []
    for point in points:
        res = profile_point(*point, calls=args.calls, top=args.top)
        results.append(res)
        mode, dname, B, T, I, H = point
        head = f"{mode} {dname} B={B} T={T} I={I} H={H}"
        print(f"{head}: host {res['host_us']:.0f} us a call; own time by area {res['by_area']}")
        for r in res["top"]:
            calls = f"x{r['calls_per_call']}"
            print(f"    {r['own_us']:8.1f} us own {r['cum_us']:8.1f} cum {calls:>8} {r['function']}")
    if args.out:
        doc = {
            "command": "PYTHONPATH=src python benchmarks/host_profile.py " + " ".join(argv or sys.argv[1:]),
            "machine": bench_gpu.machine() if torch.cuda.is_available() else {"cpu": "interpreter"},
            "unit": "µs of host time per forward + backward call, under cProfile",
            "launch_us": launch_us,
            "points": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
