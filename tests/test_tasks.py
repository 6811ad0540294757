"""Each benchmark task's generator has the statistics it promises."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.tasks import AddingTask, CopyTask, RecallTask, make_task


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "task", [AddingTask(17), CopyTask(9, symbols=5, copy_length=4), RecallTask(30, min_length=12)]
)
def test_generators_are_seeded_and_shaped(task):
    a, b = task.sample(16, gen(3)), task.sample(16, gen(3))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.lengths, b.lengths)
    c = task.sample(16, gen(4))
    assert not torch.equal(a.inputs, c.inputs)
    assert a.lengths.dtype == torch.int64 and a.lengths.shape == (16,)
    assert int(a.lengths.max()) <= a.steps and int(a.lengths.min()) >= 1


def test_adding_target_is_the_sum_of_the_two_marked_values():
    task = AddingTask(40)
    batch = task.sample(2000, gen())
    values, markers = batch.inputs[..., 0], batch.inputs[..., 1]  # (B, T)
    assert batch.inputs.shape == (2000, 40, 2)
    assert ((values >= 0) & (values < 1)).all()
    assert torch.equal(markers.sum(1), torch.full((2000,), 2.0))
    assert torch.equal(markers[:, :20].sum(1), torch.ones(2000)), "one marker in each half"
    torch.testing.assert_close(batch.targets, (values * markers).sum(1))
    # The sum of two U(0, 1) has mean 1 and variance 1/6, the error of a memoryless guess.
    assert batch.targets.mean() == pytest.approx(1.0, abs=0.03)
    assert batch.targets.var() == pytest.approx(1 / 6, abs=0.015)
    assert task.metric(torch.ones(2000, 1), batch) == pytest.approx(task.chance, abs=0.015)
    assert task.metric(batch.targets.unsqueeze(1), batch) == 0.0 and task.solved(0.0)


def test_copy_memory_layout():
    task = CopyTask(12, symbols=6, copy_length=5)
    batch = task.sample(500, gen())
    T, K = 12 + 2 * 5, 5
    assert batch.inputs.shape == batch.targets.shape == (500, T)
    data = batch.inputs[:, :K]
    assert ((data >= 1) & (data <= 6)).all()
    assert (batch.inputs[:, K + 12 - 1] == task.delimiter).all()
    rest = torch.cat([batch.inputs[:, K : K + 11], batch.inputs[:, K + 12 :]], dim=1)
    assert (rest == 0).all(), "blanks everywhere but the data and the delimiter"
    assert torch.equal(batch.targets[:, -K:], data) and (batch.targets[:, :-K] == 0).all()
    assert (
        torch.bincount(data.flatten(), minlength=7)[1:].float().div(data.numel()).sub(1 / 6).abs().max()
        < 0.02
    )
    # A perfect prediction scores 1; the loss of a blank-then-uniform guess is K log(symbols) / T.
    perfect = torch.nn.functional.one_hot(batch.targets, task.output_size).float() * 50
    assert task.metric(perfect, batch) == 1.0
    guess = torch.zeros(500, T, task.output_size)
    guess[:, : T - K, 0] = 50
    assert float(task.loss(guess, batch)) == pytest.approx(K * math.log(task.output_size) / T, rel=1e-4)


def test_recall_answer_is_the_country_after_the_cue():
    task = RecallTask(50, countries=5, decoys=3, min_length=20)
    batch = task.sample(400, gen())
    C = 5
    for b in range(400):
        n = int(batch.lengths[b])
        seq = batch.inputs[b]
        assert (
            seq[n - 1] == task.FLUENT_IN and (seq[n:] == task.PAD).all() and (seq[: n - 1] != task.PAD).all()
        )
        (cue,) = (seq == task.GREW_UP_IN).nonzero().flatten().tolist()
        assert cue <= n // 10, "the fact comes within the first tenth"
        assert int(seq[cue + 1]) - 4 == int(batch.targets[b])
        visits = (seq == task.VISITED).nonzero().flatten().tolist()
        assert len(visits) == 3 and all(v > cue + 1 for v in visits)
        decoys = [int(seq[v + 1]) - 4 for v in visits]
        assert all(0 <= d < C and d != int(batch.targets[b]) for d in decoys)
        countries = ((seq >= 4) & (seq < 4 + C)).sum()
        assert countries == 4, "only the fact and the decoys mention countries"
    assert set(batch.lengths.tolist()) <= set(range(20, 51)) and len(set(batch.lengths.tolist())) > 10
    counts = torch.bincount(batch.targets, minlength=C).float() / 400
    assert (counts - 1 / C).abs().max() < 0.06
    assert "I grew up in" in task.describe(batch, 0) and task.describe(batch, 0).count("I visited") == 3


def test_recall_metric_and_loss():
    task = RecallTask(10)
    batch = task.sample(64, gen())
    logits = torch.nn.functional.one_hot(batch.targets, 4).float() * 20
    assert task.metric(logits, batch) == 1.0 and task.solved(1.0) and not task.solved(task.chance)
    assert float(task.loss(logits, batch)) < 1e-6


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="length must be an integer >= 2"):
        AddingTask(1)
    with pytest.raises(ValueError, match=r"length must be an integer >= 7, got 6"):
        RecallTask(6)
    with pytest.raises(ValueError, match="min_length must not exceed length=10"):
        RecallTask(10, min_length=11)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope", 10)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        CopyTask(5).sample(0)
    with pytest.raises(ValueError, match=r"expected predictions of shape \(B, K\)"):
        RecallTask(10).loss(torch.zeros(2, 10, 4), RecallTask(10).sample(2))
