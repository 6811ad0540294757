"""Forecasting: a recurrent multi-horizon forecaster on a CSV time series. The library side of
``rnnkit train forecast`` and ``rnnkit evaluate`` on forecaster runs.

The last ``--test-size`` points are held out; the model forecasts them from the ``--lookback``
points before, and is reported beside the seasonal-naive baseline (MAPE, MAE) and in a plot.
Values are optionally log-transformed, then standardised with the training part's statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets import read_series
from ..errors import RnnkitError
from ..metrics import mae, mape, seasonal_naive
from ..models.forecaster import Forecaster, ForecasterConfig
from .checkpoint import save_json
from .runs import (
    Batches,
    LossTask,
    fit,
    load_best,
    read_run,
    say,
    start_run,
    to_model,
    train_config,
    write_run_config,
)

__all__ = ["Scaler", "run_forecast", "evaluate_forecaster"]


class Scaler:
    """``log`` (optional) then ``(v - mean) / std``; the statistics come from the training part."""

    def __init__(self, log: bool, mean: list[float], std: list[float]):
        self.log, self.mean, self.std = log, np.asarray(mean), np.asarray(std)

    @classmethod
    def fit(cls, values: np.ndarray, log: bool) -> Scaler:  # values (N, F)
        if log and (values[:, 0] <= 0).any():
            raise RnnkitError("--log needs a positive target series; pass --no-log")
        v = values.copy()
        if log:
            v[:, 0] = np.log(v[:, 0])
        return cls(log, v.mean(0).tolist(), np.maximum(v.std(0), 1e-8).tolist())

    def transform(self, values: np.ndarray) -> np.ndarray:
        v = values.astype(np.float64).copy()
        if self.log:
            if (v[:, 0] <= 0).any():
                raise RnnkitError("the model was trained on log values and needs a positive target series")
            v[:, 0] = np.log(v[:, 0])
        return (v - self.mean) / self.std

    def inverse_target(self, y: np.ndarray) -> np.ndarray:
        v = y * self.std[0] + self.mean[0]
        return np.exp(v) if self.log else v

    def to_dict(self) -> dict[str, Any]:
        return {"log": self.log, "mean": self.mean.tolist(), "std": self.std.tolist()}


def _windows(scaled: np.ndarray, lookback: int, horizon: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs: input ``(lookback, F)``, targets ``(lookback, horizon)`` (row ``t``: ``t+1..t+horizon``)."""
    out = []
    for s in range(len(scaled) - lookback - horizon + 1):
        x = scaled[s : s + lookback]
        y = np.stack([scaled[s + t + 1 : s + t + 1 + horizon, 0] for t in range(lookback)])
        out.append((x.astype(np.float32), y.astype(np.float32)))
    return out


def _collate(batch):
    x, y = zip(*batch)
    return torch.from_numpy(np.stack(x)), torch.from_numpy(np.stack(y))


def _loss(model, batch, skip: int = 0):
    """MSE over the rows from ``skip`` on: earlier rows have no full season behind them, and their
    cruder naive forecast would otherwise dominate what the head learns."""
    x, y = batch
    return torch.nn.functional.mse_loss(model(x)[:, skip:], y[:, skip:]), len(x)


@torch.no_grad()
def _forecast(model: Forecaster, scaler: Scaler, history: np.ndarray, lookback: int) -> np.ndarray:
    x = torch.from_numpy(scaler.transform(history[-lookback:]).astype(np.float32)).unsqueeze(0)  # (1, T, F)
    y = model.eval().predict(to_model(x, model))[0]
    return scaler.inverse_target(y.float().cpu().numpy().astype(np.float64))


