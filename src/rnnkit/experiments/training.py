"""A short fixed-budget training loop for synthetic tasks: steps to solve, pre-clip gradient norms.

The long-memory experiment needs what an epoch-based trainer does not give directly: an
evaluation every few steps on a fixed held-out batch, the first step at which the task counts as
solved, and a stop there. Clipping follows :class:`rnnkit.training.Trainer`'s convention
(``clip=0`` disables it; the norm before clipping is recorded either way).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..tasks import Task, TaskBatch


@dataclass
class FitConfig:
    """Budget and optimiser of one run (Adam).

    Args:
        steps: optimiser steps at most.
        batch_size: sequences per step.
        lr: Adam learning rate.
        clip: clip the global gradient norm to this; 0 disables clipping.
        eval_every: evaluate on the held-out batch every this many steps.
        stop_when_solved: stop at the first evaluation that clears the task's bar.
    """

    steps: int = 1500
    batch_size: int = 64
    lr: float = 0.01
    clip: float = 1.0
    eval_every: int = 50
    stop_when_solved: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"FitConfig: {name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"FitConfig: lr must be positive, got {self.lr!r}")
        if not self.clip >= 0:
            raise ValueError(f"FitConfig: clip must be >= 0 (0 disables clipping), got {self.clip!r}")


@dataclass
class FitHistory:
    """What one run did: per-step loss and pre-clip gradient norm, and the evaluations."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    solved_at: int | None = None
    diverged: bool = False
    seconds: float = 0.0

    @property
    def final_metric(self) -> float:
        return self.evals[-1][1] if self.evals else float("nan")

    @property
    def steps_run(self) -> int:
        return len(self.losses)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batch: TaskBatch) -> float:
    """The task's metric of ``model`` on ``batch``, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return task.metric(model(batch.inputs, batch.lengths), batch)
    finally:
        model.train(was_training)


def fit(
    model: nn.Module, task: Task, config: FitConfig, eval_batch: TaskBatch, generator: torch.Generator
) -> FitHistory:
    """Train ``model`` on fresh batches of ``task`` drawn from ``generator`` within ``config``'s budget."""
    history = FitHistory()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    max_norm = config.clip if config.clip > 0 else math.inf
    start = time.perf_counter()
    model.train()
    for step in range(1, config.steps + 1):
        batch = task.sample(config.batch_size, generator)
        loss = task.loss(model(batch.inputs, batch.lengths), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(nn.utils.clip_grad_norm_(params, max_norm))  # the norm before clipping
        history.losses.append(float(loss.detach()))
        history.grad_norms.append(norm)
        if not (math.isfinite(norm) and math.isfinite(history.losses[-1])):
            history.diverged = True  # an update now would write inf/NaN into the weights
            break
        optimizer.step()
        if step % config.eval_every == 0 or step == config.steps:
            metric = evaluate(model, task, eval_batch)
            history.evals.append((step, metric))
            if history.solved_at is None and task.solved(metric):
                history.solved_at = step
                if config.stop_when_solved:
                    break
    if history.diverged or not history.evals or history.evals[-1][0] != history.steps_run:
        history.evals.append((history.steps_run, evaluate(model, task, eval_batch)))
    history.seconds = time.perf_counter() - start
    return history
