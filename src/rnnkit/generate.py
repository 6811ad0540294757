"""Sampling text from a language model, one token at a time, the state carried from step to step.

The prime is read once (one forward over all its tokens); after that each step feeds only the
token just sampled, with the state the previous step returned, so producing ``N`` tokens costs
``N`` single-step forwards whatever the prime's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .data.vocab import Vocabulary, tokenize
from .errors import RnnkitError
from .models import LanguageModel

__all__ = ["SamplingConfig", "filter_logits", "sample_ids", "generate"]


@dataclass
class SamplingConfig:
    """How to pick each next token; checked on construction.

    Args:
        length: tokens to generate after the prime.
        temperature: divides the logits; ``0`` means greedy (always the most likely token).
        top_k: sample among the ``k`` most likely tokens only (``0``: all).
        top_p: sample among the smallest set of tokens whose probabilities sum to at least ``p``
            (nucleus sampling, Holtzman et al. 2020); ``1``: all.
        seed: seeds the sampler's own generator (``None``: nondeterministic).
    """

    length: int = 300
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length < 0:
            raise RnnkitError(f"--length must be a non-negative integer, got {self.length!r}")
        if not self.temperature >= 0:
            raise RnnkitError(f"--temperature must be >= 0 (0 is greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise RnnkitError(f"--top-k must be a non-negative integer (0: off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise RnnkitError(f"--top-p must be in (0, 1] (1: off), got {self.top_p!r}")


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to ``-inf`` every logit outside the top ``k`` and outside the nucleus ``p``.

    Shapes: ``logits`` ``(V,)`` -> ``(V,)``. The most likely token always survives.
    """
    logits = logits.clone()
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = -torch.inf
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (so the first always stays).
        drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        logits[order[drop]] = -torch.inf
    return logits


def _pick(logits: Tensor, config: SamplingConfig, generator: torch.Generator) -> int:
    """One token id from ``logits`` ``(V,)``."""
    if config.temperature == 0:
        return int(torch.argmax(logits))
    logits = filter_logits(logits.float() / config.temperature, config.top_k, config.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def sample_ids(model: LanguageModel, prime_ids: list[int], config: SamplingConfig) -> Iterator[int]:
    """Yield ``config.length`` token ids continuing ``prime_ids`` (non-empty), one at a time.

    Shapes: the prime runs as ``(T_prime, 1)``, then every step as ``(1, 1)``; the state, each
    ``(L, 1, H)``, is carried from one step to the next.
    """
    if not prime_ids:
        raise ValueError("sample_ids: prime_ids must not be empty")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu")
    if config.seed is not None:
        generator.manual_seed(config.seed)
    else:
        generator.seed()
    tokens = torch.tensor(prime_ids, dtype=torch.long, device=device).unsqueeze(1)  # (T_prime, 1)
    logits, state = model(tokens)
    last = logits[-1, 0].cpu()  # (V,): scores for the token after the prime
    for _ in range(config.length):
        token = _pick(last, config, generator)
        yield token
        step = torch.tensor([[token]], dtype=torch.long, device=device)  # (1, 1)
        logits, state = model(step, state)
        last = logits[-1, 0].cpu()


def generate(model: LanguageModel, vocab: Vocabulary, prime: str, config: SamplingConfig) -> Iterator[str]:
    """An iterator over the text of each generated token (the prime itself is not repeated).

    An empty prime starts from a line break (``<eos>`` at word level). The prime is checked
    here, before anything is generated: characters outside the vocabulary raise
    :class:`RnnkitError`; unknown words become ``<unk>``.
    """
    tokens = tokenize(prime, vocab.level) if prime else []
    if vocab.level == "word" and tokens and not prime.endswith("\n"):
        tokens = tokens[:-1]  # tokenize ends every line with <eos>; an unfinished prime has none
    ids = vocab.encode(tokens, what="the prime") if tokens else []
    if not ids:
        ids = [vocab.index[vocab.start_token]]
    return (vocab.decode_token(token_id) for token_id in sample_ids(model, ids, config))
