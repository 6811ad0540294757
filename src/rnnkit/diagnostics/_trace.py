"""Re-running rnnkit layers with the reference math while keeping every per-step state.

The diagnostics need what an engine does not hand out: the state entering and leaving every
step of every layer. Rather than reach into an engine (the fused one keeps its states in its own
buffers), they swap the layer's stack runner, ``RNNBase._run_stack(x, state, lengths)``, for
one that loops the cells of :mod:`rnnkit.cells` over time on the same weights, exactly as
:mod:`rnnkit.engine.reference` does, and records the states. The swap is per instance and lasts
only inside :func:`override_run_stack`; the layer's input parsing (batch-first, packed,
unbatched, ``lengths``) and output formatting are untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cells import gru_step, lstm_step, rnn_step
from ..engine import LayerWeights, State, reverse_within_lengths, step_mask
from ..layers import RNNBase

RunStack = Callable[[Tensor, list[Tensor], "Tensor | None"], tuple[Tensor, list[Tensor]]]


@dataclass
class LayerTrace:
    """Every step of one direction of one layer, in that direction's own time order.

    Shapes: ``inputs`` ``(T, B, I)``; ``entering[t]`` and ``leaving[t]`` are states (``(h,)`` or
    ``(h, c)``, each ``(B, H)``) before and after step ``t`` (``leaving`` is the cell's new state,
    also for sequences that have ended, which the layer then ignores); ``lengths`` ``(B,)`` or
    ``None``.
    """

    layer: int
    direction: int
    mode: str
    weights: LayerWeights
    nonlinearity: str
    inputs: Tensor
    entering: list[State]
    leaving: list[State]
    lengths: Tensor | None


def cell_step(mode: str, x_t: Tensor, state: State, weights: LayerWeights, nonlinearity: str) -> State:
    """One step of the cell ``mode``; ``(h,)`` or ``(h, c)`` in and out, each ``(B, H)``."""
    if mode == "lstm":
        return lstm_step(x_t, (state[0], state[1]), *weights)
    if mode == "gru":
        return (gru_step(x_t, state[0], *weights),)
    return (rnn_step(x_t, state[0], *weights, nonlinearity=nonlinearity),)


def run_direction(
    mode: str,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: Tensor | None,
    nonlinearity: str,
) -> tuple[Tensor, State, list[State], list[State]]:
    """The reference engine's loop, keeping the states entering and leaving every step.

    Shapes: ``x`` ``(T, B, I)``; returns output ``(T, B, H)``, the final state, and per-step
    lists of states (each ``(B, H)``).
    """
    mask = step_mask(lengths, x.shape[0], x.device)  # (T, B, 1) bool, or None
    outputs, entering, leaving = [], [], []
    for t in range(x.shape[0]):
        entering.append(state)
        new = cell_step(mode, x[t], state, weights, nonlinearity)
        leaving.append(new)
        if mask is None:
            state = new
            outputs.append(new[0])
        else:
            m = mask[t]  # (B, 1): sequences still running at step t
            state = tuple(torch.where(m, n, s) for n, s in zip(new, state))
            outputs.append(torch.where(m, new[0], torch.zeros_like(new[0])))
    return torch.stack(outputs), state, entering, leaving


def reference_stack(
    module: RNNBase, x: Tensor, state: list[Tensor], lengths: Tensor | None, *, dropout: bool
) -> tuple[Tensor, list[Tensor], list[LayerTrace]]:
    """``module._run_stack`` with the reference math, also returning a trace per layer and direction.

    ``dropout`` applies the layer's between-layer dropout as the layer would (drawing from the
    same random stream); with ``False`` no random numbers are drawn.

    Shapes: ``x`` ``(T, B, I)``; ``state`` each ``(D*L, B, H)``; returns ``(T, B, D*H)`` and the
    final states, each ``(D*L, B, H)``.
    """
    D = module.num_directions
    finals: list[list[Tensor]] = [[] for _ in state]
    traces = []
    layer_input = x
    for layer in range(module.num_layers):
        outs = []
        for direction in range(D):
            s0 = tuple(s[layer * D + direction] for s in state)  # each (B, H)
            inp = layer_input if direction == 0 else reverse_within_lengths(layer_input, lengths)
            weights = module.layer_weights(layer, direction)
            out, s_n, entering, leaving = run_direction(
                module.mode, inp, s0, weights, lengths, module.nonlinearity
            )
            traces.append(
                LayerTrace(
                    layer,
                    direction,
                    module.mode,
                    weights,
                    module.nonlinearity,
                    inp,
                    entering,
                    leaving,
                    lengths,
                )
            )
            outs.append(out if direction == 0 else reverse_within_lengths(out, lengths))
            for acc, s in zip(finals, s_n):
                acc.append(s)
        layer_input = outs[0] if D == 1 else torch.cat(outs, dim=2)  # (T, B, D*H)
        if dropout and module.dropout and module.training and layer < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, True)
    return layer_input, [torch.stack(acc) for acc in finals], traces


def rnn_layers(model: nn.Module, caller: str) -> list[tuple[str, RNNBase]]:
    """The rnnkit recurrent layers in ``model`` (itself included), by qualified name."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, RNNBase)]
    if not layers:
        raise ValueError(
            f"{caller}: expected a model containing an rnnkit.RNN, LSTM or GRU layer, found none "
            f"in {type(model).__name__} (torch.nn recurrent layers cannot be traced; swap in rnnkit's)"
        )
    return layers


@contextmanager
def override_run_stack(
    model: nn.Module, caller: str, make: Callable[[str, RNNBase, RunStack], RunStack]
) -> Iterator[list[tuple[str, RNNBase]]]:
    """Give every rnnkit layer in ``model`` the stack runner ``make(name, layer, previous)``.

    ``previous`` is the runner in place before (so overrides nest); all are restored on exit.
    """
    layers = rnn_layers(model, caller)
    saved = []
    try:
        for name, module in layers:
            saved.append((module, module.__dict__.get("_run_stack")))
            module._run_stack = make(name, module, module._run_stack)  # instance attribute shadows the method
        yield layers
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                del module.__dict__["_run_stack"]
            else:
                module.__dict__["_run_stack"] = previous
