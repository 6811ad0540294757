"""Where the peak memory of one training step goes: the Triton engine against torch.nn (cuDNN).

For a few benchmark points (``bench_gpu.py``'s problems: forward and backward of one layer
direction with random upstream gradients), on a CUDA GPU:

- peak memory above what was allocated before, of the forward alone (its graph kept until the
  results are dropped), of forward + backward, and of forward + backward without the weight
  gradients (only ``dx`` and the state's), for cuDNN and for the engine's default path;
- the same forward + backward with the default plan replayed as CUDA graphs (``Plan.graph``), and
  the memory the graphs' pool holds;
- the engine's live allocations at its peak, each with the Python line that made it (from the
  caching allocator's history, ``torch.cuda.memory._record_memory_history``), largest first,
  and what is live there that no line of ours made (library workspaces, say).

    PYTHONPATH=src python benchmarks/gpu_memory.py [--out benchmarks/results/gpu_memory.json]

About 30 s on an H100 (kernels compiled on first use).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_gpu import DTYPES, Problem, machine, peak_mib  # noqa: E402

POINTS = [
    ("lstm", "fp32", (16, 512, 256, 256)),
    ("lstm", "bf16", (16, 512, 256, 256)),
    ("gru", "bf16", (16, 512, 256, 256)),
    ("lstm", "fp32", (8, 2048, 64, 64)),
    ("gru", "fp32", (64, 256, 512, 512)),
    ("lstm", "bf16", (256, 128, 1024, 1024)),
]
MiB = 2**20


def where(frames: list[dict]) -> str:
    """The innermost frame in this repository's code (``src``/``benchmarks``), else the innermost."""
    for f in frames:
        name = f.get("filename", "")
        if "rnnkit" in name or "benchmarks" in name:
            return f"{Path(name).name}:{f.get('line')} {f.get('name')}"
    return f"{Path(frames[0]['filename']).name}:{frames[0].get('line')}" if frames else "?"


def live_at_peak(trace: list[dict]) -> tuple[float, list[dict]]:
    """Replay one device's allocator trace: ``(peak MiB above the start, live blocks at the peak
    grouped by the line that made them, largest first)``."""
    live: dict[int, tuple[int, str]] = {}
    cur = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for ev in trace:
        if ev["action"] == "alloc":
            live[ev["addr"]] = (ev["size"], where(ev.get("frames", [])))
            cur += ev["size"]
            if cur > peak:
                peak, at_peak = cur, dict(live)
        elif ev["action"] == "free_completed" and ev["addr"] in live:
            cur -= live.pop(ev["addr"])[0]
    groups: dict[str, list[int]] = {}
    for size, line in at_peak.values():
        groups.setdefault(line, []).append(size)
    rows = [{"line": k, "blocks": len(v), "mib": round(sum(v) / MiB, 2)} for k, v in groups.items()]
    return peak / MiB, sorted(rows, key=lambda r: -r["mib"])


def graph_memory(p: Problem, plan) -> dict:
    """The default plan replayed as CUDA graphs (``Plan.graph``): the peak of a replayed forward +
    backward, as above, and what the graphs' pool holds after it (``pool_mib``: memory reserved
    once the captures are made, over what was reserved before, the allocator's cache emptied
    both times): library workspaces made during capture, which graphs keep while cached."""
    import dataclasses

    from rnnkit.engine import triton_engine as te
    from rnnkit.engine._graphs import CallGraphs

    graphed = dataclasses.replace(plan, graph=True)
    before_graphs = te.GRAPHS
    te.GRAPHS = CallGraphs()  # this point's graphs only
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved()
        for _ in range(3):  # eager, captured, replayed
            res = p.engine(te.run, plan=graphed)
            del res
        peak = peak_mib(lambda: p.engine(te.run, plan=graphed))
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        pool = (torch.cuda.memory_reserved() - reserved) / MiB
        return {"fwd_bwd": peak, "pool_mib": round(pool, 2), "calls": dict(te.GRAPHS.stats)}
    except Exception as e:  # a result, not the end of the other points' measurements
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    finally:
        te.GRAPHS.clear()
        te.GRAPHS = before_graphs


def measure_point(mode: str, dname: str, shape: tuple[int, int, int, int]) -> dict:
    """Peaks of cuDNN and of the engine's default path at one point, and the engine's live
    allocations at its peak."""
    from rnnkit.engine import triton_engine as te

    B, T, I, H = shape
    p = Problem(mode, B, T, I, H, DTYPES[dname])
    plan = te.plan_for(mode, B, H, p.dtype)

    def cudnn_run():
        hx = (p.state[0][None], p.state[1][None]) if mode == "lstm" else p.state[0][None]
        out, fin = p.module(p.x, hx)
        return out, (tuple(s[0] for s in fin) if mode == "lstm" else (fin[0],))

    def ours_run():
        return te.run(mode, p.x, p.state, p.weights)

    def no_wgrad(run):
        out, fin = run()
        return torch.autograd.grad([out, *fin], [p.x, *p.state], [p.grad_out, *p.grad_state])

    p.engine(te.run), p.cudnn()  # compile; the libraries' workspaces exist from here on
    row = {"mode": mode, "dtype": dname, "B": B, "T": T, "I": I, "H": H, "path": plan.path}
    row["unit_mib"] = round(T * B * H * p.x.element_size() / MiB, 2)  # one (T, B, H) tensor
    row["cudnn"] = {
        "fwd": peak_mib(lambda: p.cudnn(backward=False)),
        "fwd_bwd": peak_mib(p.cudnn),
        "no_wgrad": peak_mib(lambda: no_wgrad(cudnn_run)),
    }
    row["ours"] = {
        "fwd": peak_mib(lambda: p.engine(te.run, backward=False)),
        "fwd_bwd": peak_mib(lambda: p.engine(te.run)),
        "no_wgrad": peak_mib(lambda: no_wgrad(ours_run)),
    }
    row["graph"] = graph_memory(p, plan)
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(max_entries=100_000, stacks="python")
    res = p.engine(te.run)
    torch.cuda.synchronize()
    del res
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snap["device_traces"][torch.cuda.current_device()]
    row["ours"]["traced_peak"], row["ours"]["live_at_peak"] = live_at_peak(trace)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_memory.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_memory: needs a CUDA GPU; nothing measured.")
        return 2
    rows = []
    for mode, dname, shape in POINTS:
        row = measure_point(mode, dname, shape)
        rows.append(row)
        c, o = row["cudnn"], row["ours"]
        print(
            f"{mode} {dname} B={row['B']} T={row['T']} I={row['I']} H={row['H']} {row['path']}: "
            f"unit {row['unit_mib']} MiB | cudnn fwd {c['fwd']:.1f} all {c['fwd_bwd']:.1f} "
            f"no-wgrad {c['no_wgrad']:.1f} | ours fwd {o['fwd']:.1f} all {o['fwd_bwd']:.1f} "
            f"no-wgrad {o['no_wgrad']:.1f}",
            flush=True,
        )
        g = row["graph"]
        print(
            f"    graphed: {g['error']}"
            if "error" in g
            else f"    graphed: all {g['fwd_bwd']:.1f} MiB, the graphs' pool holds {g['pool_mib']:.1f} MiB "
            f"(calls: {g['calls']})",
            flush=True,
        )
        for r in o["live_at_peak"][:8]:
            print(f"    {r['mib']:9.2f} MiB in {r['blocks']:3d} blocks  {r['line']}", flush=True)
    payload = {
        "command": "PYTHONPATH=src python benchmarks/gpu_memory.py",
        "machine": machine(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
