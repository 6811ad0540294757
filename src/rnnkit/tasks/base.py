"""What every benchmark task provides: a seeded generator, a loss, a metric and a bar to clear."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor


@dataclass(frozen=True)
class TaskBatch:
    """One batch of a task, batch-first.

    Shapes: ``inputs`` ``(B, T)`` int64 token ids or ``(B, T, I)`` float features;
    ``targets`` ``(B,)`` (one answer per sequence) or ``(B, T)`` (one per step; ``-100`` where
    nothing is asked); ``lengths`` ``(B,)`` int64, each in ``[1, T]`` (steps past a sequence's
    length are padding).
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def steps(self) -> int:
        """The padded length ``T``."""
        return int(self.inputs.shape[1])


class Task(ABC):
    """A synthetic sequence task; subclasses are dataclasses validated on construction.

    A model for a task reads ``inputs`` (token ids from a vocabulary of ``input_size`` when
    ``input_kind == "tokens"``, else ``input_size`` features per step) and emits ``output_size``
    numbers either at each sequence's last valid step (``readout == "last"``, predictions
    ``(B, K)``) or at every step (``readout == "every"``, predictions ``(B, T, K)``).
    """

    name: ClassVar[str]
    input_kind: ClassVar[Literal["tokens", "features"]]
    readout: ClassVar[Literal["last", "every"]]
    metric_name: ClassVar[str]
    higher_is_better: ClassVar[bool]

    length: int

    @property
    @abstractmethod
    def input_size(self) -> int:
        """Vocabulary size (tokens) or features per step (features)."""

    @property
    @abstractmethod
    def output_size(self) -> int:
        """``K``: classes, or 1 for a regression target."""

    @property
    @abstractmethod
    def solved_at(self) -> float:
        """The metric value at which the task counts as solved."""

    @property
    @abstractmethod
    def chance(self) -> float:
        """The metric of the best predictor that remembers nothing."""

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        """Draw a batch; the same generator state gives the same batch."""

    @abstractmethod
    def loss(self, prediction: Tensor, batch: TaskBatch) -> Tensor:
        """Scalar training loss of ``prediction`` (shapes: see the class docstring)."""

    @abstractmethod
    def metric(self, prediction: Tensor, batch: TaskBatch) -> float:
        """The task's score of ``prediction`` (named :attr:`metric_name`)."""

    def solved(self, metric: float) -> bool:
        """Whether ``metric`` clears :attr:`solved_at`."""
        return metric >= self.solved_at if self.higher_is_better else metric <= self.solved_at

    def _check_batch_size(self, batch_size: int) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(
                f"{type(self).__name__}.sample: batch_size must be a positive integer, got {batch_size!r}"
            )


def check_positive_int(owner: str, name: str, value: object, minimum: int = 1) -> None:
    """Raise a one-line ValueError unless ``value`` is an int ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
