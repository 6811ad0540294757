"""Attention over encoder states: additive (Bahdanau) and dot / general (Luong) scoring, masked.

One decoder query attends to ``S`` encoder states (the keys, which are also the values). Padding
positions get a score of ``-inf`` before the softmax, so their weights are exactly 0 and the
context never mixes in padding.

Shapes: ``B`` batch, ``S`` source length, ``Q`` query size, ``K`` key size, ``A`` attention size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SCORES", "Attention", "lengths_to_mask"]

SCORES = ("additive", "dot", "general")


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``True`` where a position is inside its sequence.

    Shapes: ``lengths`` ``(B,)`` -> mask ``(B, max_len)`` bool.
    """
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.to(steps.device).unsqueeze(1)


class Attention(nn.Module):
    """Score one query against every key, softmax over valid keys, return the weighted sum.

    Scores (``q`` query, ``k_s`` key ``s``):

    - ``additive`` (Bahdanau et al. 2015): ``v^T tanh(W_q q + W_k k_s)``
    - ``dot`` (Luong et al. 2015): ``q^T k_s`` (needs ``Q == K``)
    - ``general`` (Luong et al. 2015): ``q^T W k_s``

    Args:
        query_size: ``Q``, features of the decoder query.
        key_size: ``K``, features of each encoder state.
        score: one of ``"additive"``, ``"dot"``, ``"general"``.
        attention_size: ``A``, the hidden width of the additive score (default ``K``).

    Shapes:
        - query: ``(B, Q)`` (one step) or ``(B, T, Q)`` (``T`` decoder steps at once)
        - keys: ``(B, S, K)``
        - mask: ``(B, S)`` bool, ``True`` on valid positions (at least one per row), or ``None``
        - returns ``context`` ``(B, K)`` and ``weights`` ``(B, S)`` (rows sum to 1, 0 on padding);
          ``(B, T, K)`` and ``(B, T, S)`` for a ``(B, T, Q)`` query
    """

    def __init__(
        self, query_size: int, key_size: int, score: str = "additive", attention_size: int | None = None
    ):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"Attention: score must be one of {', '.join(SCORES)}; got {score!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(
                f"Attention: dot scoring needs query_size == key_size, got {query_size} and {key_size}; "
                "use score='general' to learn the map between them"
            )
        self.score = score
        self.query_size = query_size
        self.key_size = key_size
        if score == "additive":
            A = attention_size or key_size
            self.query_proj = nn.Linear(query_size, A, bias=False)
            self.key_proj = nn.Linear(key_size, A)
            self.v = nn.Linear(A, 1, bias=False)
        elif score == "general":
            self.key_proj = nn.Linear(key_size, query_size, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """The query-independent part of the score, computed once per source sentence.

        Shapes: ``keys`` ``(B, S, K)`` -> ``(B, S, A)`` additive, ``(B, S, Q)`` general, keys for dot.
        """
        if self.score == "dot":
            return keys
        return self.key_proj(keys)

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        single = query.dim() == 2
        q = query.unsqueeze(1) if single else query  # (B, T, Q)
        pk = self.project_keys(keys) if projected_keys is None else projected_keys
        if self.score == "additive":
            # (B, 1, S, A) + (B, T, 1, A) -> (B, T, S, A) -> (B, T, S)
            scores = self.v(torch.tanh(pk.unsqueeze(1) + self.query_proj(q).unsqueeze(2))).squeeze(3)
        else:
            scores = torch.bmm(q, pk.transpose(1, 2))  # (B, T, Q) @ (B, Q, S) -> (B, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=2)  # (B, T, S)
        context = torch.bmm(weights, keys)  # (B, T, S) @ (B, S, K) -> (B, T, K)
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights
