"""Drawing next tokens for the batched decoders (seq2seq sampling, conditional generation)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["draw_tokens"]


def draw_tokens(
    logits: Tensor, temperature: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None
) -> Tensor:
    """One token id per row of ``logits`` ``(B, V)``, drawn from ``softmax(logits / temperature)``
    restricted to each row's ``top_k`` most likely tokens (``0``: all). Returns ``(B,)`` int64 on
    ``logits``' device.

    The draw happens on ``generator``'s device (a CPU generator for a model on the GPU), so a
    seeded generator gives the same tokens wherever the model runs, up to the logits' rounding.
    """
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[1]), dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, 1)
    where = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(where), 1, generator=generator).squeeze(1).to(logits.device)
