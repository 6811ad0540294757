"""Forecaster, its seasonal-naive residual, the scaler and windows, and the forecast metrics."""

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.metrics import mae, mape, seasonal_naive
from rnnkit.models.forecaster import Forecaster, ForecasterConfig
from rnnkit.training.forecast import Scaler, _windows

AIRLINE = Path(__file__).resolve().parents[2] / "shared" / "data" / "airpassengers" / "Airline.csv"


@pytest.mark.parametrize("season", [0, 4])
def test_shapes_and_naive_rows(season):
    torch.manual_seed(0)
    model = Forecaster(ForecasterConfig(input_size=2, horizon=6, hidden_size=8, season=season))
    x = torch.randn(3, 10, 2)
    assert model(x).shape == (3, 10, 6)
    assert model.predict(x).shape == (3, 6)
    naive = model.naive(x)
    for b in range(3):
        for t in range(10):
            for h in range(1, 7):
                src = t - season + (h - 1) % season + 1 if season else t
                want = x[b, src if src >= 0 else t, 0]
                assert naive[b, t, h - 1] == want
        if season:  # the last row is exactly the seasonal-naive forecast of the window
            np.testing.assert_allclose(
                naive[b, -1].numpy(), seasonal_naive(x[b, :, 0].numpy(), 6, season), rtol=1e-6
            )


def test_outputs_are_causal():
    torch.manual_seed(0)
    model = Forecaster(ForecasterConfig(input_size=1, horizon=3, hidden_size=8, season=2))
    x = torch.randn(1, 8, 1)
    y = model(x)
    x2 = x.clone()
    x2[0, 5:] += 10.0  # the future must not change earlier rows
    torch.testing.assert_close(model(x2)[:, :5], y[:, :5])


def test_windows_and_scaler():
    series = np.arange(1.0, 21.0)[:, None]  # (20, 1)
    scaler = Scaler.fit(series, log=True)
    scaled = scaler.transform(series)
    np.testing.assert_allclose(scaler.inverse_target(scaled[:, 0]), series[:, 0])
    windows = _windows(scaled, lookback=5, horizon=3)
    assert len(windows) == 20 - 5 - 3 + 1
    x, y = windows[2]
    assert x.shape == (5, 1) and y.shape == (5, 3)
    np.testing.assert_allclose(y[4], scaled[2 + 4 + 1 : 2 + 4 + 4, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="--log needs a positive"):
        Scaler.fit(np.array([[1.0], [0.0]]), log=True)


def test_metrics_by_hand():
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert mape([110, 90], [100, 100]) == pytest.approx(0.1)
    np.testing.assert_array_equal(seasonal_naive(np.arange(10), 5, 4), [6, 7, 8, 9, 6])
    with pytest.raises(ValueError, match="actual value is 0"):
        mape([1.0], [0.0])


@pytest.mark.skipif(not AIRLINE.is_file(), reason="shared data not present")
def test_seasonal_naive_reproduces_the_published_airline_baseline():
    from rnnkit.datasets import read_series

    y = read_series(AIRLINE).target
    # sktime's tutorial: NaiveForecaster(strategy="last", sp=12), test = last 36 months: MAPE 0.1319
    assert mape(seasonal_naive(y[:108], 36, 12), y[108:]) == pytest.approx(0.1319, abs=5e-5)
