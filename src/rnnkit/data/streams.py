"""Language-model data: splits of a token stream, laid out as ``B`` contiguous streams.

Stateful training reads the corpus as ``B`` parallel streams: the token ids are cut into ``B``
equal contiguous pieces, column ``b`` of the ``(N, B)`` layout being piece ``b``. Consecutive
chunks of ``T = bptt`` rows are consecutive pieces of text in every column, so the hidden state
at the end of one chunk is the right starting state for the next.

Shapes: ``N`` steps per stream, ``B`` streams (batch), ``T`` steps per chunk (``bptt``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import RnnkitError
from .text import DEFAULT_CORPUS_NAME, default_corpus, read_text
from .vocab import LEVELS, Vocabulary, tokenize

__all__ = ["LMDataConfig", "LMData", "StreamBatches", "batchify", "eval_streams", "load_lm_data"]


@dataclass
class LMDataConfig:
    """Where the text comes from and how it is cut; checked on construction.

    Args:
        text: a UTF-8 file (``.gz`` allowed) or folder; ``None`` reads the embedded default corpus.
        valid, test: files for those splits; when absent, the last ``valid_fraction`` and
            ``test_fraction`` of ``text`` are held out (test after valid, at the very end).
        level: ``"char"`` or ``"word"``.
        vocab_size: cap on the word vocabulary, ``<eos>`` and ``<unk>`` included (word level only).
        batch_size: global number of streams ``B`` (split over DDP ranks).
        bptt: steps per chunk ``T``: gradients flow back at most this far.
    """

    text: str | None = None
    valid: str | None = None
    test: str | None = None
    level: str = "char"
    vocab_size: int = 10000
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    batch_size: int = 32
    bptt: int = 64

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise RnnkitError(f"--level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        for name in ("batch_size", "bptt", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                flag = "--" + name.replace("_", "-")
                raise RnnkitError(f"{flag} must be a positive integer, got {value!r}")
        if self.vocab_size < 3:
            raise RnnkitError(
                f"--vocab-size must be at least 3 (<eos>, <unk> and a word), got {self.vocab_size}"
            )
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                flag = "--" + name.replace("_", "-")
                raise RnnkitError(f"{flag} must be in [0, 0.5), got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut ``ids`` ``(n,)`` into ``batch_size`` contiguous streams: ``(N, B)``, trailing tokens dropped."""
    N = ids.numel() // batch_size
    return ids[: N * batch_size].view(batch_size, N).t().contiguous()  # (N, B): column b is piece b


class StreamBatches:
    """Chunks ``(inputs, targets)``, each ``(T, B_rank)``, over the contiguous streams of a split.

    Under DDP each rank reads its own ``B / world_size`` columns of the global ``(N, B)`` layout,
    so the ranks together see exactly what one process with batch ``B`` sees. The order is the
    same every epoch; the last chunk may be shorter than ``bptt``.
    """

    def __init__(self, ids: Tensor, batch_size: int, bptt: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise RnnkitError(
                f"--batch-size {batch_size} does not divide over {world_size} processes; "
                f"use a multiple of {world_size}"
            )
        streams = batchify(ids, batch_size)  # (N, B)
        per_rank = batch_size // world_size
        self.streams = streams[:, rank * per_rank : (rank + 1) * per_rank]  # (N, B_rank)
        self.bptt = bptt
        self.batch_size = per_rank

    def __len__(self) -> int:
        N = self.streams.shape[0]
        return max(0, -(-(N - 1) // self.bptt))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        N = self.streams.shape[0]
        for start in range(0, N - 1, self.bptt):
            T = min(self.bptt, N - 1 - start)
            yield self.streams[start : start + T], self.streams[start + 1 : start + 1 + T]

    @property
    def tokens(self) -> int:
        """Targets per epoch on this rank."""
        return (self.streams.shape[0] - 1) * self.streams.shape[1]


@dataclass
class LMData:
    """A vocabulary and the token ids of each split (``(n,)`` int64; ``test`` may be empty)."""

    vocab: Vocabulary
    train: Tensor
    valid: Tensor
    test: Tensor
    source: str

    def summary(self) -> str:
        return (
            f"{self.source}: {self.vocab.level} level, vocabulary {len(self.vocab)}, tokens "
            f"train {self.train.numel():,} / valid {self.valid.numel():,} / test {self.test.numel():,}"
        )


def _split_tail(tokens: list[str], n: int) -> tuple[list[str], list[str]]:
    return (tokens[: len(tokens) - n], tokens[len(tokens) - n :]) if n > 0 else (tokens, [])


def load_lm_data(config: LMDataConfig, vocab: Vocabulary | None = None) -> LMData:
    """Read, tokenise, split and encode the text that ``config`` names.

    With ``vocab`` (a resumed run) the saved vocabulary is used instead of building one.
    Raises :class:`RnnkitError` for unreadable text or splits too short to train on.
    """
    if config.text is None:
        text = default_corpus()
        source = f"{DEFAULT_CORPUS_NAME} (Python {sys.version_info.major}.{sys.version_info.minor})"
    else:
        text = read_text(config.text)
        source = str(config.text)
    train = tokenize(text, config.level)
    total = len(train)
    # Files given for valid/test replace the held-out fractions (both of the whole text); test is
    # cut from the very end, valid just before it.
    test = tokenize(read_text(config.test), config.level) if config.test else None
    if test is None:
        train, test = _split_tail(train, int(total * config.test_fraction))
    valid = tokenize(read_text(config.valid), config.level) if config.valid else None
    if valid is None:
        train, valid = _split_tail(train, int(total * config.valid_fraction))
    if vocab is None:
        # Characters: every split, so no held-out character is unknown. Words: train only, capped.
        chars = train + valid + test if config.level == "char" else train
        vocab = Vocabulary.build(chars, config.level, config.vocab_size)
    elif vocab.level != config.level:
        raise RnnkitError(f"--level {config.level} does not match the checkpoint's {vocab.level}")
    data = LMData(
        vocab,
        torch.tensor(vocab.encode(train, what="the training text"), dtype=torch.long),
        torch.tensor(vocab.encode(valid, what="the validation text"), dtype=torch.long),
        torch.tensor(vocab.encode(test, what="the test text"), dtype=torch.long),
        source,
    )
    B = config.batch_size
    if data.train.numel() // B < 2:
        raise RnnkitError(
            f"the training text has {data.train.numel()} tokens, too few for --batch-size {B} "
            f"(each of the {B} streams needs at least 2 tokens); use a smaller --batch-size or more text"
        )
    if config.valid and data.valid.numel() < 2:
        raise RnnkitError(f"{config.valid}: the validation text needs at least 2 tokens")
    return data


def eval_streams(ids: Tensor, batch_size: int, bptt: int) -> StreamBatches | None:
    """Streams for evaluating a split: at most ``batch_size`` of them, each at least ``bptt`` long.

    Fewer streams on a short split keep every stream long enough that most predictions see
    context; ``None`` when the split has fewer than 2 tokens.
    """
    if ids.numel() < 2:
        return None
    streams = max(1, min(batch_size, (ids.numel() - 1) // max(bptt, 1)))
    return StreamBatches(ids, streams, bptt)
