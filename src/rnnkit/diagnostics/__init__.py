"""See inside recurrent models: gradient flow through time, gate statistics, plots and reports.

- :func:`gradient_flow`: ‖∂L/∂h_t‖ (and ‖∂L/∂c_t‖) per layer and step, for any loss.
- :func:`jacobian_norms`: ‖∂h_T/∂h_t‖ against the lag ``T − t``.
- :class:`GateRecorder`: opt-in gate histograms, saturation rates and state magnitudes.
- :func:`grad_norm`: the total gradient norm an optimiser step would clip.
- ``plot_*``: PNG figures (matplotlib Agg); :class:`HtmlReport`: a self-contained HTML page.

Shapes: ``B`` batch, ``T`` time, ``H`` hidden size.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .gates import GATE_NAMES, GateRecorder, GateSummary, LayerGateStats, gate_values
from .gradients import GradientFlow, LayerGradients, LayerJacobians, gradient_flow, jacobian_norms
from .plots import (
    plot_attention,
    plot_curves,
    plot_gate_stats,
    plot_grad_norm_traces,
    plot_gradient_flow,
    plot_jacobian_norms,
    plot_state_magnitudes,
)
from .report import HtmlReport


def grad_norm(parameters: Iterable[Tensor]) -> float:
    """The 2-norm of all parameters' ``.grad`` taken together (what ``clip_grad_norm_`` clips)."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


__all__ = [
    "GATE_NAMES",
    "GateRecorder",
    "GateSummary",
    "GradientFlow",
    "HtmlReport",
    "LayerGateStats",
    "LayerGradients",
    "LayerJacobians",
    "gate_values",
    "grad_norm",
    "gradient_flow",
    "jacobian_norms",
    "plot_attention",
    "plot_curves",
    "plot_gate_stats",
    "plot_grad_norm_traces",
    "plot_gradient_flow",
    "plot_jacobian_norms",
    "plot_state_magnitudes",
]
