"""GPU training-step speed: the Triton kernels against torch.nn (cuDNN) and rnnkit's fused engine.

One measurement is forward + backward of one layer direction over the whole sequence, with random
upstream gradients on the output and the final state and gradients for the input, the initial
state and every parameter. Implementations are interleaved point by point; each is warmed up
(this also compiles the Triton kernels) and timed with CUDA events, reported as the median over
repeats in µs per time step, with the ratio to cuDNN in the same run and the issue's target.
Before timing, the Triton results are compared with cuDNN's (max error relative to the largest
magnitude, over the output, final states and every gradient) so a wrong kernel cannot look fast.

    PYTHONPATH=src python benchmarks/bench_gpu.py           # full run, < 5 min on one H100
    PYTHONPATH=src python benchmarks/bench_gpu.py --quick   # two points, a smoke check

Pass 1 times cuDNN and the Triton default path on every point; pass 2 adds the fused engine and
the other Triton paths (data for the ``engine="auto"`` policy and the path thresholds). Between
them a probe fits, at a few sizes, each call's time as ``T`` x per step + fixed per call, for
cuDNN, the default and the default replayed as CUDA graphs, with the host's time per call and,
at the longer length, a profiler timeline of one call (GPU busy time, kernels, idle gaps). A time
budget (``--budget-s``) skips what does not fit and says so. Writes ``benchmarks/results/gpu.json``
(``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

ISSUE_GRID = [  # (B, T, I, H), the GPU issue's table
    (1, 512, 256, 256),
    (16, 512, 256, 256),
    (64, 256, 512, 512),
    (32, 1024, 128, 128),
    (8, 2048, 64, 64),
    (256, 128, 1024, 1024),
]
LAYERS_GRID = [  # (B, T, I, H), the layers issue's grid (benchmarks/bench_cpu.py)
    (1, 256, 64, 64),
    (16, 256, 128, 128),
    (32, 128, 256, 256),
    (64, 64, 512, 512),
    (8, 1024, 32, 32),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEVICE = "cuda"  # a module constant so that the logic can be smoke-tested on the CPU interpreter


def target_ratio(cudnn_us_per_step: float, B: int, H: int) -> float:
    """The issue's target for Triton time / cuDNN time."""
    return 0.33 if cudnn_us_per_step >= 10.0 and H <= 512 and B <= 64 else 1.0


def machine() -> dict:
    props = torch.cuda.get_device_properties(0)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "gpu": torch.cuda.get_device_name(0),
        "capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "triton": triton_version,
        "python": platform.python_version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class Problem:
    """One layer direction at one size: a cuDNN module and the same weights as leaves for rnnkit."""

    def __init__(self, mode: str, B: int, T: int, I: int, H: int, dtype: torch.dtype, seed: int = 0):
        from rnnkit.engine.common import LayerWeights

        torch.manual_seed(seed)
        dev = DEVICE
        self.mode, self.shape, self.dtype = mode, (B, T, I, H), dtype
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[mode]
        self.module = cls(I, H).to(dev, dtype)
        self.x = torch.randn(T, B, I, device=dev, dtype=dtype, requires_grad=True)
        n_state = 2 if mode == "lstm" else 1
        self.state = tuple(
            (0.5 * torch.randn(B, H, device=dev, dtype=dtype)).requires_grad_() for _ in range(n_state)
        )
        p = dict(self.module.named_parameters())
        self.params = [p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]]
        self.weights = LayerWeights(*self.params)
        self.grad_out = torch.randn(T, B, H, device=dev, dtype=dtype)
        self.grad_state = tuple(torch.randn(B, H, device=dev, dtype=dtype) for _ in range(n_state))
        self.leaves = [self.x, *self.state, *self.params]

    def cudnn(self, backward: bool = True) -> list[torch.Tensor]:
        hx = (self.state[0][None], self.state[1][None]) if self.mode == "lstm" else self.state[0][None]
        out, fin = self.module(self.x, hx)
        fin = tuple(s[0] for s in fin) if self.mode == "lstm" else (fin[0],)
        return self._backward(out, fin) if backward else [out, *fin]

    def engine(self, run, backward: bool = True, **kw) -> list[torch.Tensor]:
        out, fin = run(self.mode, self.x, self.state, self.weights, None, "tanh", **kw)
        return self._backward(out, fin) if backward else [out, *fin]

    def _backward(self, out, fin) -> list[torch.Tensor]:
        grads = torch.autograd.grad([out, *fin], self.leaves, [self.grad_out, *self.grad_state])
        return [out, *fin, *grads]


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Worst over tensors of max |a - b| relative to max(1, max |b|)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = x.detach().double(), y.detach().double()
        d = (x - y).abs().max() / y.abs().max().clamp(min=1.0)
        worst = max(worst, float(d))
    return worst


def time_us(fn, target_s: float, max_reps: int) -> tuple[float, int]:
    """Median wall time of ``fn`` in µs over CUDA-event-timed repeats after two warm-up calls."""
    fn()
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - t0
    reps = int(max(3, min(max_reps, target_s / max(once, 1e-6))))
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times), reps


