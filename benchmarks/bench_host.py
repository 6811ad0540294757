"""Host work of one Triton-engine call (forward + backward), measured on the CPU.

On a GPU, a call whose kernels are short waits for the host to issue its work: Python, autograd,
allocations and 8-22 launches. This runs the engine's host side alone, every kernel replaced
by a no-op (under ``TRITON_INTERPRET=1``, on tiny CPU tensors), and reports per plan:

- ``eager_us``: one forward + backward as the engine runs it now (the default plan, no graph);
- ``outside_us``: the same as a graph plan (``Plan.graph``: its key built each call) with each
  call's launches skipped, which is what is left of the host's work when a CUDA graph replays
  them (a real replay adds a few µs);
- ``floor_us``: the anchor, a no-op autograd function over the same tensors (outputs and
  gradients allocated, nothing else): what any Python-level autograd function costs here, so
  ``outside_us - floor_us`` is the engine's own work;
- ``launches``: the aten ops in a call that launch a GPU kernel (views, ``empty`` and no-op
  casts left out), plus the Triton kernel launches, at ``T`` = 1 (the ``gemm`` path launches a
  product and a kernel per step and direction; the split path's programs here are one a launch,
  which the interpreter runs in one launch for the whole sequence, as a GPU does).

Medians of repeats after warm-up, one thread, the best of five rounds spread over the run. Timings
on a shared 2-core VM still move between runs, by less than the medians do; the launch counts do
not.

    PYTHONPATH=src python benchmarks/bench_host.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from rnnkit.engine import triton_engine as te  # noqa: E402
from rnnkit.engine.common import LayerWeights  # noqa: E402

#: aten ops that launch no kernel on a GPU (views, allocation without fill, same-dtype casts)
NO_LAUNCH = {
    "aten::view", "aten::t", "aten::reshape", "aten::slice", "aten::select", "aten::transpose",
    "aten::as_strided", "aten::expand", "aten::detach", "aten::alias", "aten::_reshape_alias",
    "aten::unsqueeze", "aten::squeeze", "aten::empty", "aten::empty_like", "aten::empty_strided",
    "aten::to", "aten::contiguous", "aten::lift_fresh", "aten::result_type", "aten::split",
    "aten::split_with_sizes", "aten::unbind",
}  # fmt: skip


#: one entry per kernel launch since it was last cleared
_LAUNCHED: list = []


class _NoOpKernel:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: _LAUNCHED.append(1)


class _Eager:
    def run(self, key, launches, device, family="") -> str:
        launches()
        return "eager"


class _Replayed:
    """A replay that costs the host nothing: what is left is the host's work outside the launches."""

    def run(self, key, launches, device, family="") -> str:
        return "replayed"


class _Floor(torch.autograd.Function):
    """The least a Python autograd function over a layer's tensors costs: it allocates the outputs
    and the gradients the engine returns, and computes nothing."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        T, B, _ = x.shape
        out = x.new_empty(T, B, w_hh.shape[1])
        return (out, torch.empty_like(h0)) + ((torch.empty_like(c0),) if c0 is not None else ())

    @staticmethod
    def backward(ctx, *grads):
        return tuple(None if t is None else torch.empty_like(t) for t in ctx.saved_tensors)


def _median_us(fn, repeats: int) -> float:
    for _ in range(max(10, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


class Case:
    """One plan's forward + backward on tiny CPU tensors, and the no-op anchor on the same ones."""

    def __init__(self, mode: str, path: str, dtype: torch.dtype) -> None:
        # tiny: the host's work does not depend on the sizes, except the launches a step of the
        # gemm path (and, under the interpreter only, of the split path, which a GPU launches
        # once): T = 1
        B, T, I, H = 4, 1, 16, 16
        G = te.NUM_GATES[mode] * H
        g = torch.Generator().manual_seed(0)

        def leaf(*shape):
            return torch.randn(*shape, generator=g).to(dtype).requires_grad_()

        self.mode, self.path, self.dtype = mode, path, dtype
        self.x = leaf(T, B, I)
        self.state = tuple(leaf(B, H) for _ in range(2 if mode == "lstm" else 1))
        self.weights = LayerWeights(leaf(G, I), leaf(G, H), leaf(G), leaf(G))
        self.ups = [torch.randn(T, B, H).to(dtype)] + [torch.randn(B, H).to(dtype) for _ in self.state]
        self.leaves = [self.x, *self.state, *self.weights]
        self.plan = te.plan_for(mode, B, H, dtype, path)  # as the engine runs it: no graph key
        self.graph_plan = dataclasses.replace(self.plan, graph=True)
        self.best = {"eager_us": float("inf"), "outside_us": float("inf"), "floor_us": float("inf")}

    def call(self, graph: bool = False) -> None:
        plan = self.graph_plan if graph else self.plan
        out, fin = te.run(self.mode, self.x, self.state, self.weights, None, "tanh", plan=plan)
        torch.autograd.grad([out, *fin], self.leaves, self.ups)

    def replayed(self) -> None:
        """A graph plan's call (its key built) whose launches the graphs would replay."""
        self.call(graph=True)

    def floor(self) -> None:
        c0 = self.state[1] if self.mode == "lstm" else None
        out, *fin = _Floor.apply(self.x, self.state[0], c0, *self.weights)
        torch.autograd.grad([out, *fin], self.leaves, self.ups)

    def round(self, repeats: int) -> None:
        """One median of each measurement, each kept if it is the best so far."""
        for name, graphs, fn in (
            ("eager_us", _Eager(), self.call),
            ("outside_us", _Replayed(), self.replayed),
            ("floor_us", None, self.floor),
        ):
            te.GRAPHS = graphs or _Eager()
            self.best[name] = min(self.best[name], _median_us(fn, repeats))
        te.GRAPHS = _Eager()

    def launches(self) -> int:
        _LAUNCHED.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.call()

        def top_level(e) -> bool:  # an aten op not called by another one
            return e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")

        top = [e.name for e in prof.events() if e.name.startswith("aten::") and top_level(e)]
        return sum(1 for n in top if n not in NO_LAUNCH) + len(_LAUNCHED)

    def row(self) -> dict:
        return {
            "mode": self.mode,
            "path": self.path,
            "dtype": str(self.dtype).removeprefix("torch."),
            **{k: round(v, 1) for k, v in self.best.items()},
            "launches": self.launches(),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=500, help="calls timed per measurement, over all rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "host.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in dir(te.K):
        if name.endswith("_kernel"):
            setattr(te.K, name, _NoOpKernel())
    cases = [
        Case(mode, path, dtype)
        for mode in ("lstm", "gru", "rnn")
        for dtype in (torch.float32, torch.bfloat16)
        for path in ("resident", "split", "persistent", "gemm")
    ]
    # each case's rounds are spread over the whole run, each keeping its best median: on a shared
    # VM the load moves medians by tens of percent for seconds at a time
    for _ in range(args.rounds):
        for case in cases:
            case.round(args.repeats // args.rounds)
    rows = []
    for case in cases:
        row = case.row()
        rows.append(row)
        print(
            f"{row['mode']:4} {row['dtype']:8} {row['path']:10} eager {row['eager_us']:7.1f} us, "
            f"outside the launches {row['outside_us']:7.1f} us (floor {row['floor_us']:6.1f}), "
            f"{row['launches']} launches",
            flush=True,
        )
    payload = {
        "command": "PYTHONPATH=src python benchmarks/bench_host.py",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "unit": "µs of host time per forward + backward call, kernels as no-ops, median of repeats",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
