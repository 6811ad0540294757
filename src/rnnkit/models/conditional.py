"""One-to-many: generate a variable-length token sequence from one fixed-size input.

The condition (a class label through an embedding, or a feature vector through a linear map, or
anything through a caller's encoder module) becomes a vector ``z`` of ``Z`` features. ``z``
initialises every layer of the decoder (``h_0 = tanh(W z)``) and, with ``condition_every_step``,
is also concatenated to each step's input, so the condition cannot fade over long outputs.

Shapes: ``B`` batch, ``T`` steps, ``Z`` condition size, ``H`` hidden, ``L`` layers, ``V`` vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .classifier import CELLS, make_recurrent
from .sampling import draw_tokens

__all__ = ["ConditionalConfig", "ConditionalGenerator"]

State = Tensor | tuple[Tensor, Tensor]


@dataclass
class ConditionalConfig:
    """Configuration of a :class:`ConditionalGenerator`.

    Exactly one of ``num_conditions`` (class labels) or ``condition_size`` (vectors).
    """

    vocab_size: int
    num_conditions: int | None = None
    condition_size: int | None = None
    embed_size: int = 32
    condition_embed_size: int = 32
    hidden_size: int = 128
    num_layers: int = 1
    cell: str = "gru"
    condition_every_step: bool = True
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        name = "ConditionalConfig"
        if (self.num_conditions is None) == (self.condition_size is None):
            raise ValueError(
                f"{name}: give exactly one of num_conditions (labels) or condition_size (vectors)"
            )
        for field in ("vocab_size", "embed_size", "condition_embed_size", "hidden_size", "num_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: {field} must be a positive integer, got {value!r}")
        if self.cell not in CELLS:
            raise ValueError(f"{name}: unknown cell type {self.cell!r}; expected one of {', '.join(CELLS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class ConditionalGenerator(nn.Module):
    """A decoder conditioned on a fixed-size input.

    Args:
        config: the sizes; see :class:`ConditionalConfig`.
        encoder: optional module mapping the raw condition to ``(B, condition_size)`` (e.g. a small
            CNN over images); by default labels are embedded and vectors used as they are.

    Shapes:
        - condition: labels ``(B,)`` int, or vectors ``(B, condition_size)`` (after ``encoder``)
        - tokens_in: ``(B, T)`` (``<bos> y_1 .. y_{T-1}``)
        - returns logits ``(B, T, V)``
    """

    def __init__(self, config: ConditionalConfig, encoder: nn.Module | None = None):
        super().__init__()
        self.config = c = config
        self.encoder = encoder
        if c.num_conditions is not None:
            self.condition_map: nn.Module = nn.Embedding(c.num_conditions, c.condition_embed_size)
        else:
            self.condition_map = nn.Linear(c.condition_size, c.condition_embed_size)
        Z = c.condition_embed_size
        self.embedding = nn.Embedding(c.vocab_size, c.embed_size, padding_idx=c.pad_id)
        self.init_map = nn.Linear(Z, c.num_layers * c.hidden_size * (2 if c.cell == "lstm" else 1))
        rnn_input = c.embed_size + (Z if c.condition_every_step else 0)
        self.rnn = make_recurrent(c.cell, rnn_input, c.hidden_size, c.num_layers, dropout=c.dropout)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)

    def encode_condition(self, condition: Tensor) -> Tensor:
        """Shapes: labels ``(B,)`` or vectors ``(B, condition_size)`` -> ``(B, Z)``."""
        if self.encoder is not None:
            condition = self.encoder(condition)
        if self.config.num_conditions is not None:
            if condition.dim() != 1 or condition.dtype.is_floating_point:
                raise ValueError(f"ConditionalGenerator: expected labels (B,), got {tuple(condition.shape)}")
            if condition.numel() and (condition.min() < 0 or condition.max() >= self.config.num_conditions):
                raise ValueError(
                    f"ConditionalGenerator: condition labels must be in [0, {self.config.num_conditions})"
                )
        elif condition.dim() != 2 or condition.shape[1] != self.config.condition_size:
            raise ValueError(
                f"ConditionalGenerator: expected vectors (B, {self.config.condition_size}), "
                f"got {tuple(condition.shape)}"
            )
        return self.condition_map(condition)

    def init_state(self, z: Tensor) -> State:
        c = self.config
        B = z.shape[0]
        flat = torch.tanh(self.init_map(z))  # (B, n*L*H)
        # (B, n*L*H) -> (n, L, B, H): one (L, B, H) tensor per state part
        parts = flat.view(B, -1, c.num_layers, c.hidden_size).permute(1, 2, 0, 3).contiguous()
        return (parts[0], parts[1]) if c.cell == "lstm" else parts[0]

    def _inputs(self, tokens: Tensor, z: Tensor) -> Tensor:
        x = self.dropout(self.embedding(tokens))  # (B, T, E)
        if self.config.condition_every_step:
            x = torch.cat([x, z.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=2)  # (B, T, E+Z)
        return x

    def forward(self, condition: Tensor, tokens_in: Tensor) -> Tensor:
        z = self.encode_condition(condition)
        out, _ = self.rnn(self._inputs(tokens_in, z), self.init_state(z))  # (B, T, H)
        return self.head(self.dropout(out))

    def step(self, tokens: Tensor, state: State, z: Tensor) -> tuple[Tensor, State]:
        """One step. Shapes: ``tokens`` ``(B,)``, ``z`` ``(B, Z)`` -> logits ``(B, V)`` and state."""
        out, state = self.rnn(self._inputs(tokens.unsqueeze(1), z), state)
        return self.head(out.squeeze(1)), state

    def loss(self, condition: Tensor, tokens: Tensor) -> Tensor:
        """Mean token cross-entropy; ``tokens`` ``(B, T+1)`` is ``<bos> y_1 .. y_T <eos>`` padded."""
        logits = self(condition, tokens[:, :-1])
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=self.config.pad_id
        )

    @torch.no_grad()
    def generate(
        self,
        condition: Tensor,
        max_len: int = 30,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """Generate one sequence per condition (no ``<eos>``); state carried step to step."""
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max length must be a positive integer, got {max_len!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        c = self.config
        z = self.encode_condition(condition)
        state = self.init_state(z)
        B = z.shape[0]
        tokens = torch.full((B,), c.bos_id, dtype=torch.long, device=z.device)
        banned = torch.tensor([c.pad_id, c.bos_id], device=z.device)
        outputs = []
        done = torch.zeros(B, dtype=torch.bool, device=z.device)
        for _ in range(max_len):
            logits, state = self.step(tokens, state, z)
            logits = logits.index_fill(1, banned, float("-inf"))
            if greedy:
                tokens = logits.argmax(1)
            else:
                tokens = draw_tokens(logits, temperature, top_k, generator)
            outputs.append(tokens)
            done |= tokens == c.eos_id
            if bool(done.all()):
                break
        result = []
        for seq in torch.stack(outputs, 1).tolist():
            result.append(seq[: seq.index(c.eos_id)] if c.eos_id in seq else seq)
        return result
