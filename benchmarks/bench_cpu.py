"""CPU training-step speed: rnnkit (engine="auto", and "fused" if different) against torch.nn.

For RNN, LSTM and GRU in float32 on the grid (B, T, I, H) below, one measurement is a whole
training step of one layer: forward, ``loss = output.sum() + h_n.sum()`` (``+ c_n.sum()``),
backward (input and every parameter need gradients). Implementations are interleaved within
each repeat so that load from other processes hits all of them alike; each is warmed up first
(this also compiles Numba kernels) and reported as the median over repeats, in µs per time step,
with the ratio to torch.nn. For H >= 256 it also reports achieved GFLOP/s against a GEMM peak
measured in the same run (a large ``torch.mm``), since there the floor is matrix-multiply time.

    python benchmarks/bench_cpu.py            # full run (< 5 min on 2 cores)
    python benchmarks/bench_cpu.py --quick    # fewer repeats, for a smoke check
    python benchmarks/bench_cpu.py --threads 1 --clock process   # load-robust proxy, see below

On a machine shared with other jobs, wall-clock ratios mostly measure how badly torch's
2-thread OpenMP synchronisation suffers from preemption. ``--threads 1 --clock process`` times
single-threaded CPU seconds of this process instead: a per-core efficiency comparison that other
load barely moves (the official numbers are wall clock at the default thread count, quiet machine).

Writes ``benchmarks/results/cpu.json`` and ``cpu.md`` (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

import rnnkit
from rnnkit.engine import resolve

GRID = [  # (B, T, I, H)
    (1, 256, 64, 64),
    (16, 256, 128, 128),
    (32, 128, 256, 256),
    (64, 64, 512, 512),
    (8, 1024, 32, 32),
]
MODES = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# Targets for engine="auto" from the issue: ratio to torch.nn at H <= 128 and at H >= 256.
TARGETS = {"lstm": (1.0, 1.0), "gru": (0.5, 1.0), "rnn": (0.5, 1.0)}


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        flags = next((ln for ln in lscpu.splitlines() if ln.startswith("Flags")), "")
        simd = [f for f in ("avx2", "avx512f", "fma") if f" {f}" in flags]
    except (OSError, subprocess.SubprocessError):
        simd = []
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    return {
        "cpu": model,
        "simd": simd,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "numba": numba_version,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": os.getloadavg(),
    }


def gemm_peak(repeats: int) -> float:
    """GFLOP/s of a large square float32 ``torch.mm``: this machine's practical matmul ceiling."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9  # best of: the peak, not the typical


def step_flops(mode: str, B: int, I: int, H: int) -> float:
    """Matmul FLOPs of one time step, forward + backward: 3 products each of ``B x G x (I + H)``."""
    G = GATES[mode] * H
    return 6.0 * B * G * (I + H)


def make_step(layer: nn.Module, x: torch.Tensor, mode: str):
    def step() -> None:
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        out, state = layer(x)
        states = state if mode == "lstm" else (state,)
        loss = out.sum() + sum(s.sum() for s in states)
        loss.backward()

    return step


