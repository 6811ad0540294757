"""Gate and state statistics, recorded by an opt-in hook that changes no result.

:class:`GateRecorder` is a context manager. Inside it, each rnnkit layer of the model still runs
its own engine (so outputs and gradients are bit-identical to a run without it); afterwards the
recorder recomputes the gates from the same inputs, initial state and weights with the cell
equations under ``torch.no_grad()`` and accumulates histograms, saturation counts and per-step
means. Outside the context nothing is registered, so it costs nothing when off. The recomputation
draws no random numbers; it does not see the dropout between stacked layers, so with
``dropout > 0`` in training mode the layers above the first are described on undropped inputs.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._trace import LayerTrace, override_run_stack, reference_stack

#: The gates each cell type exposes, in the order of its weight rows; ``"hidden"`` is the
#: Elman RNN's activation, which has no gates but saturates all the same.
GATE_NAMES: dict[str, tuple[str, ...]] = {
    "lstm": ("input", "forget", "cell", "output"),
    "gru": ("reset", "update", "candidate"),
    "rnn": ("hidden",),
}
_TANH = ("cell", "candidate", "hidden")  # range (-1, 1); the others are sigmoids in (0, 1)


def gate_values(trace: LayerTrace) -> dict[str, Tensor]:
    """Every gate at every step of a traced layer, from the cell equations of :mod:`rnnkit.cells`.

    Shapes: each ``(T, B, H)`` (values past a sequence's end are computed but meaningless).
    """
    h_prev = torch.stack([s[0] for s in trace.entering])  # (T, B, H)
    w = trace.weights
    if trace.mode == "rnn":
        return {"hidden": torch.stack([s[0] for s in trace.leaving])}
    gx = F.linear(trace.inputs, w.weight_ih, w.bias_ih)  # (T, B, G)
    gh = F.linear(h_prev, w.weight_hh, w.bias_hh)  # (T, B, G)
    if trace.mode == "lstm":
        i, f, g, o = (gx + gh).chunk(4, dim=2)  # each (T, B, H)
        return {"input": i.sigmoid(), "forget": f.sigmoid(), "cell": g.tanh(), "output": o.sigmoid()}
    xr, xz, xn = gx.chunk(3, dim=2)
    hr, hz, hn = gh.chunk(3, dim=2)
    r = torch.sigmoid(xr + hr)
    return {"reset": r, "update": torch.sigmoid(xz + hz), "candidate": torch.tanh(xn + r * hn)}


def _grow(t: Tensor, n: int) -> Tensor:
    return t if t.shape[0] >= n else torch.cat([t, t.new_zeros(n - t.shape[0])])


@dataclass
class GateSummary:
    """Distribution of one gate over every recorded unit, sequence and valid step.

    A gate counts as saturated when it is within ``saturation`` of its bounds: below
    ``saturation`` (``low``: closed) or above ``1 − saturation`` (``high``: open) for sigmoid
    gates, beyond ``∓(1 − saturation)`` for tanh ones; for a ReLU RNN, ``low`` counts dead
    (zero) units and ``high`` stays 0.

    Shapes: ``edges`` ``(bins + 1,)``, ``counts`` ``(bins,)``; ``step_sum``/``step_count``
    ``(T,)`` (the longest recorded ``T``).
    """

    name: str
    edges: Tensor
    counts: Tensor
    low: int = 0
    high: int = 0
    total: int = 0
    step_sum: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    step_count: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    @property
    def saturation(self) -> float:
        """Fraction of values within ``saturation`` of either bound."""
        return (self.low + self.high) / max(self.total, 1)

    @property
    def saturated_low(self) -> float:
        return self.low / max(self.total, 1)

    @property
    def saturated_high(self) -> float:
        return self.high / max(self.total, 1)

    @property
    def mean(self) -> float:
        return float(self.step_sum.sum() / max(self.total, 1))

    def mean_over_time(self) -> Tensor:
        """Mean value at each step over units and running sequences; shape ``(T,)``."""
        return self.step_sum / self.step_count.clamp(min=1)


@dataclass
class LayerGateStats:
    """Gate and state statistics of one direction of one layer (all calls of it added up).

    Shapes: ``hidden_magnitude`` and ``cell_magnitude`` (LSTM only) ``(T,)``: mean ``|h_t|``
    and ``|c_t|`` over units and running sequences; ``values`` (with ``keep_values``): per gate
    one ``(T, B, H)`` tensor per call.
    """

    module: str
    layer: int
    direction: int
    mode: str
    gates: dict[str, GateSummary]
    hidden_magnitude: Tensor
    cell_magnitude: Tensor | None
    values: dict[str, list[Tensor]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        name = f"{self.module}." if self.module else ""
        return f"{name}{self.mode}[{self.layer}]" + (" reverse" if self.direction else "")


class GateRecorder:
    """Record gate histograms, saturation rates and state magnitudes of every rnnkit layer.

    Usage::

        with GateRecorder(model) as recorder:
            model(x)
        recorder.stats  # one LayerGateStats per (module, layer, direction)

    Args:
        model: a module containing rnnkit ``RNN``/``LSTM``/``GRU`` layers (or one itself).
        bins: histogram bins over each gate's range.
        saturation: distance from a bound within which a gate counts as saturated.
        keep_values: also keep every gate tensor (memory grows with every call).

    Shapes: see :class:`LayerGateStats` and :class:`GateSummary`.
    """

    def __init__(
        self, model: nn.Module, *, bins: int = 20, saturation: float = 0.05, keep_values: bool = False
    ) -> None:
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"GateRecorder: bins must be a positive integer, got {bins!r}")
        if not 0 < saturation < 0.5:
            raise ValueError(f"GateRecorder: saturation must be in (0, 0.5), got {saturation!r}")
        self.model = model
        self.bins = bins
        self.saturation = saturation
        self.keep_values = keep_values
        self._stats: dict[tuple[str, int, int], LayerGateStats] = {}
        self._hidden: dict[tuple[str, int, int], tuple[Tensor, Tensor]] = {}
        self._cell: dict[tuple[str, int, int], tuple[Tensor, Tensor]] = {}
        self._stack: ExitStack | None = None

    @property
    def stats(self) -> list[LayerGateStats]:
        """Everything recorded so far, in the order the layers first ran."""
        out = []
        for key, entry in self._stats.items():
            h_sum, h_count = self._hidden[key]
            entry.hidden_magnitude = h_sum / h_count.clamp(min=1)
            if key in self._cell:
                c_sum, c_count = self._cell[key]
                entry.cell_magnitude = c_sum / c_count.clamp(min=1)
            out.append(entry)
        return out

    def __enter__(self) -> GateRecorder:
        if self._stack is not None:
            raise RuntimeError("GateRecorder: already recording (the recorder is not re-entrant)")

        def make(name, module, previous):
            def run_stack(x, state, lengths):
                result = previous(x, state, lengths)  # the layer's own engine: results untouched
                with torch.no_grad():
                    states = [s.detach() for s in state]
                    _, _, traces = reference_stack(module, x.detach(), states, lengths, dropout=False)
                    for trace in traces:
                        self._record(name, trace)
                return result

            return run_stack

        self._stack = ExitStack()
        self._stack.enter_context(override_run_stack(self.model, "GateRecorder", make))
        return self

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _record(self, module: str, trace: LayerTrace) -> None:
        key = (module, trace.layer, trace.direction)
        T, B = trace.inputs.shape[0], trace.inputs.shape[1]
        if trace.lengths is None:
            valid = torch.ones(T, B, dtype=torch.bool)
        else:
            valid = torch.arange(T).unsqueeze(1) < trace.lengths.cpu().unsqueeze(0)  # (T, B)
        valid = valid.unsqueeze(2).to(trace.inputs.device)  # (T, B, 1)
        relu = trace.mode == "rnn" and trace.nonlinearity == "relu"
        if key not in self._stats:
            summaries = {}
            for name in GATE_NAMES[trace.mode]:
                lo, hi = (0.0, 4.0) if relu else (-1.0, 1.0) if name in _TANH else (0.0, 1.0)
                edges = torch.linspace(lo, hi, self.bins + 1, dtype=torch.float64)
                summaries[name] = GateSummary(name, edges, torch.zeros(self.bins, dtype=torch.int64))
            empty = torch.zeros(0, dtype=torch.float64)
            self._stats[key] = LayerGateStats(
                module, trace.layer, trace.direction, trace.mode, summaries, empty, None
            )
        entry = self._stats[key]
        steps_valid = valid.expand(T, B, trace.entering[0][0].shape[1])  # (T, B, H)
        per_step_count = steps_valid.sum(dim=(1, 2)).cpu()  # (T,)
        s = self.saturation
        for name, values in gate_values(trace).items():
            summary = entry.gates[name]
            flat = values[steps_valid].double().cpu()
            lo, hi = float(summary.edges[0]), float(summary.edges[-1])
            summary.counts += torch.histc(flat.clamp(lo, hi), self.bins, lo, hi).to(torch.int64)
            if relu:
                low, high = int((flat == 0).sum()), 0
            elif name in _TANH:
                low, high = int((flat < -(1 - s)).sum()), int((flat > 1 - s).sum())
            else:
                low, high = int((flat < s).sum()), int((flat > 1 - s).sum())
            summary.low += low
            summary.high += high
            summary.total += flat.numel()
            step_sum = torch.where(steps_valid, values, torch.zeros_like(values)).sum(dim=(1, 2))
            n = max(T, summary.step_sum.shape[0])
            summary.step_sum = _grow(summary.step_sum, n)
            summary.step_sum[:T] += step_sum.double().cpu()
            summary.step_count = _grow(summary.step_count, n)
            summary.step_count[:T] += per_step_count
            if self.keep_values:
                entry.values.setdefault(name, []).append(values.cpu())
        magnitudes = [("h", self._hidden, 0)] + ([("c", self._cell, 1)] if trace.mode == "lstm" else [])
        for _, store, k in magnitudes:  # mean |h_t| and |c_t| of running sequences, per step
            states = torch.stack([st[k] for st in trace.leaving]).abs()  # (T, B, H)
            total = torch.where(steps_valid, states, torch.zeros_like(states)).sum(dim=(1, 2)).double().cpu()
            empty = (torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64))
            old_sum, old_count = store.get(key, empty)
            n = max(T, old_sum.shape[0])
            new_sum, new_count = _grow(old_sum, n).clone(), _grow(old_count, n).clone()
            new_sum[:T] += total
            new_count[:T] += per_step_count
            store[key] = (new_sum, new_count)
