"""Long-range synthetic benchmark tasks: each probes how far back a model can remember.

Every task is a validated dataclass with a sequence-length knob and a seeded generator:
``task.sample(batch_size, generator) -> TaskBatch``. A task also says how a model reads it
(token ids or real-valued features), what it outputs (one prediction at each sequence's last
step, or one at every step), its loss, its metric and the metric value that counts as solved.

- :class:`AddingTask`: the adding problem (Hochreiter & Schmidhuber 1997).
- :class:`CopyTask`: copy memory (Arjovsky, Shah & Bengio 2016).
- :class:`RecallTask`: selective recall, "I grew up in France ... I am fluent in French".

Shapes: ``B`` batch, ``T`` time (padded length), ``I`` features per step, ``K`` classes.
"""

from __future__ import annotations

from .base import Task, TaskBatch
from .synthetic import AddingTask, CopyTask, RecallTask

TASKS: dict[str, type[Task]] = {"adding": AddingTask, "copy": CopyTask, "recall": RecallTask}


def make_task(name: str, length: int, **options: object) -> Task:
    """The task called ``name`` (one of :data:`TASKS`) at sequence-length knob ``length``."""
    if name not in TASKS:
        raise ValueError(f"make_task: unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name](length=length, **options)


__all__ = ["TASKS", "Task", "TaskBatch", "AddingTask", "CopyTask", "RecallTask", "make_task"]
