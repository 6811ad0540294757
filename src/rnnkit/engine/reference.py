"""The reference engine: loop a cell over time and let autograd do BPTT.

Readable, slow, and the yardstick every fast path is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import gru_step, lstm_step, rnn_step
from .common import LayerWeights, State, step_mask


def run(
    mode: str,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> tuple[Tensor, State]:
    """Run one direction of one layer over a whole sequence.

    Shapes: ``x`` ``(T, B, I)``; ``state`` ``(h0,)`` or ``(h0, c0)``, each ``(B, H)``;
    ``lengths`` ``(B,)`` int64 or ``None``. Returns ``output`` ``(T, B, H)`` (zero past each
    sequence's end) and the state at each sequence's last valid step.
    """
    mask = step_mask(lengths, x.shape[0], x.device)  # (T, B, 1) bool, or None
    outputs = []
    h = state[0]
    c = state[1] if mode == "lstm" else None
    for t in range(x.shape[0]):
        if mode == "lstm":
            h_new, c_new = lstm_step(x[t], (h, c), *weights)
        elif mode == "gru":
            h_new = gru_step(x[t], h, *weights)
        else:
            h_new = rnn_step(x[t], h, *weights, nonlinearity=nonlinearity)
        if mask is None:
            h, c = h_new, (c_new if mode == "lstm" else None)
            outputs.append(h_new)
        else:
            m = mask[t]  # (B, 1): sequences still running at step t
            h = torch.where(m, h_new, h)
            if mode == "lstm":
                c = torch.where(m, c_new, c)
            outputs.append(torch.where(m, h_new, torch.zeros_like(h_new)))
    out = torch.stack(outputs)  # (T, B, H)
    return out, ((h, c) if mode == "lstm" else (h,))