def bench_point(
    mode: str, B: int, T: int, I: int, H: int, repeats: int, min_time: float, clock=time.perf_counter
) -> dict:
    torch.manual_seed(0)
    reference = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[mode](I, H)
    impls = {"torch.nn": reference}
    x = torch.randn(T, B, I, requires_grad=True)
    w = reference.weight_ih_l0
    auto_engine = resolve("auto", mode, x.detach(), rnnkit.engine.LayerWeights(w, w, None, None))
    engines = ["auto"] + ([] if auto_engine == "fused" else ["fused"])
    for engine in engines:
        layer = getattr(rnnkit, mode.upper())(I, H, engine=engine)
        layer.load_state_dict(reference.state_dict())
        impls[f"rnnkit[{engine}]"] = layer
    steps = {name: make_step(layer, x, mode) for name, layer in impls.items()}

    # Warm-up (compiles kernels), then pick inner repetitions so one sample lasts >= min_time.
    inner = {}
    for name, step in steps.items():
        step()
        t0 = clock()
        step()
        once = clock() - t0
        inner[name] = max(1, int(min_time / max(once, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # interleave, alternate order
        for name in order:
            t0 = clock()
            for _ in range(inner[name]):
                steps[name]()
            samples[name].append((clock() - t0) / inner[name])

    flops = step_flops(mode, B, I, H) * T
    result = {"mode": mode, "B": B, "T": T, "I": I, "H": H, "auto_engine": auto_engine, "impls": {}}
    base = statistics.median(samples["torch.nn"])
    for name, s in samples.items():
        med = statistics.median(s)
        result["impls"][name] = {
            "us_per_step": med / T * 1e6,
            "ratio_to_torch_nn": med / base,
            "gflops": flops / med / 1e9,
            "samples_s": s,
        }
    return result


def write_markdown(results: list[dict], info: dict, path: Path) -> None:
    load = f"{info['load_average_at_start'][0]:.2f} / {info['load_average_at_end'][0]:.2f}"
    lines = [
        "# CPU forward+backward, rnnkit vs torch.nn (float32, one layer)",
        "",
        f"Machine: {info['cpu']} ({info['cores']} cores, {', '.join(info['simd'])}), "
        f"torch {info['torch']} ({info['torch_blas']}, {info['torch_threads']} threads), "
        f"numba {info['numba']}, {info['date_utc']}. "
        f"GEMM peak (2048² torch.mm, best of run): {info['gemm_peak_gflops']:.0f} GFLOP/s. "
        f"Load average (1 min) at start / end: {load}. Clock: {info['clock']}.",
        "",
        "Median µs per time step of a training step (forward, loss = output.sum() + final state sums, "
        'backward); ratio = rnnkit / torch.nn; target is the issue\'s bound for `engine="auto"`. '
        "GFLOP/s counts the matrix products only (6·B·G·(I+H) per step) and is shown for H ≥ 256.",
        "",
        "| mode | B | T | I | H | torch.nn µs/step | rnnkit auto µs/step | ratio | target | met | "
        "GFLOP/s torch.nn / rnnkit (% of peak) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t, a = r["impls"]["torch.nn"], r["impls"]["rnnkit[auto]"]
        target = r["target"]
        gf = ""
        if r["H"] >= 256:
            peak = info["gemm_peak_gflops"]
            gf = (
                f"{t['gflops']:.0f} ({100 * t['gflops'] / peak:.0f}%) / "
                f"{a['gflops']:.0f} ({100 * a['gflops'] / peak:.0f}%)"
            )
        lines.append(
            f"| {r['mode']} | {r['B']} | {r['T']} | {r['I']} | {r['H']} | {t['us_per_step']:.1f} | "
            f"{a['us_per_step']:.1f} | {a['ratio_to_torch_nn']:.2f} | ≤ {target} | "
            f"{'yes' if r['met'] else '**no**'} | {gf} |"
        )
    lines.append("")
    lines.append(f'`engine="auto"` resolved to: {sorted({r["auto_engine"] for r in results})}.')
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--clock", choices=("wall", "process"), default="wall", help="process: CPU seconds of this process"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    repeats = args.repeats or (3 if args.quick else 7)
    min_time = 0.02 if args.quick else 0.05

    started = time.perf_counter()
    info = machine()
    info["gemm_peak_gflops"] = gemm_peak(5)
    results = []
    for mode in args.modes:
        for B, T, I, H in GRID:
            r = bench_point(mode, B, T, I, H, repeats, min_time, clock)
            small, large = TARGETS[mode]
            r["target"] = small if H <= 128 else large
            r["met"] = r["impls"]["rnnkit[auto]"]["ratio_to_torch_nn"] <= r["target"]
            results.append(r)
            a, t = r["impls"]["rnnkit[auto]"], r["impls"]["torch.nn"]
            print(
                f"{mode:4s} B={B:3d} T={T:4d} I={I:3d} H={H:3d}  torch.nn {t['us_per_step']:8.1f} us/step  "
                f"rnnkit[auto] {a['us_per_step']:8.1f} us/step  ratio {a['ratio_to_torch_nn']:.2f} "
                f"(target <= {r['target']}: {'met' if r['met'] else 'MISSED'})",
                flush=True,
            )
    info["gemm_peak_gflops_end"] = gemm_peak(5)
    info["gemm_peak_gflops"] = max(info["gemm_peak_gflops"], info["gemm_peak_gflops_end"])
    info["load_average_at_end"] = os.getloadavg()
    info["repeats"] = repeats
    info["clock"] = args.clock
    info["wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu.json").write_text(json.dumps({"machine": info, "results": results}, indent=1) + "\n")
    write_markdown(results, info, args.out / "cpu.md")
    print(f"wrote {args.out / 'cpu.json'} and cpu.md in {info['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
