"""Engines run one direction of one layer over time, forward and backward.

- ``reference``: the cell looped over time, BPTT by autograd (:mod:`.reference`).
- ``fused``: one ``autograd.Function`` per cell type with BPTT written by hand (:mod:`.fused`).
- ``auto``: the fastest correct engine for the device and configuration.
"""

from __future__ import annotations

from torch import Tensor

from . import reference
from .common import LayerWeights, State, reverse_within_lengths, step_mask

ENGINES = ("auto", "fused", "reference")

__all__ = ["ENGINES", "LayerWeights", "State", "run", "resolve", "reverse_within_lengths", "step_mask"]


def resolve(engine: str, mode: str, x: Tensor, weights: LayerWeights) -> str:
    """The concrete engine (``fused`` or ``reference``) that ``engine`` stands for here.

    ``auto`` policy: ``fused`` wherever it supports the call (float32/float64, any device; on the
    CPU its compiled loop is faster than torch.nn at every benchmarked size, see
    ``benchmarks/results/cpu.md``, and elsewhere its hand-written BPTT needs far fewer ops than
    autograd through the reference loop); ``reference`` for everything else (e.g. float16).
    """
    if engine != "auto":
        return engine
    try:
        from . import fused
    except ImportError:
        return "reference"
    return "fused" if fused.supports(mode, x, weights) else "reference"


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
    if resolve(engine, mode, x, weights) == "fused":
        from . import fused

        return fused.run(mode, x, state, weights, lengths, nonlinearity)
    return reference.run(mode, x, state, weights, lengths, nonlinearity)
