"""Training: a reusable Trainer, its configuration, checkpoints, logs, DDP helpers, and the tasks.

- :class:`Trainer` runs any task given a :class:`TaskAdapter` (how a batch becomes a loss).
- :class:`TrainConfig` holds the task-independent settings; CLIs map flags onto it.
- :mod:`.checkpoint` writes run folders atomically; :mod:`.logs` the CSVs and loss curve.
- :mod:`.lm` is the language-model task built on all of these; :mod:`.classify`,
  :mod:`.translate`, :mod:`.generate_from` and :mod:`.forecast` the other tasks, sharing run
  folders, batching and the Trainer call (:mod:`.runs`). The CLI (:mod:`rnnkit.commands`) only
  parses flags and calls them.
"""

from __future__ import annotations

from .config import TrainConfig
from .distributed import DistInfo, init_distributed
from .trainer import (
    FitResult,
    LossFunction,
    StepOutput,
    TaskAdapter,
    Trainer,
    resolve_device,
    seed_everything,
    tree_map,
)

__all__ = [
    "DistInfo",
    "FitResult",
    "LossFunction",
    "StepOutput",
    "TaskAdapter",
    "TrainConfig",
    "Trainer",
    "init_distributed",
    "resolve_device",
    "seed_everything",
    "tree_map",
]
