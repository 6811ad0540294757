"""Token vocabularies for the task data sets: characters or whitespace words, with specials.

Ids 0..3 are always ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` so models can rely on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

__all__ = ["PAD", "BOS", "EOS", "UNK", "SPECIALS", "Vocabulary", "tokenize"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
LEVELS = ("char", "word")


def tokenize(text: str, level: str) -> list[str]:
    """Characters, or whitespace-separated words."""
    if level == "char":
        return list(text)
    if level == "word":
        return text.split()
    raise ValueError(f"unknown token level {level!r}; expected one of {', '.join(LEVELS)}")


class Vocabulary:
    """Map tokens to ids and back; unknown tokens map to ``<unk>``."""

    def __init__(self, tokens: Iterable[str], level: str = "char"):
        if level not in LEVELS:
            raise ValueError(f"unknown token level {level!r}; expected one of {', '.join(LEVELS)}")
        self.level = level
        self.itos: list[str] = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(
        cls, texts: Iterable[str], level: str = "char", min_freq: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """The tokens of ``texts`` seen at least ``min_freq`` times, most frequent first."""
        counts = Counter(tok for text in texts for tok in tokenize(text, level))
        ranked = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[:max_size]
        return cls(ranked, level)

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.stoi.get(t, self.unk_id) for t in tokenize(text, self.level)]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def unknown(self, text: str) -> list[str]:
        """The tokens of ``text`` outside the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(t for t in tokenize(text, self.level) if t not in self.stoi))

    def decode(self, ids: Iterable[int]) -> str:
        toks = [self.itos[i] for i in ids if i >= len(SPECIALS) or i == self.unk_id]
        return ("" if self.level == "char" else " ").join(toks)

    def to_dict(self) -> dict:
        return {"level": self.level, "itos": self.itos}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        return cls(data["itos"][len(SPECIALS) :], data["level"])
