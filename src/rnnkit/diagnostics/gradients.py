"""Gradient flow through time: ‖∂L/∂h_t‖ per layer and step, and ‖∂h_T/∂h_t‖ against T − t.

How the per-step gradients are obtained: while ``loss_fn`` runs, every rnnkit layer of the
model computes its forward with the reference math (the cells of :mod:`rnnkit.cells` looped over
time, as :mod:`rnnkit.engine.reference` does) on its own weights, keeping each step's new state
as a tensor of the graph; ``torch.autograd.grad`` of the loss with respect to those tensors gives
the total derivative ∂L/∂h_t (through the outputs and through later steps alike). This works
whatever engine the layer is set to (a fused engine gives the same forward up to rounding), with
``lengths``, packed and batch-first input, stacked and bidirectional layers, and leaves the
parameters' ``.grad`` untouched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..engine import reverse_within_lengths
from ._trace import LayerTrace, cell_step, override_run_stack, reference_stack

LossFn = Callable[[nn.Module, Any], Tensor]


def _valid(lengths: Tensor | None, T: int, B: int) -> Tensor:
    """``(T, B)`` bool: step ``t`` lies inside sequence ``b``."""
    if lengths is None:
        return torch.ones(T, B, dtype=torch.bool)
    return torch.arange(T).unsqueeze(1) < lengths.cpu().unsqueeze(0)


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean over dim 1 of ``values`` ``(N, B)`` where ``valid``; NaN where no entry is valid."""
    total = torch.where(valid, values, torch.zeros_like(values)).sum(1)
    count = valid.sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


@dataclass
class LayerGradients:
    """‖∂L/∂h_t‖ (and ‖∂L/∂c_t‖ for LSTM) at every step of one direction of one layer.

    ``module`` is the layer's qualified name in the model (``""`` if the model is the layer),
    ``call`` counts calls of that module within the forward (0 for the first).

    Shapes: ``h`` and ``c`` ``(T, B)``: the 2-norm over ``H`` of each sequence's gradient at
    step ``t`` (in input time order, also for the reverse direction); 0 past a sequence's end.
    ``lengths`` ``(B,)``.
    """

    module: str
    call: int
    layer: int
    direction: int
    mode: str
    h: Tensor
    c: Tensor | None
    lengths: Tensor

    def curve(self, state: Literal["h", "c"] = "h") -> Tensor:
        """Mean over the sequences still running at each step; shape ``(T,)``."""
        values = self.h if state == "h" else self.c
        if values is None:
            raise ValueError(f"LayerGradients.curve: a {self.mode} layer has no cell state 'c'")
        return _masked_mean(values, _valid(self.lengths, *values.shape))


@dataclass
class GradientFlow:
    """What :func:`gradient_flow` measured: the loss and one :class:`LayerGradients` per layer."""

    loss: float
    layers: list[LayerGradients]

    def get(
        self, layer: int = 0, direction: int = 0, module: str | None = None, call: int = 0
    ) -> LayerGradients:
        """The entry for ``layer``/``direction`` of ``module`` (default: the first rnnkit module)."""
        module = self.layers[0].module if module is None else module
        for entry in self.layers:
            if (entry.module, entry.call, entry.layer, entry.direction) == (module, call, layer, direction):
                return entry
        raise KeyError(
            f"GradientFlow: no entry for module={module!r} call={call} layer={layer} direction={direction}"
        )


