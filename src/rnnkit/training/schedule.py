"""Learning-rate schedules: constant, divide-on-plateau and cosine, each with optional warm-up."""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer

__all__ = ["LRSchedule"]


class LRSchedule:
    """Sets the optimizer's learning rate before every step.

    ``lr(step) = base_lr * plateau_scale * warmup(step) * cosine(step)`` where ``plateau_scale``
    is divided by ``factor`` each time :meth:`epoch_end` sees no improvement for ``patience + 1``
    epochs in a row (the classic "divide by 4 when validation stops improving").
    """

    def __init__(
        self,
        optimizer: Optimizer,
        kind: str,
        base_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        factor: float = 4.0,
        patience: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.kind = kind
        self.base_lr = base_lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps
        self.factor = factor
        self.patience = patience
        self.scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0

    def lr_at(self, step: int) -> float:
        """The rate for optimizer step ``step`` (0-based)."""
        lr = self.base_lr * self.scale
        if self.warmup_steps and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            progress = min(1.0, step / self.total_steps)
            lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr

    def apply(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def epoch_end(self, valid_loss: float | None) -> bool:
        """Record an epoch's validation loss; returns whether the rate was just divided."""
        if self.kind != "plateau" or valid_loss is None:
            return False
        if valid_loss < self.best:
            self.best, self.bad_epochs = valid_loss, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.scale /= self.factor
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]