def peak_mib(fn) -> float:
    """Peak memory above what was allocated before one call, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    res = fn()
    torch.cuda.synchronize()
    del res
    return (torch.cuda.max_memory_allocated() - base) / 2**20


#: Where the fixed cost of a call is measured (after pass 1; ``--no-probe`` skips it): ``(mode,
#: dtype name, B, I, H)``, layers-grid sizes (their kernels are compiled for the grid anyway) whose
#: misses were put down to it (benchmarks/results/gpu_notes.md, session 8), at two short lengths.
PROBE_SIZES = [("lstm", "bf16", 64, 512, 512), ("lstm", "fp32", 16, 128, 128), ("gru", "fp32", 1, 64, 64)]
PROBE_T = (8, 64)
#: ``(mode, dtype, B, T, I, H)`` whose calls :func:`library_timelines` records, cuDNN's and the
#: default's: the fp32 ``H`` = 512 misses, where the step model's fit gives the library products
#: (input projection, weight gradients) 7-9.5 us a step, a rate of 57 TFLOP/s: what full fp32
#: products reach, not TF32 ones. The kernels' names say which ran (``tf32`` in cuBLAS's).
LIBRARY_POINTS = [("lstm", "fp32", 64, 256, 512, 512), ("gru", "fp32", 64, 256, 512, 512)]


def host_ms(fn, reps: int = 5) -> float:
    """Median host time of one call in ms, from its start until the host returns (its GPU work
    maybe still queued), after a warm-up: where this is near the call's whole time, the GPU waits
    on the host."""
    fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
        del res
    torch.cuda.synchronize()
    return 1e3 * statistics.median(times)


def timeline(fn, calls: int = 3) -> dict:
    """What the GPU does during ``calls`` calls of ``fn`` (``torch.profiler`` with CUPTI), per
    call: the wall time (the profiler's own overhead included), the time some kernel runs (the
    union of the kernels' intervals), the kernels launched, the longest idle gap between two,
    and the kernels by GPU time. Wall minus busy is the GPU waiting, on the host or between
    dependent launches; the kernels say which part of a call takes its GPU time."""
    from torch.profiler import ProfilerActivity, profile, supported_activities

    activities = [a for a in (ProfilerActivity.CPU, ProfilerActivity.CUDA) if a in supported_activities()]
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            res = fn()
            del res
        torch.cuda.synchronize()
    wall_ms = 1e3 * (time.perf_counter() - t0) / calls
    spans = [
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if getattr(e.device_type, "name", "") == "CUDA"
    ]
    return kernel_summary(spans, calls, wall_ms)


def kernel_summary(spans: list[tuple[float, float, str]], calls: int, wall_ms: float) -> dict:
    """:func:`timeline`'s figures from the kernels' ``(start, end, name)`` intervals in µs."""
    busy = gap = 0.0
    end = None
    by_name: dict[str, list[float]] = {}
    for start, stop, name in sorted(spans):
        if end is not None and start > end:
            gap = max(gap, start - end)
        busy += max(0.0, stop - (start if end is None else max(start, end)))
        end = stop if end is None else max(end, stop)
        by_name.setdefault(name[:80], []).append(stop - start)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:8]
    return {
        "wall_ms": wall_ms,
        "gpu_busy_ms": busy / 1e3 / calls,
        "kernels": len(spans) / calls,
        "max_gap_us": gap,
        "top": [{"kernel": k, "per_call": len(v) / calls, "us": sum(v) / calls} for k, v in top],
    }


def timeline_line(tl: dict) -> str:
    """One line of :func:`timeline`'s results."""
    top = ", ".join(f"{t['kernel'][:40]} {t['us']:.0f} us" for t in tl["top"][:4])
    return (
        f"wall {tl['wall_ms']:.3f} ms, GPU busy {tl['gpu_busy_ms']:.3f} ms, {tl['kernels']:.0f} kernels, "
        f"longest gap {tl['max_gap_us']:.0f} us; {top}"
    )


def graph_calls_since(before: dict) -> dict:
    """How the Triton engine's graph plans' calls ran (eager, captured, replayed) since
    ``before``, a copy of ``GRAPHS.stats``."""
    from rnnkit.engine import triton_engine as te

    return {k: v - before.get(k, 0) for k, v in te.GRAPHS.stats.items()}


def probe_fixed_cost(args, left) -> list[dict]:
    """Per size of :data:`PROBE_SIZES`, for cuDNN, the Triton default and the default replayed as
    CUDA graphs (``Plan.graph``): forward + backward at both :data:`PROBE_T` lengths, fitted as
    ``T`` x per step + fixed per call, and the host's share of a call (:func:`host_ms`). What
    session 8 inferred from pairs of grid points, measured: how much of a short call is its
    fixed cost, and how much of that a graph takes away (:func:`probe_timelines` adds, after all
    timing, what the GPU does in each call)."""
    from rnnkit.engine import triton_engine as te

    rows = []
    for mode, dname, B, I, H in PROBE_SIZES:
        dtype = DTYPES[dname]
        for name, plan in probe_impls(mode, B, H, dtype).items():
            head = {"mode": mode, "dtype": dname, "B": B, "I": I, "H": H, "impl": name}
            if left() <= 0:
                rows.append({**head, "skipped": True})
                continue
            row = {**head, "ms": {}, "host_ms": {}}
            before = dict(te.GRAPHS.stats)
            try:
                for T in PROBE_T:
                    prob = Problem(mode, B, T, I, H, dtype)
                    fn = probe_call(prob, plan)
                    us, _ = time_us(fn, args.target_s / 2, args.max_reps)
                    row["ms"][T] = us / 1000.0
                    row["host_ms"][T] = host_ms(fn)
                    del prob
            except Exception as e:  # a failing implementation is a result, not a crash of the run
                row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                continue
            t0, t1 = PROBE_T
            per_step = (row["ms"][t1] - row["ms"][t0]) / (t1 - t0)
            row["per_step_us"] = 1000.0 * per_step
            row["fixed_ms"] = row["ms"][t0] - t0 * per_step
            if plan is not None and plan.graph:
                row["graph_calls"] = graph_calls_since(before)
            rows.append(row)
            print("# fixed cost:", probe_line(row), flush=True)
    return rows


def probe_impls(mode: str, B: int, H: int, dtype: torch.dtype) -> dict:
    """The probe's implementations by name: cuDNN (``None``), the Triton default and the
    default replayed as CUDA graphs."""
    from rnnkit.engine import triton_engine as te

    default = te.plan_for(mode, B, H, dtype)
    return {
        "cudnn": None,
        f"triton:{default.path}": default,
        "triton:graph": dataclasses.replace(default, graph=True),
    }


def probe_call(prob: Problem, plan):
    """One forward + backward of ``prob``: cuDNN for ``plan`` ``None``, else the Triton engine."""
    from rnnkit.engine import triton_engine as te

    return prob.cudnn if plan is None else lambda: prob.engine(te.run, plan=plan)


def call_timeline(mode: str, dname: str, B: int, T: int, I: int, H: int, plan) -> dict:
    """:func:`timeline` of one forward + backward of a fresh problem (cuDNN for ``plan``
    ``None``), or ``{"error": ...}`` where the profiler fails (the times stand)."""
    prob = Problem(mode, B, T, I, H, DTYPES[dname])
    try:
        return timeline(probe_call(prob, plan))
    except Exception as e:  # the profiler may be unavailable
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def probe_timelines(probes: list[dict]) -> None:
    """Each probed call's :func:`timeline` at the longer length, into its row. Run after all
    timing: the profiler leaves CUPTI loaded, which slows later launches (pytorch#144455)."""
    # graph replays last: should CUPTI trip over them, the others are recorded
    for row in sorted(probes, key=lambda r: r["impl"] == "triton:graph"):
        if row.get("skipped") or "error" in row:
            continue
        plan = probe_impls(row["mode"], row["B"], row["H"], DTYPES[row["dtype"]])[row["impl"]]
        tl = call_timeline(row["mode"], row["dtype"], row["B"], PROBE_T[-1], row["I"], row["H"], plan)
        row["timeline"] = tl
        line = tl.get("error") or timeline_line(tl)
        print(
            f"# timeline: {row['mode']} {row['dtype']} B={row['B']} H={row['H']} {row['impl']}: {line}",
            flush=True,
        )


def library_timelines() -> list[dict]:
    """:func:`timeline` of one call of cuDNN and of the Triton default at each point of
    :data:`LIBRARY_POINTS`, with its kernels' names whole: what the library products take, and
    whether they run as TF32. After all timing (the profiler slows later launches)."""
    rows = []
    for mode, dname, B, T, I, H in LIBRARY_POINTS:
        impls = probe_impls(mode, B, H, DTYPES[dname])
        for name, plan in list(impls.items())[:2]:  # cuDNN and the default, not its graph
            row = {"mode": mode, "dtype": dname, "B": B, "T": T, "I": I, "H": H, "impl": name}
            row["timeline"] = call_timeline(mode, dname, B, T, I, H, plan)
            rows.append(row)
            print(f"# library: {library_line(row)}", flush=True)
    return rows


def library_line(row: dict) -> str:
    """One line of :func:`library_timelines`: the call's figures, then every top kernel by name."""
    tl = row["timeline"]
    head = f"{row['mode']} {row['dtype']} B={row['B']} T={row['T']} H={row['H']} {row['impl']}"
    if "error" in tl:
        return f"{head}: {tl['error']}"
    kernels = "; ".join(f"{t['kernel']} x{t['per_call']:.0f} {t['us']:.0f} us" for t in tl["top"])
    return f"{head}: wall {tl['wall_ms']:.3f} ms, GPU busy {tl['gpu_busy_ms']:.3f} ms; {kernels}"


def probe_line(row: dict) -> str:
    """One line of :func:`probe_fixed_cost`'s results."""
    head = f"{row['mode']} {row['dtype']} B={row['B']} I={row['I']} H={row['H']} {row['impl']}"
    if row.get("skipped") or "error" in row:
        return f"{head}: {'skipped for time' if row.get('skipped') else row['error']}"
    times = ", ".join(f"T={T} {ms:.3f} ms (host {row['host_ms'][T]:.3f})" for T, ms in row["ms"].items())
    return f"{head}: {times}; fit {row['per_step_us']:.2f} us/step + {row['fixed_ms']:.3f} ms/call"


def measure(prob: Problem, name: str, fn, args, forward=None) -> dict:
    """Time ``fn`` (forward + backward); peak memory of it and, given ``forward`` (the forward
    alone, its graph kept until the results are dropped), of the forward: where a peak comes from."""
    try:
        us, reps = time_us(fn, args.target_s, args.max_reps)
        T = prob.shape[1]
        res = {
            "impl": name,
            "us_per_step": us / T,
            "ms_total": us / 1000.0,
            "reps": reps,
            "peak_mib": peak_mib(fn),
        }
        if forward is not None:
            res["peak_fwd_mib"] = peak_mib(forward)
        return res
    except Exception as e:  # a failing implementation is a result, not a crash of the whole run
        return {"impl": name, "error": f"{type(e).__name__}: {e}"[:300]}


#: Alternatives pass 2 can time: the paths, and tuning variants (``split16``: split with
#: 16-column slices, twice the programs and L2 reads of the default's 32; ``persistent1``: the persistent
#: path's reduction loop not software-pipelined; ``resident2``: the resident path on 2 warps,
#: fewer threads to synchronise per step where H <= 64; ``*_packed``: LSTM/GRU gate slots loaded and
#: stored as one tile, ``Plan.packed_io``; ``persistent64``/``split64``: 64-row batch tiles where
#: B >= 64, whose products compile to Hopper's wgmma instead of mma.sync, benchmarks/results/gpu_notes.md;
#: ``w16``: float32 only, the forward reads W_hh and h in float16, ``Plan.half_w``, sized by ``w16_plan``;
#: ``graph``: the default plan with each call's launches replayed as a CUDA graph, ``Plan.graph``, which
#: takes the host's per-call work off the GPU's critical path; ``gemm_graph``: for B >= 64, the gemm path
#: (cuBLAS per step) replayed so, ``graph_plan``; timing's first warm-up call sees a call's key, the second
#: captures its graphs, the timed calls replay them; ``splitk``/``w16k``: the split plan, and w16's where it
#: splits, with each step's recurrent products in reduction slices so that no warp repeats another's,
#: ``Plan.k_slices``, ``k_sliced``; ``resident_wide``: the resident path on one warp per 8 hidden columns
#: (H = 64: 8 warps, 128: 16), half the instructions per thread a step, ``wide_resident``; ``bw4``/``w16bw4``:
#: the default, and w16, with a split backward on 4 warps instead of 8, ``Plan.bwd_warps``,
#: ``narrow_backward``; ``side``/``sidebw4``/``sidek``: the split plan (as ``splitk``'s), with that
#: backward, and ``splitk``'s plan (the backward sliced), with the forward's gate products as one 2-d
#: product in two halves of the reduction, ``Plan.side_gates``, ``side_by_side``); ``plain``: where the
#: default is a split plan, that plan without ``refined_split``'s changes (run 6's default).
ALL_EXTRA_PATHS = (
    "plain",
    "resident",
    "resident2",
    "resident_packed",
    "split",
    "split_packed",
    "split16",
    "split64",
    "gemm",
    "persistent",
    "persistent1",
    "persistent64",
    "stepwise",
    "w16",
    "graph",
    "gemm_graph",
    "splitk",
    "w16k",
    "resident_wide",
    "bw4",
    "w16bw4",
    "side",
    "sidebw4",
    "sidek",
)


def _variant_plan(name: str, mode: str, B: int, H: int, dtype: torch.dtype):
    from rnnkit.engine import triton_engine as te

    if name == "w16":
        return te.w16_plan(mode, B, H) if dtype == torch.float32 else None
    if name == "resident_wide":
        return te.wide_resident(mode, B, H, dtype)
    if name == "plain":  # the default's path without refined_split's changes (where it made some)
        plain = te.plan_for(mode, B, H, dtype, te.default_path(mode, B, H, dtype))
        return plain if plain != te.plan_for(mode, B, H, dtype) else None
    if name == "w16bw4":
        plan = _variant_plan("w16", mode, B, H, dtype)
        return None if plan is None else te.narrow_backward(plan, mode, B, H, dtype)
    if name == "bw4":  # on the plain plan: the LSTM's default has its forward side by side too
        plan = _variant_plan("plain", mode, B, H, dtype) or te.plan_for(mode, B, H, dtype)
        return te.narrow_backward(plan, mode, B, H, dtype)
    if name in ("side", "sidebw4", "sidek"):
        plan = _variant_plan("splitk" if name == "sidek" else "split_default", mode, B, H, dtype)
        plan = te.side_by_side(plan, mode)
        if name == "sidebw4" and plan is not None:
            return te.narrow_backward(plan, mode, B, H, dtype)
        return plan
    if name == "split_default":  # the split plan where one fits (splitk's and side's), else None
        split = te.split_plan(mode, B, H, dtype) is not None
        return te.plan_for(mode, B, H, dtype, "split") if split else None
    if name in ("splitk", "w16k"):
        plan = _variant_plan("w16" if name == "w16k" else "split_default", mode, B, H, dtype)
        if plan is None or plan.path != "split":
            return None
        sliced = te.k_sliced(plan, H)
        return sliced if sliced.k_slices > 1 else None
    if name == "graph":
        return dataclasses.replace(te.plan_for(mode, B, H, dtype), graph=True)
    if name == "gemm_graph":  # where a step's products are big enough for cuBLAS to matter
        return te.graph_plan(mode, B, H, dtype) if B >= 64 else None
    if name == "split16":
        return te.split_plan(mode, B, H, dtype, block_h=16)
    if name == "persistent1":
        return dataclasses.replace(te.plan_for(mode, B, H, dtype, "persistent"), num_stages=1)
    if name in ("resident_packed", "split_packed"):
        plan = _variant_plan(name.removesuffix("_packed"), mode, B, H, dtype)
        return dataclasses.replace(plan, packed_io=True) if plan is not None and mode != "rnn" else None
    if name in ("persistent64", "split64") and B < 64:
        return None
    if name == "persistent64":
        return dataclasses.replace(te.plan_for(mode, B, H, dtype, "persistent"), block_b=64)
    if name == "split64":
        return te.split_plan(mode, B, H, dtype, block_b=64)
    if name == "resident2":
        plan = te.plan_for(mode, B, H, dtype, "resident")
        return dataclasses.replace(plan, num_warps=2) if plan.block_h <= 64 else None
    if name == "resident" and te.plan_for(mode, B, H, dtype, name).block_h > 128:
        return None  # W_hh cannot stay in one program
    if name == "split":
        return te.split_plan(mode, B, H, dtype)  # None where a slice does not fit on chip
    return te.plan_for(mode, B, H, dtype, name)


def triton_impls(mode: str, B: int, H: int, dtype: torch.dtype, extra: tuple[str, ...]):
    """``(name, plan, is_default)`` for the default plan and each alternative of ``extra``."""
    from rnnkit.engine import triton_engine as te

    default = te.plan_for(mode, B, H, dtype)
    yield f"triton:{default.path}", default, True
    seen = [default]
    for name in extra:
        plan = _variant_plan(name, mode, B, H, dtype)
        if plan is not None and plan not in seen:  # each distinct plan once
            seen.append(plan)
            yield f"triton:{name}", plan, False


def _warm(job: tuple) -> tuple:
    """Compile one plan's kernels by running it on a tiny problem (in a worker process); Triton's
    on-disk cache then serves the main process. Only ``H`` and the plan select the variant."""
    mode, dname, H, plan_fields, allow_tf32, device = job
    t0 = time.perf_counter()
    try:
        torch.backends.cudnn.allow_tf32 = allow_tf32
        from rnnkit.engine import triton_engine as te
        from rnnkit.engine.common import LayerWeights

        dtype, G = DTYPES[dname], te.NUM_GATES[mode] * H
        B, T, I = 3, 2, 16

        def leaf(*shape):
            return (0.1 * torch.randn(*shape, device=device, dtype=dtype)).requires_grad_()

        x, state = leaf(T, B, I), tuple(leaf(B, H) for _ in range(2 if mode == "lstm" else 1))
        weights = LayerWeights(leaf(G, I), leaf(G, H), leaf(G), leaf(G))
        out, fin = te.run(mode, x, state, weights, plan=te.Plan(**plan_fields))
        torch.autograd.grad(
            [out, *fin], [x, *state, *weights], [torch.ones_like(out), *map(torch.ones_like, fin)]
        )
        if device == "cuda":
            torch.cuda.synchronize()
        return job, round(time.perf_counter() - t0, 1), None
    except Exception as e:
        return job, round(time.perf_counter() - t0, 1), f"{type(e).__name__}: {e}"[:300]


def precompile(points: list, extra_paths: tuple[str, ...], args) -> dict:
    """Compile every Triton variant the run will use, in parallel worker processes."""
    from rnnkit.engine import triton_engine as te

    jobs = {}
    for mode, dname, (B, _T, _I, H) in points:
        for _name, plan, _default in triton_impls(mode, B, H, DTYPES[dname], extra_paths):
            path = plan.path
            same = "persistent" if path == "stepwise" else path
            # the split kernels hold all of H (padded to a power of two) as one tile
            hp = te._hp(H) if path == "split" else None
            # graph plans launch the kernels of their eager twins
            variant = (mode, dname, H % 16 == 0, hp, dataclasses.replace(plan, path=same, graph=False))
            fields = dataclasses.asdict(plan)
            jobs.setdefault(variant, (mode, dname, H, fields, torch.backends.cudnn.allow_tf32, DEVICE))
    workers = args.workers or max(1, min(len(jobs), (os.cpu_count() or 2) - 2, 12))
    t0 = time.perf_counter()
    print(f"# compiling {len(jobs)} kernel variants in {workers} processes ...", flush=True)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        done = pool.map(_warm, list(jobs.values()), chunksize=1)
    errors = [f"{job[0]} {job[1]} H={job[2]} {job[3]['path']}: {err}" for job, _, err in done if err]
    for e in errors:
        print("# compile error:", e)
    took = round(time.perf_counter() - t0, 1)
    print(f"# compiled in {took} s (slowest job {max((s for _, s, _ in done), default=0)} s)", flush=True)
    return {"variants": len(jobs), "workers": workers, "seconds": took, "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two points, one mode: a smoke check")
    ap.add_argument("--budget-s", type=float, default=250.0, help="stop starting new work after this")
    ap.add_argument("--target-s", type=float, default=0.25, help="time spent timing one implementation")
    ap.add_argument("--max-reps", type=int, default=25)
    ap.add_argument(
        "--no-tf32",
        action="store_true",
        help="fp32 without TF32 in cuDNN and Triton (torch.backends.cudnn.allow_tf32)",
    )
    ap.add_argument("--workers", type=int, default=0, help="processes compiling kernels up front (0: auto)")
    ap.add_argument(
        "--extra-paths",
        default=",".join(ALL_EXTRA_PATHS),
        help="Triton paths pass 2 times besides the default, comma-separated ('' for none)",
    )
    ap.add_argument("--skip-fused", action="store_true", help="pass 2 leaves out rnnkit's fused engine")
    ap.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="skip the per-call fixed-cost probe between the passes (PROBE_SIZES at PROBE_T)",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    ap.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="no timing: write the Markdown table of an earlier run's JSON next to it (.md)",
    )
    args = ap.parse_args()

    if args.render is not None:
        payload = json.loads(args.render.read_text())
        md = args.render.with_suffix(".md")
        md.write_text(to_markdown(payload))
        print(f"wrote {md}")
        return 0
    if not torch.cuda.is_available():
        print("bench_gpu: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured.")
        return 2
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("bench_gpu: TRITON_INTERPRET=1 would time the CPU interpreter; unset it.")
        return 2
    try:
        from rnnkit.engine import triton_engine as te
    except ImportError as e:
        print(f"bench_gpu: cannot import the Triton engine ({e}); is triton installed?")
        return 2
    try:
        from rnnkit.engine import fused
    except ImportError:
        fused = None
    from rnnkit.engine import native

    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    extra_paths = tuple(p for p in args.extra_paths.split(",") if p)
    unknown = set(extra_paths) - set(ALL_EXTRA_PATHS)
    if unknown:
        print(f"bench_gpu: unknown --extra-paths {sorted(unknown)}; expected some of {ALL_EXTRA_PATHS}")
        return 2

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    points = []  # (mode, dtype name, (B, T, I, H)) in priority order
    if args.quick:
        points = [("lstm", "bf16", (16, 128, 256, 256)), ("gru", "fp32", (8, 256, 64, 64))]
    else:
        for grid, modes in ((ISSUE_GRID, ("lstm", "gru")), (LAYERS_GRID, ("lstm", "gru", "rnn"))):
            for shape in grid:
                for mode in modes:
                    for dname in DTYPES:
                        points.append((mode, dname, shape))

    info = machine()
    info["compile"] = precompile(points, extra_paths, args)
    print(
        f"# {info['gpu']} (sm {info['capability']}), torch {info['torch']}, cuDNN {info['cudnn']}, "
        f"triton {info['triton']}; tf32: cudnn {info['cudnn_allow_tf32']}, matmul {info['matmul_allow_tf32']}"
    )
    rows: dict[tuple, dict] = {}
    skipped = []
    probes: list[dict] = []
    library: list[dict] = []

    def save() -> dict:
        """Write what is measured so far (after every point: a killed run still leaves its data)."""
        results = list(rows.values())
        for row in results:
            _summarise(row)
        payload = {
            "command": "PYTHONPATH=src python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:]),
            "machine": info,
            "unit": "µs per time step, forward + backward, median of repeats",
            "elapsed_s": round(time.perf_counter() - started, 1),
            "rows": results,
            "skipped_for_time": skipped,
            "fixed_cost": probes,
            "library": library,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, default=str))
        return payload

    for pass_no in (1, 2):
        if pass_no == 2 and args.probe:
            probes += probe_fixed_cost(args, left)
            save()
        for mode, dname, shape in points:
            B, T, I, H = shape
            if left() <= 0:
                skipped.append({"pass": pass_no, "mode": mode, "dtype": dname, "shape": shape})
                continue
            dtype = DTYPES[dname]
            key = (mode, dname, shape)
            row = rows.setdefault(
                key, {"mode": mode, "dtype": dname, "B": B, "T": T, "I": I, "H": H, "impls": []}
            )
            prob = Problem(mode, B, T, I, H, dtype)
            if pass_no == 1:
                fwd = lambda p=prob: p.cudnn(backward=False)  # noqa: E731
                row["impls"].append(measure(prob, "cudnn", prob.cudnn, args, fwd))
                expected = prob.cudnn()
                if native.preferred(mode, B, H, dtype):  # what auto runs here: cuDNN through rnnkit
                    res = {"impl": "native", "rel_err_vs_cudnn": rel_err(prob.engine(native.run), expected)}
                    res.update(measure(prob, "native", lambda p=prob: p.engine(native.run), args))
                    row["impls"].append(res)
            else:
                expected = None
                if args.skip_fused:
                    pass
                elif fused is not None and fused.supports(mode, prob.x, prob.weights):
                    row["impls"].append(measure(prob, "fused", lambda p=prob: p.engine(fused.run), args))
                else:
                    row["impls"].append({"impl": "fused", "error": f"unsupported for {dname} on CUDA"})
            extra = extra_paths if pass_no == 2 else ()
            for name, plan, is_default in triton_impls(mode, B, H, dtype, extra):
                if is_default != (pass_no == 1) or left() <= 0:
                    continue

                def fn(p=prob, plan=plan):
                    return p.engine(te.run, plan=plan)

                res = {"impl": name}
                try:
                    got = fn()  # compiles
                    res["rel_err_vs_cudnn"] = rel_err(got, expected if expected is not None else prob.cudnn())
                    del got
                except Exception as e:
                    res["error"] = f"{type(e).__name__}: {e}"[:300]
                if "error" not in res:
                    fwd = lambda p=prob, plan=plan: p.engine(te.run, backward=False, plan=plan)  # noqa: E731
                    before = dict(te.GRAPHS.stats)
                    res.update(measure(prob, name, fn, args, fwd if is_default else None))
                    if plan.graph:  # whether the timed calls replayed (they should, after warm-up)
                        res["graph_calls"] = graph_calls_since(before)
                res["plan"] = dataclasses.asdict(plan)
                res["default"] = is_default
                row["impls"].append(res)
            del prob, expected
            torch.cuda.empty_cache()
            _print_row(row)
            save()

    if probes:  # last: the profiler would slow whatever ran after it
        save()
        probe_timelines(probes)
        save()
        library += library_timelines()
    payload = save()
    args.out.with_suffix(".md").write_text(to_markdown(payload))
    _print_table(payload["rows"])
    for line in variant_summary(payload["rows"]):
        print(line)
    for line in model_lines(payload["rows"], payload["machine"].get("triton")):
        print(f"# model: {line}")
    print(f"\nwrote {args.out} ({payload['elapsed_s']} s; {len(skipped)} point-passes skipped for time)")
    return 0


