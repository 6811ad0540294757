"""Many-to-one: a sequence of tokens or feature vectors -> one class.

tokens ``(B, T)`` or features ``(B, T, I)`` -> embedding (tokens only) -> stacked, optionally
bidirectional rnnkit layer -> pooled summary over the valid steps -> linear -> class logits.
Lengths are honoured everywhere, so padding never changes the result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .. import layers

__all__ = ["CELLS", "POOLINGS", "ClassifierConfig", "SequenceClassifier", "make_recurrent"]

CELLS = ("rnn", "lstm", "gru")
POOLINGS = ("last", "mean", "max")


def make_recurrent(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    bidirectional: bool = False,
    dropout: float = 0.0,
    batch_first: bool = True,
) -> layers.RNNBase:
    """An rnnkit ``RNN``/``LSTM``/``GRU`` by name (engine ``"auto"``)."""
    kinds = {"rnn": layers.RNN, "lstm": layers.LSTM, "gru": layers.GRU}
    if cell not in kinds:
        raise ValueError(f"unknown cell type {cell!r}; expected one of {', '.join(CELLS)}")
    return kinds[cell](
        input_size,
        hidden_size,
        num_layers,
        batch_first=batch_first,
        dropout=dropout if num_layers > 1 else 0.0,
        bidirectional=bidirectional,
    )


def _positive(name: str, owner: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


@dataclass
class ClassifierConfig:
    """Configuration of a :class:`SequenceClassifier`; exactly one of ``vocab_size``/``input_size``.

    ``vocab_size`` means token ids in (embedding of ``embed_size``); ``input_size`` means
    feature vectors of ``I`` values per step (time-series classification).
    """

    num_classes: int
    vocab_size: int | None = None
    input_size: int | None = None
    embed_size: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = True
    pooling: str = "last"
    dropout: float = 0.0
    pad_id: int = 0

    def __post_init__(self) -> None:
        name = "ClassifierConfig"
        _positive("num_classes", name, self.num_classes)
        if (self.vocab_size is None) == (self.input_size is None):
            raise ValueError(f"{name}: give exactly one of vocab_size (tokens) or input_size (features)")
        for field in ("embed_size", "hidden_size", "num_layers"):
            _positive(field, name, getattr(self, field))
        if self.vocab_size is not None:
            _positive("vocab_size", name, self.vocab_size)
        if self.input_size is not None:
            _positive("input_size", name, self.input_size)
        if self.cell not in CELLS:
            raise ValueError(f"{name}: unknown cell type {self.cell!r}; expected one of {', '.join(CELLS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{name}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def pool(outputs: Tensor, lengths: Tensor, how: str) -> Tensor:
    """Mean or max of ``outputs`` over each sequence's valid steps.

    Shapes: ``outputs`` ``(B, T, F)``, ``lengths`` ``(B,)`` -> ``(B, F)``.
    """
    T = outputs.shape[1]
    valid = torch.arange(T, device=outputs.device).unsqueeze(0) < lengths.to(outputs.device).unsqueeze(1)
    valid = valid.unsqueeze(2)  # (B, T, 1)
    if how == "mean":
        total = outputs.masked_fill(~valid, 0.0).sum(1)
        return total / lengths.to(outputs.device, outputs.dtype).unsqueeze(1)
    if how == "max":
        return outputs.masked_fill(~valid, float("-inf")).max(1).values
    raise ValueError(f"pool: expected 'mean' or 'max', got {how!r}")


class SequenceClassifier(nn.Module):
    """Classify whole sequences with a (bi)directional stacked rnnkit layer and a pooled summary.

    Pooling: ``last`` takes the final state at each sequence's last valid step (for the reverse
    direction that is the state after reading the whole sequence backwards); ``mean`` / ``max``
    pool the top layer's outputs over the valid steps.

    Shapes:
        - x: tokens ``(B, T)`` (int) or features ``(B, T, I)`` (float)
        - lengths: ``(B,)`` integers in ``[1, T]``, or ``None`` (all ``T``)
        - returns logits ``(B, C)``, ``C`` = ``num_classes``
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        if c.vocab_size is not None:
            self.embedding: nn.Module | None = nn.Embedding(c.vocab_size, c.embed_size, padding_idx=c.pad_id)
            rnn_input = c.embed_size
        else:
            self.embedding = None
            rnn_input = c.input_size
        self.rnn = make_recurrent(
            c.cell, rnn_input, c.hidden_size, c.num_layers, bidirectional=c.bidirectional, dropout=c.dropout
        )
        D = 2 if c.bidirectional else 1
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(D * c.hidden_size, c.num_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        B, T = x.shape[0], x.shape[1]
        if self.embedding is not None:
            if x.dim() != 2 or x.dtype.is_floating_point:
                raise ValueError(
                    f"SequenceClassifier: expected token ids (B, T), got {tuple(x.shape)} {x.dtype}"
                )
            inputs = self.dropout(self.embedding(x))  # (B, T, E)
        else:
            if x.dim() != 3 or x.shape[2] != self.config.input_size:
                raise ValueError(
                    f"SequenceClassifier: expected features (B, T, {self.config.input_size}), "
                    f"got {tuple(x.shape)}"
                )
            inputs = x
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        outputs, state = self.rnn(inputs, lengths=lengths)  # outputs (B, T, D*H)
        if self.config.pooling == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
            D = 2 if self.config.bidirectional else 1
            top = h_n[-D:]  # (D, B, H), the last layer's directions
            summary = top.transpose(0, 1).reshape(B, -1)  # (B, D*H)
        else:
            summary = pool(outputs, lengths, self.config.pooling)
        return self.head(self.dropout(summary))
