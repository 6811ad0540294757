"""Types and helpers shared by the engines."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

#: ``(h,)`` for RNN and GRU, ``(h, c)`` for LSTM; each ``(B, H)``.
State = tuple[Tensor, ...]


class LayerWeights(NamedTuple):
    """Parameters of one direction of one layer, in PyTorch's layout.

    Shapes: ``weight_ih`` ``(G, I)``, ``weight_hh`` ``(G, H)``, biases ``(G,)`` or ``None``.
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None


def step_mask(lengths: Tensor | None, T: int, device: torch.device) -> Tensor | None:
    """``(T, B, 1)`` bool mask, true where step ``t`` is inside sequence ``b``; ``None`` if all are."""
    if lengths is None:
        return None
    steps = torch.arange(T, device=device).unsqueeze(1)  # (T, 1)
    return (steps < lengths.to(device).unsqueeze(0)).unsqueeze(2)  # (T, B, 1)


def reverse_within_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of ``x`` ``(T, B, ...)`` within its own length; padding stays put.

    This is its own inverse, so the same call maps a reversed output back.
    """
    T = x.shape[0]
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    lens = lengths.to(x.device).unsqueeze(0)  # (1, B)
    index = torch.where(steps < lens, lens - 1 - steps, steps)  # (T, B)
    index = index.reshape(T, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)