def _impl(row: dict, name: str) -> dict | None:
    return next((r for r in row["impls"] if r["impl"] == name and "us_per_step" in r), None)


def _summarise(row: dict) -> None:
    cudnn = _impl(row, "cudnn")
    tri = [r for r in row["impls"] if r["impl"].startswith("triton:") and "us_per_step" in r]
    default = next((r for r in tri if r.get("default")), None)
    best = min(tri, key=lambda r: r["us_per_step"], default=None)
    if cudnn is None or default is None:
        return
    row["target_ratio"] = target_ratio(cudnn["us_per_step"], row["B"], row["H"])
    row["ratio_default"] = default["us_per_step"] / cudnn["us_per_step"]
    row["ratio_best"] = best["us_per_step"] / cudnn["us_per_step"]
    auto = _impl(row, "native") or default  # what engine="auto" runs here (native.preferred)
    row["ratio_auto"] = auto["us_per_step"] / cudnn["us_per_step"]
    row["best_triton"] = best["impl"]
    row["met_target"] = row["ratio_default"] <= row["target_ratio"]
    row["peak_mib_ratio"] = default["peak_mib"] / max(cudnn["peak_mib"], 1e-9)


def _fmt(r: dict | None) -> str:
    return f"{r['us_per_step']:9.2f}" if r else f"{'-':>9}"


