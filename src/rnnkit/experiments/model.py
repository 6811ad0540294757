"""The small model every long-memory run trains: input encoder, one recurrent layer, linear readout."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import GRU, LSTM, RNN, RNNBase
from ..tasks import Task

CELLS: dict[str, type[RNNBase]] = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


class TaskModel(nn.Module):
    """Embedding (token tasks) or identity (feature tasks) → ``cell`` layer → linear readout.

    The readout is taken at each sequence's last valid step (``task.readout == "last"``) or at
    every step (``"every"``), so the same model fits every task in :mod:`rnnkit.tasks`.

    Shapes: ``inputs`` ``(B, T)`` ids or ``(B, T, I)``; ``lengths`` ``(B,)``; returns
    ``(B, K)`` or ``(B, T, K)``.
    """

    def __init__(
        self, task: Task, cell: str, hidden_size: int, *, num_layers: int = 1, engine: str = "auto"
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"TaskModel: cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.readout = task.readout
        if task.input_kind == "tokens":
            self.encoder: nn.Module = nn.Embedding(task.input_size, hidden_size)
            rnn_input = hidden_size
        else:
            self.encoder = nn.Identity()
            rnn_input = task.input_size
        self.rnn = CELLS[cell](rnn_input, hidden_size, num_layers, batch_first=True, engine=engine)
        self.head = nn.Linear(hidden_size, task.output_size)

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        x = self.encoder(inputs)  # (B, T, I)
        out, _ = self.rnn(x, lengths=lengths)  # (B, T, H)
        if self.readout == "last":
            index = (lengths.to(out.device) - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
            out = out.gather(1, index).squeeze(1)  # (B, H)
        return self.head(out)


def build_model(task: Task, cell: str, hidden_size: int, seed: int, engine: str = "auto") -> TaskModel:
    """A :class:`TaskModel` whose initial weights depend only on ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TaskModel(task, cell, hidden_size, engine=engine)
