"""The adding problem, copy memory and selective recall, each with a sequence-length knob."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Task, TaskBatch, check_positive_int

IGNORE = -100  # target value that cross-entropy skips (torch's default ignore_index)


def _last_step(prediction: Tensor, name: str) -> Tensor:
    if prediction.dim() != 2:
        raise ValueError(f"{name}: expected predictions of shape (B, K), got {tuple(prediction.shape)}")
    return prediction


@dataclass
class AddingTask(Task):
    """The adding problem (Hochreiter & Schmidhuber 1997; the variant of Le et al. 2015).

    Each step carries two features: a value drawn from U(0, 1) and a marker that is 1 at exactly
    two steps, one in the first half of the sequence and one in the second. The target is the sum
    of the two marked values, read at the last step; the error is the mean squared error.
    Predicting the mean (1.0) scores ``Var = 1/6`` without remembering anything.

    Shapes: ``inputs`` ``(B, T, 2)`` float; ``targets`` ``(B,)``; predictions ``(B, 1)``.
    """

    length: int
    solve_mse: float = 0.01

    name: ClassVar[str] = "adding"
    input_kind: ClassVar[str] = "features"
    readout: ClassVar[str] = "last"
    metric_name: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_positive_int("AddingTask", "length", self.length, minimum=2)
        if not 0 < self.solve_mse < 1 / 6:
            raise ValueError(f"AddingTask: solve_mse must be in (0, 1/6), got {self.solve_mse!r}")

    input_size = property(lambda self: 2)
    output_size = property(lambda self: 1)
    solved_at = property(lambda self: self.solve_mse)
    chance = property(lambda self: 1 / 6)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        self._check_batch_size(batch_size)
        B, T, half = batch_size, self.length, self.length // 2
        values = torch.rand(B, T, generator=generator)
        first = torch.randint(0, half, (B, 1), generator=generator)
        second = torch.randint(half, T, (B, 1), generator=generator)
        markers = torch.zeros(B, T).scatter_(1, first, 1.0).scatter_(1, second, 1.0)
        inputs = torch.stack([values, markers], dim=2)  # (B, T, 2)
        targets = (values.gather(1, first) + values.gather(1, second)).squeeze(1)  # (B,)
        return TaskBatch(inputs, targets, torch.full((B,), T, dtype=torch.int64))

    def loss(self, prediction: Tensor, batch: TaskBatch) -> Tensor:
        return F.mse_loss(_last_step(prediction, "AddingTask").squeeze(1), batch.targets)

    def metric(self, prediction: Tensor, batch: TaskBatch) -> float:
        return float(self.loss(prediction.detach(), batch))


@dataclass
class CopyTask(Task):
    """Copy memory (Arjovsky, Shah & Bengio 2016).

    The input shows ``copy_length`` symbols from an alphabet of ``symbols``, then ``length - 1``
    blanks, a delimiter, and ``copy_length`` more blanks; the model must output blanks until the
    delimiter and then the symbols in order. Tokens: 0 blank, ``1..symbols`` data, ``symbols + 1``
    delimiter. The loss is cross-entropy over every step (as in the paper); the metric is the
    accuracy on the ``copy_length`` recalled symbols (chance ``1/symbols``).

    Shapes: ``inputs`` and ``targets`` ``(B, T)`` with ``T = length + 2 * copy_length``;
    predictions ``(B, T, symbols + 1)``.
    """

    length: int
    symbols: int = 8
    copy_length: int = 10
    solve_accuracy: float = 0.99

    name: ClassVar[str] = "copy"
    input_kind: ClassVar[str] = "tokens"
    readout: ClassVar[str] = "every"
    metric_name: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive_int("CopyTask", "length", self.length)
        check_positive_int("CopyTask", "symbols", self.symbols, minimum=2)
        check_positive_int("CopyTask", "copy_length", self.copy_length)
        if not 0 < self.solve_accuracy <= 1:
            raise ValueError(f"CopyTask: solve_accuracy must be in (0, 1], got {self.solve_accuracy!r}")

    input_size = property(lambda self: self.symbols + 2)
    output_size = property(lambda self: self.symbols + 1)
    solved_at = property(lambda self: self.solve_accuracy)
    chance = property(lambda self: 1 / self.symbols)

    @property
    def delimiter(self) -> int:
        return self.symbols + 1

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        self._check_batch_size(batch_size)
        B, K, delay = batch_size, self.copy_length, self.length
        T = delay + 2 * K
        data = torch.randint(1, self.symbols + 1, (B, K), generator=generator)
        inputs = torch.zeros(B, T, dtype=torch.int64)
        inputs[:, :K] = data
        inputs[:, K + delay - 1] = self.delimiter
        targets = torch.zeros(B, T, dtype=torch.int64)
        targets[:, T - K :] = data
        return TaskBatch(inputs, targets, torch.full((B,), T, dtype=torch.int64))

    def _check(self, prediction: Tensor, batch: TaskBatch) -> None:
        want = (batch.batch_size, batch.steps, self.output_size)
        if tuple(prediction.shape) != want:
            raise ValueError(f"CopyTask: expected predictions of shape {want}, got {tuple(prediction.shape)}")

    def loss(self, prediction: Tensor, batch: TaskBatch) -> Tensor:
        self._check(prediction, batch)
        return F.cross_entropy(prediction.flatten(0, 1), batch.targets.flatten())  # over (B*T, K)

    def metric(self, prediction: Tensor, batch: TaskBatch) -> float:
        self._check(prediction, batch)
        K = self.copy_length
        recalled = prediction[:, -K:].argmax(dim=2)  # (B, K)
        return float((recalled == batch.targets[:, -K:]).float().mean())


COUNTRIES = ("France", "Spain", "Italy", "Germany", "Japan", "Brazil", "Greece", "Poland")
LANGUAGES = ("French", "Spanish", "Italian", "German", "Japanese", "Portuguese", "Greek", "Polish")
FILLERS = (
    "the", "weather", "was", "nice", "and", "we", "often", "went", "to", "a", "small", "market",
    "near", "river", "every", "day", "my", "friends", "liked", "long", "walks", "in", "old", "town",
)  # fmt: skip


@dataclass
class RecallTask(Task):
    """Selective recall: "I grew up in France ... I am fluent in ___" → French.

    A sequence opens (within its first tenth) with the fact ``<grew-up-in> COUNTRY``, followed
    by filler words and ``decoys`` distractor facts ``<visited> OTHER-COUNTRY``, and ends with the
    query ``<fluent-in>``; the answer, read at the query, is the language of the country that came
    after ``<grew-up-in>``. Only the early fact decides it, so the model must keep it through the
    whole sequence while ignoring the later countries. With ``min_length`` set, lengths vary
    uniformly in ``[min_length, length]`` and shorter sequences are padded with 0.

    Tokens: 0 pad, 1 ``<grew-up-in>``, 2 ``<visited>``, 3 ``<fluent-in>``, then ``countries``
    country tokens, then ``fillers`` filler words. Metric: accuracy (chance ``1/countries``).

    Shapes: ``inputs`` ``(B, T)`` int64 with ``T = length``; ``targets`` ``(B,)`` language
    index; ``lengths`` ``(B,)``; predictions ``(B, countries)``.
    """

    length: int
    countries: int = 4
    fillers: int = 16
    decoys: int = 2
    min_length: int | None = None
    solve_accuracy: float = 0.95

    name: ClassVar[str] = "recall"
    input_kind: ClassVar[str] = "tokens"
    readout: ClassVar[str] = "last"
    metric_name: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    PAD: ClassVar[int] = 0
    GREW_UP_IN: ClassVar[int] = 1
    VISITED: ClassVar[int] = 2
    FLUENT_IN: ClassVar[int] = 3

    def __post_init__(self) -> None:
        check_positive_int("RecallTask", "countries", self.countries, minimum=2)
        check_positive_int("RecallTask", "fillers", self.fillers)
        check_positive_int("RecallTask", "decoys", self.decoys, minimum=0)
        shortest = 3 + 2 * self.decoys  # fact (2) + decoys (2 each) + query (1)
        check_positive_int("RecallTask", "length", self.length, minimum=shortest)
        if self.min_length is not None:
            check_positive_int("RecallTask", "min_length", self.min_length, minimum=shortest)
            if self.min_length > self.length:
                raise ValueError(
                    f"RecallTask: min_length must not exceed length={self.length}, got {self.min_length}"
                )
        if not 0 < self.solve_accuracy <= 1:
            raise ValueError(f"RecallTask: solve_accuracy must be in (0, 1], got {self.solve_accuracy!r}")

    input_size = property(lambda self: 4 + self.countries + self.fillers)
    output_size = property(lambda self: self.countries)
    solved_at = property(lambda self: self.solve_accuracy)
    chance = property(lambda self: 1 / self.countries)

    def country_token(self, index: Tensor | int) -> Tensor | int:
        return 4 + index

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        self._check_batch_size(batch_size)
        B, T, C = batch_size, self.length, self.countries
        lo = T if self.min_length is None else self.min_length
        lengths = torch.randint(lo, T + 1, (B,), generator=generator)
        first_filler = 4 + C
        inputs = torch.randint(first_filler, first_filler + self.fillers, (B, T), generator=generator)
        targets = torch.randint(0, C, (B,), generator=generator)
        # Decoy countries differ from the true one, so a model that keeps the last country fails.
        decoy = (targets.unsqueeze(1) + torch.randint(1, C, (B, self.decoys), generator=generator)) % C
        for b in range(B):
            n = int(lengths[b])
            inputs[b, n:] = self.PAD
            inputs[b, n - 1] = self.FLUENT_IN
            latest = min(n // 10, n - 3 - 2 * self.decoys)  # the fact starts in the first tenth
            p = int(torch.randint(0, latest + 1, (1,), generator=generator))
            inputs[b, p], inputs[b, p + 1] = self.GREW_UP_IN, 4 + int(targets[b])
            # Decoys take distinct 2-step slots between the fact and the query.
            slots = (n - 1 - (p + 2)) // 2
            chosen = torch.randperm(slots, generator=generator)[: self.decoys]
            for j, slot in enumerate(chosen.tolist()):
                at = p + 2 + 2 * slot
                inputs[b, at], inputs[b, at + 1] = self.VISITED, 4 + int(decoy[b, j])
        return TaskBatch(inputs, targets, lengths)

    def loss(self, prediction: Tensor, batch: TaskBatch) -> Tensor:
        return F.cross_entropy(_last_step(prediction, "RecallTask"), batch.targets)

    def metric(self, prediction: Tensor, batch: TaskBatch) -> float:
        return float((_last_step(prediction, "RecallTask").argmax(1) == batch.targets).float().mean())

    def describe(self, batch: TaskBatch, index: int = 0) -> str:
        """One sequence of ``batch`` as words, with its answer."""
        C = self.countries
        words = []
        for token in batch.inputs[index, : int(batch.lengths[index])].tolist():
            if token < 4:
                words.append(("<pad>", "I grew up in", "I visited", "I am fluent in")[token])
            elif token < 4 + C:
                k = token - 4
                words.append(COUNTRIES[k] if k < len(COUNTRIES) else f"country{k}")
            else:
                k = token - 4 - C
                words.append(FILLERS[k] if k < len(FILLERS) else f"word{k}")
        k = int(batch.targets[index])
        return " ".join(words) + " → " + (LANGUAGES[k] if k < len(LANGUAGES) else f"language{k}")
