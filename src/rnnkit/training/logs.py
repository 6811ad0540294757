"""Run logs: metrics per step and per epoch as CSV (TensorBoard too when installed), a loss-curve PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

__all__ = ["CSVLog", "RunLog", "plot_losses"]


class CSVLog:
    """Append-only CSV, flushed per row so a killed run keeps what it logged.

    Columns are fixed by the first row written (or the file's header when it already exists).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.exists() and path.stat().st_size:
            with open(path, newline="") as f:
                self.fields = next(csv.reader(f), None)

    def append(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def keep(self, predicate) -> None:
        """Drop the rows for which ``predicate(row)`` is false (used on resume, past the checkpoint)."""
        if self.fields is None:
            return
        rows = [r for r in self.rows() if predicate(r)]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class RunLog:
    """``steps.csv`` and ``epochs.csv`` in the run folder, mirrored to TensorBoard if it is installed."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.steps = CSVLog(run_dir / "steps.csv")
        self.epochs = CSVLog(run_dir / "epochs.csv")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # TensorBoard is optional
                self.writer = None

    def step(self, row: dict[str, Any]) -> None:
        self.steps.append(row)
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm"):
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def epoch(self, row: dict[str, Any]) -> None:
        self.epochs.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(f"epoch/{key}", value, row["step"])

    def truncate(self, step: int, epoch: int) -> None:
        """Forget what was logged after a checkpoint taken at ``step`` in epoch ``epoch`` (0-based)."""
        self.steps.keep(lambda r: int(r["step"]) <= step)
        self.epochs.keep(lambda r: int(r["epoch"]) <= epoch)  # rows count epochs from 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_losses(run_dir: Path, path: Path | None = None) -> Path | None:
    """Draw training loss per step (and validation loss per epoch) from the CSVs into ``loss.png``."""
    steps = CSVLog(run_dir / "steps.csv").rows()
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    epochs = CSVLog(run_dir / "epochs.csv").rows()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        [int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], lw=0.8, label="train (per step)"
    )
    valid = [
        (int(r["step"]), float(r["valid_loss"])) for r in epochs if r.get("valid_loss") not in (None, "")
    ]
    if valid:
        ax.plot(*zip(*valid), "o-", label="valid (per epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = path or run_dir / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
