"""A recurrent language model: embedding -> stacked rnnkit layer -> projection onto the vocabulary.

Shapes: ``T`` time, ``B`` batch, ``E`` embedding size, ``H`` hidden size, ``L`` layers, ``V``
vocabulary size. The model is time-major, like the layers it stacks: tokens ``(T, B)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import RnnkitError
from ..layers import GRU, LSTM, RNN

__all__ = ["LanguageModel", "LanguageModelConfig", "CELLS"]

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}

State = Tensor | tuple[Tensor, Tensor]


@dataclass
class LanguageModelConfig:
    """The architecture of a :class:`LanguageModel`; checked on construction.

    Args:
        vocab_size: tokens in the vocabulary ``V``.
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"`` (Elman, tanh).
        hidden_size: features of each layer's hidden state ``H``.
        num_layers: stacked recurrent layers ``L``.
        embedding_size: features per token ``E``; ``None`` means ``H``.
        dropout: dropout on the embeddings, between layers and before the projection (training only).
        tie_weights: share the embedding matrix with the output projection (Press & Wolf 2016);
            needs ``E == H``.
        engine: the layers' engine, ``"auto"``, ``"fused"``, ``"reference"``, ``"triton"`` or
            ``"native"`` (not part of the architecture: any engine loads any checkpoint).
    """

    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 1
    embedding_size: int | None = None
    dropout: float = 0.0
    tie_weights: bool = False
    engine: str = "auto"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise RnnkitError(f"LanguageModelConfig: {name} must be a positive integer, got {value!r}")
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        if not isinstance(self.embedding_size, int) or self.embedding_size <= 0:
            raise RnnkitError(
                f"LanguageModelConfig: embedding_size must be a positive integer, got {self.embedding_size!r}"
            )
        if self.cell not in CELLS:
            raise RnnkitError(f"unknown cell {self.cell!r}; expected one of {', '.join(CELLS)} (--cell)")
        if not 0.0 <= self.dropout < 1.0:
            raise RnnkitError(f"LanguageModelConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise RnnkitError(
                "LanguageModelConfig: tie_weights needs embedding_size == hidden_size, got "
                f"{self.embedding_size} and {self.hidden_size}; drop --embedding-size or --tie-weights"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LanguageModel(nn.Module):
    """Predict the next token at every step: ``logits[t]`` scores token ``t + 1``.

    Shapes:
        - ``tokens``: ``(T, B)`` int64 token ids in ``[0, V)``
        - ``state``: LSTM ``(h, c)``, GRU/RNN ``h``; each ``(L, B, H)``; ``None`` starts from zeros
        - returns ``logits`` ``(T, B, V)`` and the state after the last step (same layout)

    Passing the returned state back in continues the streams: running two chunks one after the
    other gives the same logits as running their concatenation (what stateful training and
    step-by-step generation rely on).
    """

    def __init__(self, config: LanguageModelConfig) -> None:
        super().__init__()
        self.config = config
        E, H, V = config.embedding_size, config.hidden_size, config.vocab_size
        self.embedding = nn.Embedding(V, E)
        self.rnn = CELLS[config.cell](
            E, H, num_layers=config.num_layers, dropout=config.dropout, engine=config.engine
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(H, V)
        if config.tie_weights:
            self.head.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # Small uniform embeddings as in Zaremba et al. (2014) and PyTorch's word_language_model;
        # N(0, 1) embeddings feed the first gates values far larger than the U(-1/√H, 1/√H) weights expect.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if not self.config.tie_weights:
            nn.init.uniform_(self.head.weight, -0.1, 0.1)

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Shapes: ``tokens`` ``(T, B)`` -> ``logits`` ``(T, B, V)``, ``state`` each ``(L, B, H)``."""
        if tokens.dim() != 2:
            raise ValueError(f"LanguageModel: expected tokens of shape (T, B), got {tuple(tokens.shape)}")
        x = self.drop(self.embedding(tokens))  # (T, B, E)
        if state is not None:
            # Under autocast a carried state may come back in bf16; the layers want the input's dtype.
            state = tuple(s.to(x.dtype) for s in state) if isinstance(state, tuple) else state.to(x.dtype)
        out, state = self.rnn(x, state)  # (T, B, H)
        return self.head(self.drop(out)), state

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero state for ``batch_size`` streams: each ``(L, B, H)``."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        device = device if device is not None else self.embedding.weight.device
        h = torch.zeros(shape, device=device)
        return (h, h.clone()) if self.config.cell == "lstm" else h
