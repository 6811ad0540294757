"""Engines run one direction of one layer over time, forward and backward.

- ``reference``: the cell looped over time, BPTT by autograd (:mod:`.reference`).
- ``fused``: one ``autograd.Function`` per cell type with BPTT written by hand (:mod:`.fused`).
- ``triton``: persistent Triton GPU kernels, one launch for the whole sequence (:mod:`.triton_engine`).
- ``native``: PyTorch's own kernels, what ``torch.nn.LSTM`` runs: cuDNN on CUDA (:mod:`.native`).
- ``auto``: the fastest correct engine for the device and configuration (:func:`resolve`).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from ..errors import RnnkitError
from . import reference
from .common import LayerWeights, State, reverse_within_lengths, step_mask

_log = logging.getLogger("rnnkit.triton")

ENGINES = ("auto", "fused", "reference", "triton", "native")

#: ``auto``'s choices between ``"triton"`` and ``"native"`` timed on CUDA under
#: ``torch.backends.cudnn.benchmark``, by the Triton tuner's key (:func:`choose`).
CHOSEN: dict[tuple, str] = {}

__all__ = [
    "ENGINES",
    "LayerWeights",
    "State",
    "CHOSEN",
    "autocast_dtype",
    "check",
    "choose",
    "run",
    "resolve",
    "reverse_within_lengths",
    "step_mask",
]


def resolve(engine: str, mode: str, x: Tensor, weights: LayerWeights) -> str:
    """The concrete engine (``fused``, ``reference``, ``triton`` or ``native``) that ``engine``
    stands for here.

    ``auto`` policy:

    - on CUDA, ``triton`` where Triton supports the call, except where cuDNN was measured faster
      on an H100 (:func:`.native.preferred`: float32 at ``H <= 128``, the RNN cell to ``H = 256``,
      and ``B * H >= 256 * 1024``):
      ``native`` there, and wherever Triton is missing or lacks the dtype (float64). With
      ``torch.backends.cudnn.benchmark`` set, :func:`run` times the two instead (:func:`choose`);
    - otherwise ``fused`` wherever it supports the call (float32/float64, any device): on the CPU
      its compiled loop is measured in ``benchmarks/results/cpu.md``;
    - ``reference`` for everything else (e.g. float16 on the CPU).
    """
    if engine != "auto":
        return engine
    if x.is_cuda:
        from . import native

        if _triton_supports(mode, x, weights) and not native.preferred(
            mode, x.shape[1], weights.weight_hh.shape[1], x.dtype
        ):
            return "triton"
        if native.supports(mode, x, weights):
            return "native"
    try:
        from . import fused
    except ImportError:
        return "reference"
    return "fused" if fused.supports(mode, x, weights) else "reference"


def _triton_supports(mode: str, x: Tensor, weights: LayerWeights) -> bool:
    try:
        from . import triton_engine
    except ImportError:
        return False
    return triton_engine.supports(mode, x, weights)


def choose(
    mode: str,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> str:
    """``"triton"`` or ``"native"``, whichever is faster for this call, timed once per kind of
    call (the Triton tuner's key: device, mode, dtype, ``H``, ``B`` and ``T`` rounded up to powers
    of two, with or without backward) on copies of its inputs, the Triton kernels with their own
    tuned plan; remembered in :data:`CHOSEN`. What ``auto`` does on CUDA under
    ``torch.backends.cudnn.benchmark``."""
    from . import native, triton_engine

    backward = triton_engine.wants_backward(x, state, weights)
    key = triton_engine._tune_key(mode, nonlinearity, x, weights.weight_hh.shape[1], backward)
    if key not in CHOSEN:
        plan = triton_engine.tune(mode, x, state, weights, lengths, nonlinearity, backward=backward)
        runners = {"triton": functools.partial(triton_engine.run, plan=plan), "native": native.run}
        timed = triton_engine.time_candidates(
            mode, x, state, weights, lengths, nonlinearity, runners, backward=backward
        )
        CHOSEN[key] = min(timed, key=timed.get) if timed else "triton"
        _log.info("auto %s: %s (%s)", key, CHOSEN[key], ", ".join(f"{k} {v:.2e} s" for k, v in timed.items()))
    return CHOSEN[key]


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
        raise RnnkitError(f"--engine triton needs Triton and a CUDA build of torch: {triton_engine.MISSING}")
    if torch.device(device).type != "cuda" and not triton_engine.INTERPRETED:
        raise RnnkitError(
            f"--engine triton runs on CUDA only, and the device here is {torch.device(device).type}; "
            "use --device cuda on a GPU machine, or --engine auto"
        )


def autocast_dtype(engine: str, x: Tensor) -> torch.dtype | None:
    """The dtype a float32 layer runs in under autocast, as torch.nn's cuDNN RNNs do: autocast's
    low-precision dtype where autocast is on for ``x``'s device and the Triton or cuDNN kernels
    take the call (``auto`` or ``native`` on CUDA; ``triton`` on CUDA, or on the CPU under
    Triton's interpreter); else ``None`` (the CPU engines keep float32: the fused one has no
    low-precision path)."""
    device = x.device.type
    if x.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    if device == "cuda" and engine in ("auto", "native"):
        return dtype  # Triton's kernels or cuDNN's, both in the low dtype
    if engine == "triton":
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
    if (
        engine == "auto"
        and x.is_cuda
        and torch.backends.cudnn.benchmark
        and _triton_supports(mode, x, weights)
    ):
        chosen = choose(mode, x, state, weights, lengths, nonlinearity)
    if chosen == "native":
        from . import native

        return native.run(mode, x, state, weights, lengths, nonlinearity)
    if chosen == "fused":
        from . import fused

        return fused.run(mode, x, state, weights, lengths, nonlinearity)
    if chosen == "triton":
        from . import triton_engine

        # auto picks it only where it runs (resolve asked); a forced one says why it cannot
        if engine == "triton" and not triton_engine.supports(mode, x, weights):
            raise RnnkitError(
                f"engine='triton' needs Triton and CUDA tensors of float32/bfloat16/float16 "
                f"(or TRITON_INTERPRET=1 on the CPU); got {x.dtype} on {x.device}"
                + ("" if triton_engine.AVAILABLE else f"; {triton_engine.MISSING}")
            )
        return triton_engine.run(mode, x, state, weights, lengths, nonlinearity)
    return reference.run(mode, x, state, weights, lengths, nonlinearity)
