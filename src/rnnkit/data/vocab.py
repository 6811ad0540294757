"""Tokenisation (characters or whitespace-separated words) and the vocabulary that maps tokens to ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import RnnkitError

__all__ = ["LEVELS", "EOS", "UNK", "tokenize", "Vocabulary"]

LEVELS = ("char", "word")
EOS = "<eos>"
UNK = "<unk>"


def tokenize(text: str, level: str) -> list[str]:
    """Split ``text`` into tokens.

    ``char``: every character (newlines included). ``word``: whitespace-separated words with an
    ``<eos>`` at the end of every line, the Penn Treebank convention (Mikolov's files, and the
    Zaremba et al. / PyTorch example readers).
    """
    if level == "char":
        return list(text)
    if level == "word":
        tokens: list[str] = []
        for line in text.splitlines():
            tokens.extend(line.split())
            tokens.append(EOS)
        return tokens
    raise ValueError(f"tokenize: unknown level {level!r}; expected one of {LEVELS}")


@dataclass
class Vocabulary:
    """Tokens and their ids; ``tokens[i]`` has id ``i``.

    Word level has ``<eos>`` (id 0) and ``<unk>`` (id 1), and encodes out-of-vocabulary words as
    ``<unk>``. Character level has neither: its vocabulary covers every character of the corpus,
    and a character outside it is an error (there is no honest probability to give it).
    """

    tokens: list[str]
    level: str
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"Vocabulary: unknown level {self.level!r}; expected one of {LEVELS}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("Vocabulary: tokens must be unique")
        if not self.tokens:
            raise ValueError("Vocabulary: needs at least one token")
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, tokens: Iterable[str], level: str, max_size: int | None = None) -> Vocabulary:
        """The vocabulary of ``tokens``: characters sorted; words by frequency, capped at ``max_size``.

        ``max_size`` counts the special tokens; ties in frequency keep the first-seen order, so
        the result does not depend on hashing.
        """
        counts = Counter(tokens)
        if level == "char":
            return cls(sorted(counts), level)
        specials = [EOS, UNK]
        words = [w for w, _ in counts.most_common() if w not in specials]
        if max_size is not None:
            if max_size < len(specials) + 1:
                raise ValueError(f"Vocabulary: max_size must be at least {len(specials) + 1}, got {max_size}")
            words = words[: max_size - len(specials)]
        return cls(specials + words, level)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def unk_id(self) -> int | None:
        return self.index.get(UNK) if self.level == "word" else None

    @property
    def start_token(self) -> str:
        """What generation feeds first when there is no prime: a line break, where lines begin."""
        if self.level == "word":
            return EOS
        return "\n" if "\n" in self.index else self.tokens[0]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The distinct tokens of ``tokens`` that are not in the vocabulary, in first-seen order."""
        return list(dict.fromkeys(t for t in tokens if t not in self.index))

    def encode(self, tokens: Sequence[str], *, what: str = "text") -> list[int]:
        """Token ids; unknown words become ``<unk>``, unknown characters raise :class:`RnnkitError`."""
        unk = self.unk_id
        if unk is not None:
            return [self.index.get(t, unk) for t in tokens]
        missing = self.unknown(tokens)
        if missing:
            shown = ", ".join(repr(t) for t in missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise RnnkitError(
                f"{what} has {len(missing)} character(s) the model's vocabulary lacks: {shown}; "
                "use only characters the model was trained on"
            )
        return [self.index[t] for t in tokens]

    def decode_token(self, token_id: int) -> str:
        """One token as text to print: words get a leading space, ``<eos>`` is a line break."""
        token = self.tokens[token_id]
        if self.level == "char":
            return token
        return "\n" if token == EOS else " " + token

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.decode_token(i) for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        try:
            return cls(list(data["tokens"]), data["level"])
        except (KeyError, TypeError, ValueError) as err:
            raise RnnkitError(
                f"the saved vocabulary is malformed ({err}); the checkpoint is corrupt"
            ) from None