def gradient_flow(model: nn.Module, batch: Any, loss_fn: LossFn) -> GradientFlow:
    """The norm of ∂L/∂h_t (and ∂L/∂c_t) for every rnnkit layer of ``model`` and every step ``t``.

    ``loss_fn(model, batch)`` runs the model on the batch and returns the scalar loss ``L``; it
    decides where the loss is taken (at the last step, at every step, at each sequence's own
    end). See the module docstring for how the states are exposed.

    Shapes: per layer, ``(T, B)`` norms; see :class:`LayerGradients`.
    """
    if not torch.is_grad_enabled():
        raise RuntimeError("gradient_flow: gradients are disabled here (called under torch.no_grad())")
    records: list[tuple[str, int, LayerTrace]] = []
    with override_run_stack(model, "gradient_flow", _tracing_stacks(records, dropout=True)):
        loss = loss_fn(model, batch)
    if not records:
        raise RuntimeError("gradient_flow: loss_fn(model, batch) did not run any rnnkit layer of the model")
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"gradient_flow: loss_fn must return a scalar tensor, got {loss!r:.80}")
    if not loss.requires_grad:
        raise ValueError("gradient_flow: the loss does not require grad (are the parameters frozen?)")

    targets = []
    for _, _, trace in records:
        for new in trace.leaving:
            targets.extend(new)
    grads = iter(torch.autograd.grad(loss, targets, allow_unused=True, materialize_grads=True))

    layers = []
    for name, call, trace in records:
        n_states = len(trace.leaving[0])
        per_state: list[list[Tensor]] = [[] for _ in range(n_states)]
        for _ in trace.leaving:
            for k in range(n_states):
                per_state[k].append(next(grads).detach().norm(dim=-1))  # (B,)
        norms = [torch.stack(v) for v in per_state]  # each (T, B)
        if trace.direction == 1:
            norms = [reverse_within_lengths(v, trace.lengths) for v in norms]
        T, B = norms[0].shape
        lengths = trace.lengths if trace.lengths is not None else torch.full((B,), T, dtype=torch.int64)
        valid = _valid(trace.lengths, T, B).to(norms[0].device)
        norms = [torch.where(valid, v, torch.zeros_like(v)).cpu() for v in norms]
        c = norms[1] if n_states == 2 else None
        layers.append(
            LayerGradients(name, call, trace.layer, trace.direction, trace.mode, norms[0], c, lengths.cpu())
        )
    return GradientFlow(float(loss.detach()), layers)


@dataclass
class LayerJacobians:
    """‖∂h_T/∂h_{T−k}‖ against the lag ``k`` for one direction of one layer.

    ``T`` is each sequence's own last step and lags run in the direction's own time order; lag
    ``k = T`` is the initial state. ``state`` says which block of the state Jacobian is measured
    (see :func:`jacobian_norms`) and ``norm`` which matrix norm.

    Shapes: ``norms`` ``(T + 1, B)`` with ``T`` the padded length; NaN past a sequence's length.
    """

    module: str
    call: int
    layer: int
    direction: int
    mode: str
    state: str
    norm: str
    norms: Tensor

    def curve(self) -> Tensor:
        """Mean over sequences at each lag; shape ``(T + 1,)``."""
        return _masked_mean(self.norms.nan_to_num(0.0), ~self.norms.isnan())

    @property
    def lags(self) -> Tensor:
        return torch.arange(self.norms.shape[0])


def _step_jacobians(trace: LayerTrace, t0: int, t1: int) -> Tensor:
    """∂s_t/∂s_{t−1} for steps ``t0 ≤ t < t1`` of every sequence, ``s = [h; c]`` (LSTM) or ``h``.

    Shapes: returns ``(t1 − t0, B, S, S)`` with ``S = H`` (``2H`` for LSTM).
    """
    H = trace.entering[0][0].shape[1]
    x = trace.inputs[t0:t1]  # (n, B, I)
    s = torch.stack([torch.cat(trace.entering[t], dim=1) for t in range(t0, t1)])  # (n, B, S)

    def step(x_t: Tensor, s_t: Tensor) -> Tensor:  # one sequence: (I,), (S,) -> (S,)
        state = tuple(s_t.unsqueeze(0).split(H, dim=1))  # each (1, H)
        new = cell_step(trace.mode, x_t.unsqueeze(0), state, trace.weights, trace.nonlinearity)
        return torch.cat(new, dim=1).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(step, argnums=1))
    n, B = x.shape[0], x.shape[1]
    return jac(x.flatten(0, 1), s.flatten(0, 1)).unflatten(0, (n, B))  # (n, B, S, S)


