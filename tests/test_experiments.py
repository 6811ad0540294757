"""The long-memory experiment end to end at tiny sizes, its training loop and its CLI."""

from __future__ import annotations

import base64
import csv
import json
import re

import pytest
import torch
from typer.testing import CliRunner

from rnnkit.experiments import FitConfig, LongMemoryConfig, build_model, fit
from rnnkit.experiments.cli import experiment_app
from rnnkit.tasks import RecallTask

TINY = [
    "--lengths", "8,11", "--steps", "6", "--eval-every", "3", "--batch-size", "4", "--eval-size", "8",
    "--hidden-size", "4", "--clip-demo-steps", "4", "--engine", "reference",
]  # fmt: skip


def test_long_memory_cli_writes_the_whole_report(tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(experiment_app, ["long-memory", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rnn: " in result.output and "report: " in result.output

    with open(out / "table.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["length"] + [
        f"{c} {k}" for c in ("rnn", "lstm", "gru") for k in ("accuracy", "steps to solve")
    ]
    assert [r[0] for r in rows[1:]] == ["8", "11"]

    data = json.loads((out / "results.json").read_text())
    assert data["config"]["lengths"] == [8, 11] and data["machine"]["cpu_count"]
    assert {(r["cell"], r["length"]) for r in data["runs"]} == {
        (c, n) for c in ("rnn", "lstm", "gru") for n in (8, 11)
    }
    for run in data["runs"]:
        assert run["engine"] == "reference" and 1 <= run["steps_run"] <= 6
        assert len(run["grad_norms"]) == run["steps_run"] and all(g > 0 for g in run["grad_norms"])
        assert len(run["grad_flow_init"]) == run["length"] == len(run["grad_flow_trained"])
        assert run["steps_to_solve"] is None or run["steps_to_solve"] <= run["steps_run"]
        assert 0 <= run["final_metric"] <= 1
    assert set(data["jacobians"]["init"]) == {"rnn", "lstm", "gru"}
    assert len(data["jacobians"]["init"]["lstm"]) == 12  # lags 0..T at the longest length
    assert {"forget", "input", "output", "cell"} <= set(
        next(r for r in data["runs"] if r["cell"] == "lstm")["gates"]
    )
    assert set(data["clip_demo"]) == {"clip=1", "no clipping"}

    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {
        "training.png",
        "gradient_flow_rnn.png",
        "jacobian.png",
        "gates_lstm.png",
        "clipping.png",
        "state_magnitude.png",
    }
    html = (out / "report.html").read_text()
    embedded = [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs), "every PNG is inside the page"
    assert "<table>" in html and "I grew up in" in html
    assert sum(p.stat().st_size for p in out.iterdir()) < 2_000_000


def test_long_memory_cli_rejects_bad_options(tmp_path):
    result = CliRunner().invoke(
        experiment_app, ["long-memory", "--cells", "rnn,transformer", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "cells must be a non-empty subset" in result.output
    result = CliRunner().invoke(experiment_app, ["long-memory", "--lengths", "5", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "RecallTask: length must be an integer >= 7, got 5" in result.output
    result = CliRunner().invoke(experiment_app, ["long-memory", "--lengths", "ten", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "comma-separated" in result.output


def test_show_task_prints_examples():
    result = CliRunner().invoke(experiment_app, ["show-task", "recall", "--length", "12", "--count", "2"])
    assert result.exit_code == 0 and result.output.count("I am fluent in") == 2
    result = CliRunner().invoke(experiment_app, ["show-task", "adding", "--length", "4", "--count", "1"])
    assert result.exit_code == 0 and "targets:" in result.output


def _fit(task, **kw):
    model = build_model(task, "gru", 8, seed=0, engine="reference")
    eval_batch = task.sample(16, torch.Generator().manual_seed(1))
    return fit(model, task, FitConfig(batch_size=8, **kw), eval_batch, torch.Generator().manual_seed(0))


def test_fit_is_deterministic_and_stops_when_solved():
    task = RecallTask(9)
    a, b = _fit(task, steps=5, eval_every=2), _fit(task, steps=5, eval_every=2)
    assert a.losses == b.losses and a.grad_norms == b.grad_norms and a.evals == b.evals
    assert [s for s, _ in a.evals] == [2, 4, 5]
    easy = RecallTask(9, solve_accuracy=1e-6)  # any model clears this bar at the first evaluation
    history = _fit(easy, steps=50, eval_every=3)
    assert history.solved_at == 3 and history.steps_run == 3


def test_fit_records_the_norm_before_clipping():
    task = RecallTask(9)
    clipped, free = _fit(task, steps=1, clip=1e-4), _fit(task, steps=1, clip=0.0)
    # Same weights, same first batch: the recorded norm is the raw one, far above the threshold.
    assert clipped.grad_norms == free.grad_norms and clipped.grad_norms[0] > 1e-2


def test_config_validation():
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        FitConfig(steps=0)
    with pytest.raises(ValueError, match="clip must be >= 0"):
        FitConfig(clip=-1.0)
    with pytest.raises(ValueError, match="task must be one of"):
        LongMemoryConfig(task="sorting")
    with pytest.raises(ValueError, match="length must be an integer >= 2"):
        LongMemoryConfig(task="adding", lengths=(1,))


def test_mounted_as_rnnkit_experiment():
    from rnnkit.cli import app

    result = CliRunner().invoke(app, ["experiment", "--help"])
    assert result.exit_code == 0 and "long-memory" in result.output and "show-task" in result.output
