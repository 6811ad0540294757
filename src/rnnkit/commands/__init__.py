"""CLI commands of the classify, translate, generate-from and forecast tasks.

Each module exposes typer command functions; :func:`register` mounts them on the main app:
``rnnkit train classify|translate|generate-from|forecast``, ``rnnkit predict RUN_DIR``,
``rnnkit translate RUN_DIR``, ``rnnkit sample RUN_DIR --condition ...``. :func:`evaluate_run`
is what ``rnnkit evaluate RUN_DIR --data FILE`` calls for these tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import RnnkitError

__all__ = ["TASKS", "register", "evaluate_run", "format_figures"]

TASKS = ("classify", "translate", "generate-from", "forecast")


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Add the task commands to ``app`` (top level) and ``train_app`` (``rnnkit train``)."""
    from .classify import predict, train_classify
    from .forecast import train_forecast
    from .generate_from import sample, train_generate_from
    from .translate import train_translate, translate

    train_app.command("classify")(train_classify)
    train_app.command("translate")(train_translate)
    train_app.command("generate-from")(train_generate_from)
    train_app.command("forecast")(train_forecast)
    app.command("predict")(predict)
    app.command("translate")(translate)
    app.command("sample")(sample)


def evaluate_run(
    task: str, run_dir: Path, data: Path | None, device: str = "cpu", **options: Any
) -> dict[str, Any]:
    """The figures of a ``task`` run on labelled ``data``, scored on ``device``
    (``rnnkit evaluate RUN_DIR --data FILE``)."""
    if data is None:
        raise RnnkitError(f"evaluate: a {task} run needs --data FILE, the labelled data to score")
    if task == "classify":
        from ..training.classify import evaluate_classifier

        return evaluate_classifier(run_dir, data, options.get("text_col"), options.get("label_col"), device)
    if task == "translate":
        from ..training.translate import evaluate_translation

        return evaluate_translation(run_dir, data, options.get("target"), options.get("beam_size"), device)
    if task == "generate-from":
        from ..training.generate_from import evaluate_generator

        return evaluate_generator(run_dir, data, options.get("text_col"), options.get("label_col"), device)
    if task == "forecast":
        from ..training.forecast import evaluate_forecaster

        return evaluate_forecaster(run_dir, data, device)
    raise RnnkitError(f"{run_dir}: 'evaluate' does not know task {task!r}")


def format_figures(figures: dict[str, Any]) -> str:
    """One line ``name value  name value ...`` (floats to 4 decimals)."""
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
