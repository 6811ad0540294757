"""Drawing the diagnostics as PNG files with matplotlib's Agg canvas.

Figures are built with ``matplotlib.figure.Figure`` directly rather than ``pyplot``, so plotting
needs no display, touches no global backend state and leaks no open figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from .gates import LayerGateStats

Curve = Tensor | Sequence[float]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def _floats(curve: Curve) -> list[float]:
    values = curve.detach().double().cpu().tolist() if isinstance(curve, Tensor) else list(map(float, curve))
    return values


def _positive(values: list[float]) -> list[float]:
    """Log axes cannot show 0 or NaN: drop them to gaps."""
    return [v if (v > 0 and math.isfinite(v)) else float("nan") for v in values]


def plot_curves(
    curves: Mapping[str, Curve],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = True,
    x: Mapping[str, Curve] | None = None,
    hline: float | None = None,
    paired: bool = False,
) -> Path:
    """One line per entry of ``curves`` (label → values), x from ``x[label]`` or ``0..n-1``.

    With ``paired``, labels that differ only in their last word (``"lstm init"``, ``"lstm
    trained"``) share a colour, and the first of each pair is dashed.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    colours: dict[str, str] = {}
    palette = [f"C{i}" for i in range(10)]
    for label, curve in curves.items():
        values = _floats(curve)
        xs = _floats(x[label]) if x is not None and label in x else list(range(len(values)))
        style: dict[str, object] = {}
        if paired:
            group = label.rsplit(" ", 1)[0]
            first = group not in colours
            colours.setdefault(group, palette[len(colours) % len(palette)])
            style = {"color": colours[group], "linestyle": "--" if first else "-"}
        ax.plot(xs, _positive(values) if log_y else values, label=label, linewidth=1.2, **style)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_gradient_flow(
    curves: Mapping[str, Curve], path: str | Path, *, title: str = "Gradient flow", paired: bool = False
) -> Path:
    """``‖∂L/∂h_t‖`` against the step ``t`` on a log axis, one line per label.

    Shapes: each curve ``(T,)`` (e.g. :meth:`LayerGradients.curve`).
    """
    return plot_curves(curves, path, title=title, xlabel="step t", ylabel="‖∂L/∂h_t‖ (log)", paired=paired)


def plot_jacobian_norms(
    curves: Mapping[str, Curve],
    path: str | Path,
    *,
    title: str = "‖∂h_T/∂h_t‖ against T − t",
    paired: bool = False,
) -> Path:
    """Jacobian product norms against the lag ``T − t`` on a log axis.

    Shapes: each curve ``(T + 1,)`` indexed by lag (e.g. :meth:`LayerJacobians.curve`).
    """
    return plot_curves(curves, path, title=title, xlabel="lag T − t", ylabel="norm (log)", paired=paired)


def plot_grad_norm_traces(
    traces: Mapping[str, Curve], path: str | Path, *, clip: float | None = None, title: str | None = None
) -> Path:
    """The total gradient norm before clipping at every optimiser step, one line per run.

    ``clip`` draws the clipping threshold. Shapes: each trace ``(steps,)``.
    """
    title = title or "Gradient norm per step (before clipping)"
    return plot_curves(traces, path, title=title, xlabel="optimiser step", ylabel="‖∇‖ (log)", hline=clip)


def plot_gate_stats(
    stats: Sequence[LayerGateStats], path: str | Path, *, title: str = "Gate statistics"
) -> Path:
    """One row per layer: a histogram of each gate, titled with its saturation rate."""
    if not stats:
        raise ValueError("plot_gate_stats: expected at least one LayerGateStats, got none")
    cols = max(len(s.gates) for s in stats)
    fig = Figure(figsize=(3.0 * cols, 2.4 * len(stats)))
    for row, entry in enumerate(stats):
        for col, (name, summary) in enumerate(entry.gates.items()):
            ax = fig.add_subplot(len(stats), cols, row * cols + col + 1)
            edges = summary.edges.tolist()
            total = max(summary.total, 1)
            widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
            ax.bar(edges[:-1], (summary.counts.double() / total).tolist(), width=widths, align="edge")
            ax.set_title(f"{entry.label} {name}\nsaturated {100 * summary.saturation:.0f}%", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_state_magnitudes(
    stats: Sequence[LayerGateStats], path: str | Path, *, title: str = "State magnitude over time"
) -> Path:
    """Mean ``|c_t|`` (LSTM) and ``|h_t|`` against ``t`` for every layer."""
    curves = {}
    for entry in stats:
        curves[f"{entry.label} |h|"] = entry.hidden_magnitude
        if entry.cell_magnitude is not None:
            curves[f"{entry.label} |c|"] = entry.cell_magnitude
    return plot_curves(curves, path, title=title, xlabel="step t", ylabel="mean magnitude", log_y=False)


def plot_attention(
    weights: Tensor,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    path: str | Path,
    *,
    title: str = "Attention",
) -> Path:
    """A heat map of attention weights: one row per target token, one column per source token.

    Shapes: ``weights`` ``(T_out, T_in)``; ``len(target_tokens) == T_out``,
    ``len(source_tokens) == T_in``.
    """
    if not isinstance(weights, Tensor) or weights.dim() != 2:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"plot_attention: expected weights of shape (T_out, T_in), got {shape}")
    T_out, T_in = weights.shape
    if len(source_tokens) != T_in or len(target_tokens) != T_out:
        raise ValueError(
            f"plot_attention: weights are {T_out}x{T_in} but got {len(target_tokens)} target and "
            f"{len(source_tokens)} source tokens"
        )
    fig = Figure(figsize=(max(3.0, 0.45 * T_in + 1.5), max(2.5, 0.4 * T_out + 1.2)))
    ax = fig.add_subplot()
    image = ax.imshow(weights.detach().float().cpu().numpy(), cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(T_in), list(source_tokens), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(T_out), list(target_tokens), fontsize=8)
    ax.set(xlabel="source", ylabel="target", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def to_curve(values: Tensor) -> list[float]:
    """A tensor as a plain list (NaN kept), for JSON files."""
    return [float(v) for v in torch.as_tensor(values).double().cpu()]
