"""Host work of one Triton-engine call (forward + backward), measured on the CPU.

On a GPU, a call whose kernels are short waits for the host to issue its work: Python, autograd,
allocations and about 20 launches. This runs the engine's host side alone, every kernel replaced
by a no-op (under ``TRITON_INTERPRET=1``, on tiny CPU tensors), and reports per plan:

- ``eager_us``: one forward + backward as the engine runs it now;
- ``outside_us``: the same with each call's launches skipped, which is what is left of the host's
  work when a CUDA graph replays them (``Plan.graph``; a real replay adds a few µs);
- ``launches``: the aten ops in a call that launch a GPU kernel (views, ``empty`` and no-op
  casts left out), plus the Triton kernel launches, at ``T`` = 1 (the ``gemm`` path launches a
  product and a kernel per step and direction; under the interpreter the split backward launches
  twice where a GPU launches once).

Medians of repeats after warm-up, one thread, the best of five alternating rounds. Timings on
a shared 2-core VM still move by tens of percent between runs; the launch counts do not.

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
    "aten::to", "aten::contiguous", "aten::lift_fresh", "aten::result_type",
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


def _median_us(fn, repeats: int) -> float:
    for _ in range(max(10, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def measure(mode: str, path: str, dtype: torch.dtype, repeats: int) -> dict:
    # tiny: the host's work does not depend on the sizes, except the launches a step of the gemm
    # path (and, under the interpreter only, of the split path, which a GPU launches once): T = 1
    B, T, I, H = 4, 1, 16, 16
    G = te.NUM_GATES[mode] * H
    g = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(dtype).requires_grad_()

    x = leaf(T, B, I)
    state = tuple(leaf(B, H) for _ in range(2 if mode == "lstm" else 1))
    weights = LayerWeights(leaf(G, I), leaf(G, H), leaf(G), leaf(G))
    ups = [torch.randn(T, B, H).to(dtype)] + [torch.randn(B, H).to(dtype) for _ in state]
    leaves = [x, *state, *weights]
    plan = dataclasses.replace(te.plan_for(mode, B, H, dtype, path), graph=True)

    def call():
        out, fin = te.run(mode, x, state, weights, None, "tanh", plan=plan)
        torch.autograd.grad([out, *fin], leaves, ups)

    # alternate the two, five rounds each, and keep each one's best median: on a shared VM the
    # load moves the medians by tens of percent between rounds
    eager = outside = float("inf")
    for _ in range(5):
        te.GRAPHS = _Eager()
        eager = min(eager, _median_us(call, repeats // 5))
        te.GRAPHS = _Replayed()
        outside = min(outside, _median_us(call, repeats // 5))
    te.GRAPHS = _Eager()
    _LAUNCHED.clear()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()

    def top_level(e) -> bool:  # an aten op not called by another one
        return e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")

    top = [e.name for e in prof.events() if e.name.startswith("aten::") and top_level(e)]
    launches = sum(1 for n in top if n not in NO_LAUNCH) + len(_LAUNCHED)
    return {
        "mode": mode,
        "path": path,
        "dtype": str(dtype).removeprefix("torch."),
        "eager_us": round(eager, 1),
        "outside_us": round(outside, 1),
        "launches": launches,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "host.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in dir(te.K):
        if name.endswith("_kernel"):
            setattr(te.K, name, _NoOpKernel())
    rows = []
    for mode in ("lstm", "gru", "rnn"):
        for dtype in (torch.float32, torch.bfloat16):
            for path in ("resident", "split", "persistent", "gemm"):
                row = measure(mode, path, dtype, args.repeats)
                rows.append(row)
                print(
                    f"{mode:4} {row['dtype']:8} {path:10} eager {row['eager_us']:7.1f} us, "
                    f"outside the launches {row['outside_us']:7.1f} us, {row['launches']} launches",
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