def _print_row(row: dict) -> None:
    parts = []
    for r in row["impls"]:
        if "us_per_step" in r:
            parts.append(f"{r['impl']}={r['us_per_step']:.2f}us")
        else:
            parts.append(f"{r['impl']}=ERR")
        if "rel_err_vs_cudnn" in r:
            parts[-1] += f"(err {r['rel_err_vs_cudnn']:.1e})"
    print(
        f"{row['mode']:4} {row['dtype']} B={row['B']} T={row['T']} I={row['I']} H={row['H']}: "
        + ", ".join(parts)
    )


def _print_table(rows: list[dict]) -> None:
    head = (
        f"\n{'mode':4} {'dt':4} {'B':>4} {'T':>5} {'I':>5} {'H':>5} | {'cudnn':>9} {'fused':>9} "
        f"{'triton':>9} {'best':>9} | {'ratio':>6} {'target':>6} {'met':>4} | {'mem/cudnn':>9} {'err':>8}"
        " path"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        tri = [r for r in row["impls"] if r["impl"].startswith("triton:")]
        default = next((r for r in tri if r.get("default")), None)
        timed = [r for r in tri if "us_per_step" in r]
        best = min(timed, key=lambda r: r["us_per_step"], default=None)
        ratio = f"{row['ratio_default']:6.2f}" if "ratio_default" in row else f"{'-':>6}"
        target = f"{row['target_ratio']:6.2f}" if "target_ratio" in row else f"{'-':>6}"
        met = ("yes" if row["met_target"] else "NO") if "met_target" in row else "-"
        mem = f"{row['peak_mib_ratio']:9.2f}" if "peak_mib_ratio" in row else f"{'-':>9}"
        err = (
            f"{default['rel_err_vs_cudnn']:8.1e}"
            if default and "rel_err_vs_cudnn" in default
            else f"{'ERR':>8}"
        )
        path = (default["impl"].split(":")[1] if default else "-") + (
            f" (best {best['impl'].split(':')[1]})" if best and best is not default else ""
        )
        timed_default = default if default and "us_per_step" in default else None
        print(
            f"{row['mode']:4} {row['dtype']:4} {row['B']:4d} {row['T']:5d} {row['I']:5d} {row['H']:5d} | "
            f"{_fmt(_impl(row, 'cudnn'))} {_fmt(_impl(row, 'fused'))} {_fmt(timed_default)} "
            f"{_fmt(best)} | {ratio} {target} {met:>4} | {mem} {err} {path}"
        )


#: the step model's predictions for the next run (benchmarks/step_model.py --predict)
PREDICTED = Path(__file__).parent / "results" / "step_model_predicted.json"


def model_check(rows: list[dict], predicted: list[dict]) -> list[str]:
    """How this run's Triton times compare with the step model's predictions
    (``benchmarks/step_model.py --predict``), one line per predicted variant (``default``: the
    default plan): the median error of its predicted µs per step over the points both have, and
    its worst point. Predictions are in µs, not ratios: cuDNN's times move between runs."""
    point = ("mode", "dtype", "B", "T", "H")
    by_point = {tuple(p[k] for k in point): p for p in predicted}
    errors: dict[str, list[tuple[float, str]]] = {}
    for row in rows:
        guess = by_point.get(tuple(row[k] for k in point))
        if guess is None:
            continue
        where = f"{row['mode']} {row['dtype']} B={row['B']} T={row['T']} H={row['H']}"
        for r in row["impls"]:
            if not r["impl"].startswith("triton:") or "us_per_step" not in r:
                continue
            name = "default" if r.get("default") else r["impl"].removeprefix("triton:")
            if name in guess["variants"]:
                err = guess["variants"][name]["us"] / r["us_per_step"] - 1
                errors.setdefault(name, []).append((err, where))
    lines = []
    for name, errs in errors.items():
        worst = max(errs, key=lambda e: abs(e[0]))
        median = statistics.median(abs(e) for e, _ in errs)
        lines.append(
            f"{name}: predicted within {median:.0%} (median over {len(errs)} points); "
            f"worst {worst[1]}: {worst[0]:+.0%}"
        )
    return lines


def model_lines(rows: list[dict], triton_version: str | None = None) -> list[str]:
    """:func:`model_check` against the predictions in the repository (:data:`PREDICTED`), or
    nothing without them; first, which Triton's machine code they were modelled on against this
    run's (3.6 and 3.9 compile the k-sliced kernels to twice the cycles apart)."""
    if not PREDICTED.exists():
        return []
    shipped = json.loads(PREDICTED.read_text())
    lines = model_check(rows, shipped["predicted"])
    if lines and "compiled_with" in shipped:
        lines.insert(0, f"modelled on {shipped['compiled_with']}'s code; this run's Triton: {triton_version}")
    return lines


def variant_summary(rows: list[dict]) -> list[str]:
    """One line per Triton variant timed beside the default: at how many points it beat the
    default, its median time relative to the default's, and at how many points where the default
    misses the issue's target it would meet it (what the next default should be decided on), its
    largest error against cuDNN (a variant is only a candidate if that is the default's order);
    for graph variants, how their calls ran (the first two of each timing are warm-up: one
    eager, one captured; the timed ones should all replay)."""
    stats: dict[str, dict] = {}
    for row in rows:
        if "met_target" not in row:  # _summarise found no timed default or cuDNN
            continue
        default = next(r for r in row["impls"] if r.get("default") and "us_per_step" in r)
        cudnn = _impl(row, "cudnn")
        for r in row["impls"]:
            if not r["impl"].startswith("triton:") or r.get("default") or "us_per_step" not in r:
                continue
            st = stats.setdefault(
                r["impl"], {"points": 0, "faster": 0, "rel": [], "rescued": 0, "calls": Counter(), "err": 0.0}
            )
            st["err"] = max(st["err"], r.get("rel_err_vs_cudnn", float("nan")))
            rel = r["us_per_step"] / default["us_per_step"]
            st["points"] += 1
            st["faster"] += rel < 1.0
            st["rel"].append(rel)
            meets = r["us_per_step"] / cudnn["us_per_step"] <= row["target_ratio"]
            st["rescued"] += meets and not row["met_target"]
            st["calls"].update(r.get("graph_calls", {}))
    return [
        f"{name.removeprefix('triton:')}: faster than the default at {st['faster']} of {st['points']} "
        f"points, median time {statistics.median(st['rel']):.2f}x the default's, meets the target at "
        f"{st['rescued']} points where the default misses it, largest error against cuDNN {st['err']:.1e}"
        + (
            "; calls (warm-up included): " + ", ".join(f"{n} {how}" for how, n in sorted(st["calls"].items()))
            if st["calls"]
            else ""
        )
        for name, st in stats.items()
    ]


def to_markdown(payload: dict) -> str:
    """The run as a Markdown table: every implementation timed, the default's ratio to cuDNN
    against the issue's target, peak memory against cuDNN's."""
    m = payload["machine"]
    names = []
    for row in payload["rows"]:
        for r in row["impls"]:
            if r["impl"] not in names and r["impl"] != "cudnn":
                names.append(r["impl"])
    lines = [
        "# GPU training step: rnnkit Triton kernels vs torch.nn (cuDNN)\n",
        f"Command: `{payload['command']}`  ",
        f"Machine: {m['gpu']} (sm {m['capability']}, {m['sms']} SMs), torch {m['torch']}, CUDA {m['cuda']}, "
        f"cuDNN {m['cudnn']}, Triton {m['triton']}, Python {m['python']}; "
        f"cudnn.allow_tf32 {m['cudnn_allow_tf32']}; {m['date_utc']}  ",
        f'Unit: {payload["unit"]}. `default` is the path `engine="triton"` picks; '
        "ratio = default / cuDNN; target from the GPU issue (0.33 where cuDNN takes >= 10 us/step "
        "with H <= 512 and B <= 64, else 1.0); mem = peak memory / cuDNN's; err = max error of the "
        "default against cuDNN over outputs, final state and every gradient; auto = what "
        '`engine="auto"` runs on CUDA by its rule (`native` = cuDNN through rnnkit, '
        "`rnnkit.engine.native.preferred`) and, where timed, its time / cuDNN's.\n",
        "| mode | dtype | B | T | I | H | cudnn | "
        + " | ".join(n.replace("triton:", "") for n in names)
        + " | default | ratio | target | met | mem | err | auto |",
        "|" + "---|" * (14 + len(names)),
    ]
    from rnnkit.engine import native

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for row in payload["rows"]:
        by = {r["impl"]: r for r in row["impls"]}
        cells = []
        for n in ["cudnn", *names]:
            r = by.get(n)
            cells.append(f"{r['us_per_step']:.2f}" if r and "us_per_step" in r else ("err" if r else ""))
        default = next((r for r in row["impls"] if r.get("default")), None)
        path = default["impl"].replace("triton:", "") if default else "-"
        ratio = f"{row['ratio_default']:.2f}" if "ratio_default" in row else "-"
        target = f"{row['target_ratio']:.2f}" if "target_ratio" in row else "-"
        met = ("yes" if row["met_target"] else "**no**") if "met_target" in row else "-"
        mem = f"{row['peak_mib_ratio']:.2f}" if "peak_mib_ratio" in row else "-"
        err = f"{default['rel_err_vs_cudnn']:.1e}" if default and "rel_err_vs_cudnn" in default else "-"
        lines.append(
            f"| {row['mode']} | {row['dtype']} | {row['B']} | {row['T']} | {row['I']} | {row['H']} | "
            + " | ".join(cells)
            + f" | {path} | {ratio} | {target} | {met} | {mem} | {err} | "
            + (
                "native"
                if native.preferred(row["mode"], row["B"], row["H"], dtypes[row["dtype"]])
                else "triton"
            )
            + (f" {row['ratio_auto']:.2f}" if "ratio_auto" in row else "")
            + " |"
        )
    summary = variant_summary(payload["rows"])
    if summary:
        lines += ["", "Variants against the default:", ""] + [f"- {line}" for line in summary]
    checked = model_lines(payload["rows"], payload.get("machine", {}).get("triton"))
    if checked:
        lines += ["", "The step model's predictions (`benchmarks/step_model.py`) against this run:", ""]
        lines += [f"- {line}" for line in checked]
    if payload.get("fixed_cost"):
        lines += [
            "",
            "Fixed cost per call (forward + backward at two lengths, fitted as T x per step + fixed; "
            "host: the host's time until the call returns):",
            "",
        ] + [f"- {probe_line(row)}" for row in payload["fixed_cost"]]
        timelines = [row for row in payload["fixed_cost"] if "timeline" in row]
        lines += ["", "What the GPU does in one call (torch.profiler, its overhead in the wall time):", ""]
        for row in timelines:
            tl = row["timeline"]
            head = f"{row['mode']} {row['dtype']} B={row['B']} T={PROBE_T[-1]} H={row['H']} {row['impl']}"
            lines.append(f"- {head}: {tl.get('error') or timeline_line(tl)}")
    if payload.get("library"):
        lines += ["", "The library products at fp32 H = 512 (one call's top kernels, whole names):", ""]
        lines += [f"- {library_line(row)}" for row in payload["library"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
