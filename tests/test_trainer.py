"""The task-agnostic Trainer: clipping and the recorded norm, schedules, early stopping, budgets, logs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rnnkit.errors import RnnkitError
from rnnkit.training import LossFunction, TrainConfig, Trainer
from rnnkit.training.config import read_config_file
from rnnkit.training.schedule import LRSchedule


def _regression(n_batches=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 1, generator=g)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(8, 3, generator=g)
        batches.append((x, x @ w))
    return batches


def _mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _config(**kw):
    base = dict(
        epochs=1, optimizer="sgd", lr=0.1, clip=0.0, schedule="constant", progress=False, device="cpu"
    )
    return TrainConfig(**{**base, **kw})


def test_sgd_step_and_recorded_grad_norm_match_a_manual_step():
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    batches = [tuple(t.double() for t in b) for b in _regression(1)]
    reference = nn.Linear(3, 1).double()
    reference.load_state_dict(model.state_dict())
    trainer = Trainer(model, LossFunction(_mse), batches, config=_config(clip=0.01))
    trainer.fit()
    loss = _mse(reference, batches[0])
    loss.backward()
    grads = [p.grad for p in reference.parameters()]
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert trainer.history[0]["grad_norm"] == pytest.approx(norm.item(), rel=1e-9)  # before clipping
    assert trainer.history[0]["loss"] == pytest.approx(loss.item(), rel=1e-12)
    with torch.no_grad():
        for p_ref, p, g in zip(reference.parameters(), model.parameters(), grads):
            expected = p_ref - 0.1 * g * (0.01 / norm)  # clipped to norm 0.01
            torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-9)


def test_same_seed_same_run_and_loss_goes_down():
    def run(seed):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        trainer = Trainer(model, LossFunction(_mse), _regression(), config=_config(epochs=5, seed=seed))
        trainer.fit()
        return [r["loss"] for r in trainer.history]

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert a[-1] < a[0] / 2


def test_max_steps_stops_mid_epoch():
    trainer = Trainer(
        nn.Linear(3, 1), LossFunction(_mse), _regression(4), config=_config(epochs=3, max_steps=6)
    )
    result = trainer.fit()
    assert (result.steps, result.stopped, len(trainer.history)) == (6, "max_steps", 6)


def test_early_stopping_when_validation_stops_improving():
    valid = [(torch.zeros(2, 3), torch.zeros(2, 1))]
    constant = LossFunction(lambda model, batch: _mse(model, batch) * 0 + 1.0)  # never improves
    trainer = Trainer(nn.Linear(3, 1), constant, _regression(2), valid, _config(epochs=10, early_stopping=2))
    result = trainer.fit()
    assert result.stopped == "early_stopping"
    assert result.epochs == 3  # best at epoch 1, then two epochs without improvement


def test_plateau_divides_the_rate_when_validation_stalls():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, "plateau", 1.0, total_steps=100, factor=4.0, patience=1)
    for loss, expected in [(3.0, 1.0), (2.0, 1.0), (2.5, 1.0), (2.5, 0.25), (1.0, 0.25), (1.5, 0.25)]:
        sched.epoch_end(loss)
        assert sched.apply(0) == expected
    cosine = LRSchedule(opt, "cosine", 1.0, total_steps=10, warmup_steps=2)
    assert cosine.lr_at(0) == pytest.approx(0.5) and cosine.lr_at(10) == pytest.approx(0.0, abs=1e-12)
    assert cosine.lr_at(5) == pytest.approx(0.5)


def test_run_folder_gets_csv_logs_png_and_checkpoints(tmp_path):
    valid = _regression(1, seed=1)
    trainer = Trainer(
        nn.Linear(3, 1), LossFunction(_mse), _regression(3), valid, _config(epochs=2), run_dir=tmp_path
    )
    trainer.fit()
    for name in (
        "steps.csv",
        "epochs.csv",
        "loss.png",
        "model.safetensors",
        "best.safetensors",
        "trainer_state.pt",
    ):
        assert (tmp_path / name).is_file(), name
    steps = (tmp_path / "steps.csv").read_text().splitlines()
    assert steps[0].startswith("step,epoch,loss,lr,grad_norm") and len(steps) == 1 + 6
    epochs = (tmp_path / "epochs.csv").read_text().splitlines()
    assert len(epochs) == 3 and "valid_loss" in epochs[0]


@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"clip": -1.0}, "--clip"),
        ({"optimizer": "adam2"}, "--optimizer"),
        ({"epochs": 0}, "--epochs"),
        ({"tune": "yes"}, "--tune"),
    ],
)
def test_train_config_rejects_bad_values(kw, flag):
    with pytest.raises(RnnkitError, match=flag):
        TrainConfig(**kw)


@pytest.mark.parametrize("tune", [False, True])
def test_tune_sets_cudnn_benchmark_while_training_and_restores_it(tune):
    seen = []

    def loss(model, batch):
        seen.append(torch.backends.cudnn.benchmark)
        return _mse(model, batch)

    before = torch.backends.cudnn.benchmark
    Trainer(nn.Linear(3, 1), LossFunction(loss), _regression(2), config=_config(tune=tune)).fit()
    assert seen == [tune or before] * 2 and torch.backends.cudnn.benchmark == before


def test_config_files_toml_and_yaml_flatten_sections(tmp_path):
    (tmp_path / "c.toml").write_text("hidden-size = 32\n[train]\nlr = 0.5\nmax_steps = 3\n")
    (tmp_path / "c.yaml").write_text("model:\n  hidden_size: 32\nlr: 0.5\nmax-steps: 3\n")
    expected = {"hidden_size": 32, "lr": 0.5, "max_steps": 3}
    assert read_config_file(tmp_path / "c.toml") == expected
    assert read_config_file(tmp_path / "c.yaml") == expected
    (tmp_path / "bad.toml").write_text("= nope")
    with pytest.raises(RnnkitError, match="cannot parse"):
        read_config_file(tmp_path / "bad.toml")


def test_gradient_norm_is_recorded_without_clipping_too():
    trainer = Trainer(nn.Linear(3, 1), LossFunction(_mse), _regression(2), config=_config())
    trainer.fit()
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in trainer.history)
