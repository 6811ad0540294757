"""``rnnkit train forecast``: the command line of :mod:`rnnkit.training.forecast`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..training.forecast import run_forecast
from ._common import (
    ClipOption,
    ConfigOption,
    DeviceOption,
    EngineOption,
    JsonOption,
    LrOption,
    MaxStepsOption,
    PrecisionOption,
    ProgressOption,
    ResumeOption,
    SeedOption,
    TuneOption,
    command_options,
)

__all__ = ["train_forecast"]


def train_forecast(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Option(help="CSV with a header, one row per time step (required unless --resume)")
    ] = None,
    target_col: Annotated[str | None, typer.Option(help="column to forecast (default: the last)")] = None,
    covariates: Annotated[
        str | None, typer.Option(help="comma-separated covariate columns (past values only)")
    ] = None,
    horizon: Annotated[int, typer.Option(help="steps to forecast")] = 12,
    lookback: Annotated[int, typer.Option(help="steps the model reads before forecasting")] = 24,
    test_size: Annotated[int | None, typer.Option(help="held-out final steps (default: --horizon)")] = None,
    season: Annotated[int, typer.Option(help="season length for the seasonal-naive baseline")] = 12,
    log: Annotated[bool, typer.Option(help="log-transform the target before standardising")] = True,
    cell: Annotated[str, typer.Option(help="lstm, gru or rnn")] = "lstm",
    layers: Annotated[int, typer.Option(help="stacked layers")] = 1,
    hidden_size: Annotated[int, typer.Option(help="hidden units")] = 32,
    batch_size: Annotated[int, typer.Option(help="windows per batch")] = 16,
    epochs: Annotated[int, typer.Option(help="epochs of --passes passes over the training windows")] = 10,
    passes: Annotated[int, typer.Option(help="passes over the windows per epoch (short series)")] = 10,
    max_steps: MaxStepsOption = None,
    lr: LrOption = 5e-3,
    clip: ClipOption = 1.0,
    seed: SeedOption = 0,
    engine: EngineOption = "auto",
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    tune: TuneOption = False,
    out: Annotated[Path | None, typer.Option(help="run folder (default: runs/forecast-<timestamp>)")] = None,
    resume: ResumeOption = False,
    config: ConfigOption = None,
    progress: ProgressOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train a recurrent forecaster; reports MAPE and MAE beside a seasonal-naive baseline, and a plot."""
    opts, given = command_options(ctx, train_forecast, dict(locals()))
    result = run_forecast(given=given, **opts)
    if not result:  # another rank's process under torchrun: rank 0 prints
        return
    if as_json:
        print(json.dumps(result))
        return
    m = result["test"]
    print(
        f"test   {m['points']} steps  MAPE {m['mape']:.4f}  MAE {m['mae']:.2f}   "
        f"seasonal naive: MAPE {m['naive_mape']:.4f}  MAE {m['naive_mae']:.2f}"
    )
    print(
        f"saved  {result['run_dir']}/ (model.safetensors, forecast.png, metrics.json)  {result['seconds']} s"
    )
