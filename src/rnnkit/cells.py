"""Recurrent cells: one time step each, written from the equations.

Cells are math. Each cell type is a pure function ``step(x_t, state, weights) -> state``
plus an ``nn.Module`` with the parameters of ``torch.nn.RNNCell`` / ``LSTMCell`` /
``GRUCell`` (same names, layouts and initialisation), so either can be swapped in.

Shapes: ``B`` batch, ``I`` input size, ``H`` hidden size, ``G`` gate width
(``H`` for RNN, ``4H`` for LSTM, ``3H`` for GRU).

- ``x_t``: ``(B, I)``; ``h``, ``c``: ``(B, H)``
- ``weight_ih``: ``(G, I)``; ``weight_hh``: ``(G, H)``; ``bias_ih``, ``bias_hh``: ``(G,)``

Gate order follows PyTorch: LSTM ``i, f, g, o``; GRU ``r, z, n``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GATES",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "rnn_step",
    "lstm_step",
    "gru_step",
    "gate_width",
]

#: Number of gate blocks of width ``H`` per cell type: ``G = GATES[mode] * H``.
GATES: dict[str, int] = {"rnn": 1, "lstm": 4, "gru": 3}


def gate_width(mode: str, hidden_size: int) -> int:
    """Rows ``G`` of ``weight_ih``/``weight_hh`` for a cell type."""
    return GATES[mode] * hidden_size


def rnn_step(
    x_t: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """Elman RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, ``act`` = tanh or relu."""
    pre = F.linear(x_t, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)  # (B, H)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_step(
    x_t: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """LSTM.

    ``i = σ(W_ii x + b_ii + W_hi h + b_hi)``  (input gate)
    ``f = σ(W_if x + b_if + W_hf h + b_hf)``  (forget gate)
    ``g = tanh(W_ig x + b_ig + W_hg h + b_hg)``  (cell candidate)
    ``o = σ(W_io x + b_io + W_ho h + b_ho)``  (output gate)
    ``c' = f * c + i * g``;  ``h' = o * tanh(c')``
    """
    h, c = state
    gates = F.linear(x_t, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=1)  # each (B, H)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_next = f * c + i * g
    h_next = o * torch.tanh(c_next)
    return h_next, c_next


def gru_step(
    x_t: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
) -> Tensor:
    """GRU, PyTorch's formulation (the reset gate scales the hidden projection, bias included).

    ``r = σ(W_ir x + b_ir + W_hr h + b_hr)``  (reset gate)
    ``z = σ(W_iz x + b_iz + W_hz h + b_hz)``  (update gate)
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``  (candidate)
    ``h' = (1 - z) * n + z * h``
    """
    gx = F.linear(x_t, weight_ih, bias_ih)  # (B, 3H)
    gh = F.linear(h, weight_hh, bias_hh)  # (B, 3H)
    xr, xz, xn = gx.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


class _CellBase(nn.Module):
    """Parameters shared by the three cells, laid out as ``torch.nn.*Cell``."""

    mode: str

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(
                f"{type(self).__name__}: input_size and hidden_size must be positive, "
                f"got {input_size} and {hidden_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        G = gate_width(self.mode, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(G, input_size))
        self.weight_hh = nn.Parameter(torch.empty(G, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G))
            self.bias_hh = nn.Parameter(torch.empty(G))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/√H, 1/√H), as PyTorch does."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        return s if self.bias else s + ", bias=False"

    def _check(self, x: Tensor, hx: Tensor | None) -> tuple[Tensor, bool]:
        name = type(self).__name__
        if x.dim() not in (1, 2):
            raise ValueError(f"{name}: expected input of shape (B, I) or (I,), got {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected input feature size {self.input_size}, got {x.shape[-1]}")
        if x.dtype != self.weight_ih.dtype:
            raise TypeError(
                f"{name}: input dtype {x.dtype} does not match weight dtype {self.weight_ih.dtype}"
            )
        batched = x.dim() == 2
        if hx is not None and hx.shape != (*x.shape[:-1], self.hidden_size):
            raise ValueError(
                f"{name}: expected state of shape {(*x.shape[:-1], self.hidden_size)}, got {tuple(hx.shape)}"
            )
        return (x if batched else x.unsqueeze(0)), batched

    def _zeros(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.hidden_size)


class RNNCell(_CellBase):
    """Elman RNN cell, a drop-in for ``torch.nn.RNNCell``.

    Shapes: input ``(B, I)`` or ``(I,)``; ``hx`` ``(B, H)`` or ``(H,)``; returns ``h'`` of the same shape.
    """

    mode = "rnn"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, batched = self._check(input, hx)
        h = self._zeros(x) if hx is None else hx.reshape(x.shape[0], -1)
        args = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        h = rnn_step(x, h, *args, nonlinearity=self.nonlinearity)
        return h if batched else h.squeeze(0)


class LSTMCell(_CellBase):
    """LSTM cell, a drop-in for ``torch.nn.LSTMCell``.

    Shapes: input ``(B, I)`` or ``(I,)``; ``hx = (h, c)`` each ``(B, H)`` or ``(H,)``;
    returns ``(h', c')``.
    """

    mode = "lstm"

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        x, batched = self._check(input, None if hx is None else hx[0])
        if hx is None:
            h, c = self._zeros(x), self._zeros(x)
        else:
            self._check(input, hx[1])
            h, c = hx[0].reshape(x.shape[0], -1), hx[1].reshape(x.shape[0], -1)
        args = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        h, c = lstm_step(x, (h, c), *args)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_CellBase):
    """GRU cell, a drop-in for ``torch.nn.GRUCell``.

    Shapes: input ``(B, I)`` or ``(I,)``; ``hx`` ``(B, H)`` or ``(H,)``; returns ``h'``.
    """

    mode = "gru"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, batched = self._check(input, hx)
        h = self._zeros(x) if hx is None else hx.reshape(x.shape[0], -1)
        h = gru_step(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if batched else h.squeeze(0)