def jacobian_norms(
    model: nn.Module,
    batch: Any,
    forward: LossFn,
    *,
    state: Literal["h", "c", "full"] = "h",
    norm: Literal["spectral", "fro"] = "spectral",
    chunk: int = 64,
) -> list[LayerJacobians]:
    """‖∂h_T/∂h_{T−k}‖ for every lag ``k`` and every rnnkit layer the forward runs.

    ``forward(model, batch)`` runs the model (a ``loss_fn`` of :func:`gradient_flow` will do;
    its result is ignored). The Jacobian is that of one layer's recurrence with its inputs held
    fixed, i.e. the product of the step Jacobians ∂s_t/∂s_{t−1} along the actual trajectory,
    where the state ``s`` is ``h`` (RNN, GRU) or ``[h; c]`` (LSTM). For LSTM, ``state`` picks the
    block: ``"h"`` is ∂h_T/∂h_{T−k} (``c_{T−k}`` held), ``"c"`` is ∂c_T/∂c_{T−k}, ``"full"`` the
    whole ``2H × 2H`` matrix. ``norm`` is the spectral norm (largest singular value: the most any
    unit perturbation of the state can grow) or the Frobenius norm. Step Jacobians are computed
    with ``torch.func`` ``chunk`` time steps at a time.

    Shapes: per layer, ``norms`` ``(T + 1, B)``; see :class:`LayerJacobians`.
    """
    if norm not in ("spectral", "fro"):
        raise ValueError(f"jacobian_norms: norm must be 'spectral' or 'fro', got {norm!r}")
    if state not in ("h", "c", "full"):
        raise ValueError(f"jacobian_norms: state must be 'h', 'c' or 'full', got {state!r}")
    records: list[tuple[str, int, LayerTrace]] = []
    with (
        torch.no_grad(),
        override_run_stack(model, "jacobian_norms", _tracing_stacks(records, dropout=False)),
    ):
        forward(model, batch)
    if not records:
        raise RuntimeError("jacobian_norms: forward(model, batch) did not run any rnnkit layer of the model")

    results = []
    for name, call, trace in records:
        if state == "c" and trace.mode != "lstm":
            raise ValueError(f"jacobian_norms: state='c' needs an LSTM layer, got {trace.mode}")
        weights = type(trace.weights)(*(None if w is None else w.detach() for w in trace.weights))
        trace = LayerTrace(**{**trace.__dict__, "weights": weights})
        T, B = trace.inputs.shape[0], trace.inputs.shape[1]
        H = trace.entering[0][0].shape[1]
        S = H * len(trace.entering[0])
        block = {"h": slice(0, H), "c": slice(H, 2 * H), "full": slice(0, S)}[state]
        valid = _valid(trace.lengths, T, B).to(trace.inputs.device)  # (T, B)
        eye = torch.eye(S, dtype=trace.inputs.dtype, device=trace.inputs.device).expand(B, S, S)
        ord_ = 2 if norm == "spectral" else "fro"

        def measure(m: Tensor, block: slice = block, ord_: int | str = ord_) -> Tensor:
            return torch.linalg.matrix_norm(m[:, block, block], ord=ord_).cpu()

        product = eye.clone()  # ∂s_end/∂s_t, walking t backwards; steps past a sequence's end are identity
        by_step = [measure(eye)] * (T + 1)  # [t + 1]: ‖∂s_end/∂s_t‖ (B,) for t = -1 .. T-1 (-1: initial)
        for t1 in range(T, 0, -chunk):
            t0 = max(0, t1 - chunk)
            steps = _step_jacobians(trace, t0, t1)  # (n, B, S, S)
            for t in range(t1 - 1, t0 - 1, -1):
                product = product @ torch.where(valid[t].view(B, 1, 1), steps[t - t0], eye)
                by_step[t] = measure(product)
        per_t = torch.stack(by_step)  # (T + 1, B), row t + 1 for the state after step t
        # Re-index from "state after step t" to "lag k before each sequence's own end".
        lengths = trace.lengths.cpu() if trace.lengths is not None else torch.full((B,), T)
        lags = torch.arange(T + 1).unsqueeze(1)  # (T + 1, 1)
        index = (lengths.unsqueeze(0) - lags).clamp(min=0)  # (T + 1, B): t + 1 = length - k
        norms = per_t.gather(0, index)
        norms = torch.where(lags <= lengths.unsqueeze(0), norms, torch.full_like(norms, float("nan")))
        results.append(
            LayerJacobians(name, call, trace.layer, trace.direction, trace.mode, state, norm, norms)
        )
    return results


def _tracing_stacks(records: list[tuple[str, int, LayerTrace]], *, dropout: bool):
    """A factory for :func:`override_run_stack`: each layer's stack runs through the reference
    math, and its per-step traces are appended to ``records`` as ``(name, call, trace)``, where
    ``call`` counts that layer's calls within the forward."""
    calls: dict[str, int] = defaultdict(int)

    def make(name, module, previous):
        def run_stack(x, state, lengths):
            call = calls[name]
            calls[name] += 1
            out, finals, traces = reference_stack(module, x, state, lengths, dropout=dropout)
            records.extend((name, call, trace) for trace in traces)
            return out, finals

        return run_stack

    return make
