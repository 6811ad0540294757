"""Classic experiments, runnable from Python and from ``rnnkit experiment …``.

- :mod:`.long_memory`: simple RNN vs LSTM vs GRU on long-range tasks across lengths.
- :mod:`.training`: the short fixed-budget loop the experiments train with.
- :mod:`.model`: the small encoder → recurrent layer → readout model they train.
"""

from __future__ import annotations

from .long_memory import LongMemoryConfig, LongMemoryResult, RunResult, run_long_memory, write_report
from .model import CELLS, TaskModel, build_model
from .training import FitConfig, FitHistory, evaluate, fit

__all__ = [
    "CELLS",
    "FitConfig",
    "FitHistory",
    "LongMemoryConfig",
    "LongMemoryResult",
    "RunResult",
    "TaskModel",
    "build_model",
    "evaluate",
    "fit",
    "run_long_memory",
    "write_report",
]