def _plot(path: Path, stamps, history, actual, forecast, naive) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, h = len(history), len(actual)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(range(n), history, color="black", label="history")
    ax.plot(range(n, n + h), actual, color="black", linestyle="--", label="actual")
    ax.plot(range(n, n + h), forecast, color="tab:red", label="rnnkit forecast")
    ax.plot(range(n, n + h), naive, color="tab:gray", alpha=0.7, label="seasonal naive")
    if stamps:
        ticks = list(range(0, n + h, max(1, (n + h) // 8)))
        ax.set_xticks(ticks, [stamps[i] for i in ticks if i < len(stamps)][: len(ticks)], rotation=30)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_forecast(given: set[str] | None = None, **o: Any) -> dict[str, Any]:
    """The library side of ``rnnkit train forecast``."""
    if o.get("data") is None and not o.get("resume"):
        raise RnnkitError("train forecast needs --data CSV, the series to learn (or --resume --out RUN)")
    o, run_dir, resume = start_run("forecast", o, given)
    horizon, lookback, season = o["horizon"], o["lookback"], o["season"]
    for flag in ("horizon", "lookback", "season"):
        if o[flag] < 1:
            raise RnnkitError(f"--{flag} must be a positive integer, got {o[flag]}")
    test_size = o["test_size"] or horizon
    if test_size > horizon:
        raise RnnkitError(
            f"--test-size {test_size} exceeds --horizon {horizon}: the model forecasts {horizon} steps"
        )
    tc = train_config(o, early_stopping=0, schedule="cosine")
    covs = [c.strip() for c in o["covariates"].split(",") if c.strip()] if o["covariates"] else []
    series = read_series(o["data"], o["target_col"], covs)
    values = np.concatenate([series.target[:, None], series.covariates], axis=1)  # (N, 1+C)
    train_part = values[:-test_size]
    if len(train_part) < lookback + horizon + 1:
        raise RnnkitError(
            f"{o['data']}: {len(values)} points leave {len(train_part)} for training, fewer than "
            f"--lookback + --horizon + 1 = {lookback + horizon + 1}; shorten them"
        )
    scaler = Scaler.fit(train_part, o["log"])
    windows = _windows(scaler.transform(train_part), lookback, horizon)
    cfg = ForecasterConfig(values.shape[1], horizon, o["hidden_size"], o["layers"], o["cell"], season=season)
    if not resume:
        write_run_config(
            run_dir,
            "forecast",
            cfg.to_dict(),
            {
                "scaler": scaler.to_dict(),
                "lookback": lookback,
                "season": season,
                "target": series.target_name,
                "covariates": covs,
                "source": str(o["data"]),
                "train": tc.to_dict(),
            },
            options=o,
        )
    say(
        f"data   {o['data']}: {len(train_part)} train steps ({len(windows)} windows) / {test_size} test; "
        f"run {run_dir}"
    )
    skip = min(season - 1, lookback - 1)
    fitted = fit(
        model := Forecaster(cfg),
        LossTask(lambda model, batch: _loss(model, batch, skip), "window", per_token=False),
        Batches(windows * o["passes"], o["batch_size"], _collate, shuffle=True, seed=o["seed"]),
        None,
        tc,
        run_dir,
        resume=resume,
        engine=o.get("engine", "auto"),
    )
    if not fitted.is_main:  # under torchrun rank 0 alone scores and writes the figures
        return {}
    del model
    fc = _forecast(fitted.model, scaler, train_part, lookback)[:test_size]
    actual = series.target[-test_size:]
    naive = seasonal_naive(series.target[:-test_size], test_size, season)
    result = {
        "task": "forecast",
        "run_dir": str(run_dir),
        "seconds": round(fitted.seconds, 1),
        "steps": fitted.steps,
        "test": {
            "points": test_size,
            "mape": mape(fc, actual),
            "mae": mae(fc, actual),
            "naive_mape": mape(naive, actual),
            "naive_mae": mae(naive, actual),
        },
        "forecast": fc.tolist(),
    }
    _plot(run_dir / "forecast.png", series.stamps, series.target[:-test_size], actual, fc, naive)
    save_json(run_dir / "metrics.json", result)
    return result


def evaluate_forecaster(run_dir: Path, data: Path, device: str = "cpu") -> dict[str, Any]:
    """Forecast the last ``horizon`` points of ``data`` from the ones before, on ``device``;
    MAPE/MAE and the seasonal-naive baseline's."""
    saved = read_run(run_dir, "forecast")
    try:
        cfg = ForecasterConfig(**saved["model"])
        sc = saved["scaler"]
        scaler = Scaler(sc["log"], sc["mean"], sc["std"])
        lookback, season = int(saved["lookback"]), int(saved["season"])
    except (KeyError, TypeError, ValueError) as err:
        raise RnnkitError(f"{run_dir}/config.json: corrupt forecast config ({err})") from None
    model = load_best(run_dir, Forecaster(cfg), device)
    series = read_series(data, saved["target"], saved["covariates"])
    values = np.concatenate([series.target[:, None], series.covariates], axis=1)
    h = cfg.horizon
    if len(values) < lookback + h:
        raise RnnkitError(f"{data}: {len(values)} points, need at least lookback + horizon = {lookback + h}")
    history, actual = values[:-h], series.target[-h:]
    fc = _forecast(model, scaler, history, lookback)
    naive = seasonal_naive(series.target[:-h], h, season) if len(history) >= season else None
    out = {"points": h, "mape": mape(fc, actual), "mae": mae(fc, actual)}
    if naive is not None:
        out |= {"naive_mape": mape(naive, actual), "naive_mae": mae(naive, actual)}
    return out
