"""Engines run one direction of one layer over time, forward and backward.

- ``reference``: the cell looped over time, BPTT by autograd (:mod:`.reference`).
- ``fused``: one ``autograd.Function`` per cell type with BPTT written by hand (:mod:`.fused`).
- ``triton``: persistent Triton GPU kernels, one launch for the whole sequence (:mod:`.triton_engine`).
- ``auto``: the fastest correct engine for the device and configuration.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import RnnkitError
from . import reference
from .common import LayerWeights, State, reverse_within_lengths, step_mask

ENGINES = ("auto", "fused", "reference", "triton")

__all__ = [
    "ENGINES",
    "LayerWeights",
    "State",
    "autocast_dtype",
    "check",
    "run",
    "resolve",
    "reverse_within_lengths",
    "step_mask",
]


def resolve(engine: str, mode: str, x: Tensor, weights: LayerWeights) -> str:
    """The concrete engine (``fused``, ``reference`` or ``triton``) that ``engine`` stands for here.

    ``auto`` policy:

    - on CUDA, ``triton`` where Triton is installed and supports the call: one launch per
      sequence instead of a host-side loop of small kernels, and the only fast path for
      bf16/fp16 (not yet timed against cuDNN: ``benchmarks/bench_gpu.py`` is ready for that);
    - otherwise ``fused`` wherever it supports the call (float32/float64, any device): on the CPU
      its compiled loop is measured in ``benchmarks/results/cpu.md``;
    - ``reference`` for everything else (e.g. float16 on the CPU).
    """
    if engine != "auto":
        return engine
    if x.is_cuda:
        try:
            from . import triton_engine
        except ImportError:
            pass
        else:
            if triton_engine.supports(mode, x, weights):
                return "triton"
    try:
        from . import fused
    except ImportError:
        return "reference"
    return "fused" if fused.supports(mode, x, weights) else "reference"


def check(engine: str, device: torch.device | str) -> None:
    """Raise :class:`~rnnkit.errors.RnnkitError` before any work when ``engine`` cannot run on
    ``device``: an unknown name, or ``triton`` without Triton or off CUDA (Triton's CPU
    interpreter, ``TRITON_INTERPRET=1``, excepted)."""
    if engine not in ENGINES:
        raise RnnkitError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "triton":
        return
    from . import triton_engine

    if not triton_engine.AVAILABLE:
        raise RnnkitError(
            "--engine triton needs Triton: pip install 'rnnkit[gpu]' (with a CUDA build of torch)"
        )
    if torch.device(device).type != "cuda" and not triton_engine.INTERPRETED:
        raise RnnkitError(
            f"--engine triton runs on CUDA only, and the device here is {torch.device(device).type}; "
            "use --device cuda on a GPU machine, or --engine auto"
        )


def autocast_dtype(engine: str, x: Tensor) -> torch.dtype | None:
    """The dtype a float32 layer runs in under autocast, as torch.nn's cuDNN RNNs do: autocast's
    low-precision dtype where autocast is on for ``x``'s device and the Triton engine takes the
    call (``auto`` on CUDA; ``triton`` on CUDA, or on the CPU under Triton's interpreter); else
    ``None`` (the fused and reference engines keep float32: the fused one has no low-precision
    path)."""
    device = x.device.type
    if x.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    if (engine == "auto" and device == "cuda") or engine == "triton":
        try:
            from . import triton_engine
        except ImportError:
            return None
        return dtype if triton_engine.AVAILABLE and (device == "cuda" or triton_engine.INTERPRETED) else None
    return None


def run(
    mode: str,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: Tensor | None = None,
    nonlinearity: str = "tanh",
    engine: str = "auto",
) -> tuple[Tensor, State]:
    """Run one direction of one layer over ``x`` with the chosen engine.

    Shapes: ``x`` ``(T, B, I)``; ``state`` ``(h0,)`` or ``(h0, c0)`` each ``(B, H)``;
    ``lengths`` ``(B,)`` or ``None``. Returns ``output`` ``(T, B, H)`` and the final state.
    """
    chosen = resolve(engine, mode, x, weights)
    if chosen == "fused":
        from . import fused

        return fused.run(mode, x, state, weights, lengths, nonlinearity)
    if chosen == "triton":
        from . import triton_engine

        if not triton_engine.supports(mode, x, weights):
            raise RnnkitError(
                f"engine='triton' needs Triton and CUDA tensors of float32/bfloat16/float16 "
                f"(or TRITON_INTERPRET=1 on the CPU); got {x.dtype} on {x.device}"
                + ("" if triton_engine.AVAILABLE else "; Triton is not installed (pip install rnnkit[gpu])")
            )
        return triton_engine.run(mode, x, state, weights, lengths, nonlinearity)
    return reference.run(mode, x, state, weights, lengths, nonlinearity)
