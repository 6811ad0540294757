"""``rnnkit experiment …``: thin typer commands over :mod:`rnnkit.experiments`.

Mount with ``app.add_typer(experiment_app, name="experiment")``.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from ..tasks import TASKS, make_task
from .long_memory import LongMemoryConfig, run_long_memory, summary_lines, table_rows, write_report
from .training import FitConfig

experiment_app = typer.Typer(
    help="Run the classic experiments and write their reports.", no_args_is_help=True
)

_F = FitConfig()
_L = LongMemoryConfig()


def _csv(value: str, convert: type, option: str) -> tuple:
    try:
        items = tuple(convert(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(
            f"expected a comma-separated list, got {value!r}", param_hint=option
        ) from None
    if not items:
        raise typer.BadParameter("expected at least one value", param_hint=option)
    return items


@experiment_app.command("long-memory")
def long_memory_command(
    cells: Annotated[str, typer.Option(help="Cells to compare, comma-separated.")] = ",".join(_L.cells),
    lengths: Annotated[str, typer.Option(help="Sequence lengths, comma-separated.")] = ",".join(
        map(str, _L.lengths)
    ),
    task: Annotated[str, typer.Option(help=f"Task: {', '.join(sorted(TASKS))}.")] = _L.task,
    steps: Annotated[int, typer.Option(help="Optimiser steps per run at most.")] = _F.steps,
    seed: Annotated[int, typer.Option(help="Seed of weights and data.")] = _L.seed,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("long_memory_report"),
    hidden_size: Annotated[int, typer.Option(help="Hidden size H.")] = _L.hidden_size,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = _F.batch_size,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = _F.lr,
    clip: Annotated[float, typer.Option(help="Gradient-norm clipping threshold (0: none).")] = _F.clip,
    eval_every: Annotated[int, typer.Option(help="Evaluate every this many steps.")] = _F.eval_every,
    eval_size: Annotated[int, typer.Option(help="Held-out sequences.")] = _L.eval_size,
    clip_demo_steps: Annotated[
        int, typer.Option(help="Steps of the RNN with/without clipping comparison (0: skip).")
    ] = _L.clip_demo_steps,
    engine: Annotated[
        str, typer.Option(help="Engine: auto, fused, reference or native (PyTorch's kernels).")
    ] = _L.engine,
) -> None:
    """Train each cell at each length with a fixed budget and seed; write table, plots and report.html."""
    try:
        fit = FitConfig(steps=steps, batch_size=batch_size, lr=lr, clip=clip, eval_every=eval_every)
        config = LongMemoryConfig(
            task=task,
            cells=_csv(cells, str, "--cells"),
            lengths=_csv(lengths, int, "--lengths"),
            hidden_size=hidden_size,
            seed=seed,
            eval_size=eval_size,
            probe_size=min(_L.probe_size, eval_size),
            clip_demo_steps=clip_demo_steps,
            engine=engine,
            fit=fit,
        )
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    start = time.perf_counter()
    result = run_long_memory(config, progress=lambda line: typer.echo(line, err=True))
    command = (
        "rnnkit experiment " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("long-memory") :])
        if "long-memory" in sys.argv
        else None
    )
    html = write_report(result, out, command)
    columns, rows = table_rows(result)
    typer.echo(" | ".join(columns))
    for row in rows:
        typer.echo(" | ".join(str(v) for v in row))
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"report: {html} ({time.perf_counter() - start:.0f} s)")


@experiment_app.command("show-task")
def show_task_command(
    task: Annotated[str, typer.Argument(help=f"Task: {', '.join(sorted(TASKS))}.")],
    length: Annotated[int, typer.Option(help="Sequence-length knob.")] = 20,
    count: Annotated[int, typer.Option(help="Examples to print.")] = 2,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
) -> None:
    """Print a few generated examples of a benchmark task."""
    try:
        spec = make_task(task, length)
        batch = spec.sample(count, torch.Generator().manual_seed(seed))
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for i in range(count):
        describe = getattr(spec, "describe", None)
        if describe is not None:
            typer.echo(describe(batch, i))
        else:
            typer.echo(f"inputs:  {batch.inputs[i].tolist()}")
            typer.echo(f"targets: {batch.targets[i].tolist()}")
