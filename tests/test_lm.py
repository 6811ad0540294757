"""The language model, stateful truncated BPTT, resume after a kill, checkpoints and sampling."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from rnnkit.data import StreamBatches
from rnnkit.errors import RnnkitError
from rnnkit.generate import SamplingConfig, filter_logits, generate, sample_ids
from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.training import TrainConfig, Trainer, tree_map
from rnnkit.training.checkpoint import load_weights, save_weights
from rnnkit.training.lm import LanguageModelTask, LMRunConfig, evaluate_lm, load_lm, train_lm

V = 11


def tiny_model(cell="lstm", layers=1, hidden=8, dtype=torch.float64, seed=0, engine="reference", **kw):
    # The reference engine: these tests are about training, and it needs no JIT warm-up.
    torch.manual_seed(seed)
    config = LanguageModelConfig(V, cell=cell, hidden_size=hidden, num_layers=layers, engine=engine, **kw)
    return LanguageModel(config).to(dtype)


def corpus(n=400, seed=0):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def sgd(**kw):
    base = dict(
        epochs=1, optimizer="sgd", lr=0.5, clip=0.0, schedule="constant", progress=False, device="cpu"
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_state_carried_across_chunks_equals_one_long_run(cell):
    model = tiny_model(cell, layers=2)
    tokens = corpus(60).view(20, 3)  # (T, B)
    whole, final = model(tokens)
    state, parts = None, []
    for chunk in tokens.split(7):
        logits, state = model(chunk, state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts), whole)
    for a, b in zip(state if cell == "lstm" else [state], final if cell == "lstm" else [final]):
        torch.testing.assert_close(a, b)


def _manual_steps(model, streams, bptt, lr, *, carry=True):
    """SGD by hand over chunks of ``streams`` (N, B): the state detached at each chunk edge."""
    model = copy.deepcopy(model)
    state = None
    for start in range(0, streams.shape[0] - 1, bptt):
        x = streams[start : start + bptt]
        y = streams[start + 1 : start + 1 + bptt]
        x = x[: y.shape[0]]
        logits, new_state = model(x, state if carry else None)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        state = tree_map(torch.Tensor.detach, new_state)
    return model


def _trained(model, ids, B, bptt, **kw):
    model = copy.deepcopy(model)
    Trainer(model, LanguageModelTask("char"), StreamBatches(ids, B, bptt), config=sgd(**kw)).fit()
    return model


def _assert_same_params(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=name)


def test_truncated_bptt_equals_full_bptt_when_window_covers_the_sequence():
    model, ids, B = tiny_model(), corpus(4 * 30), 4
    streams = ids.view(B, 30).t()  # (N=30, B): what StreamBatches lays out
    x, y = streams[:-1], streams[1:]  # the whole sequence at once, full BPTT
    full = copy.deepcopy(model)
    loss = F.cross_entropy(full(x)[0].flatten(0, 1), y.flatten())
    loss.backward()
    with torch.no_grad():
        for p in full.parameters():
            p -= 0.5 * p.grad
    for bptt in (29, 64):  # T = 29 predictions per stream
        _assert_same_params(_trained(model, ids, B, bptt), full)


def test_truncated_bptt_carries_state_and_cuts_gradient_at_each_window():
    model, ids, B, bptt = tiny_model("gru"), corpus(4 * 30), 4, 8
    streams = ids.view(B, 30).t()
    trained = _trained(model, ids, B, bptt)
    _assert_same_params(trained, _manual_steps(model, streams, bptt, 0.5))
    # The carried state matters: restarting every window from zeros trains something else.
    reset = _manual_steps(model, streams, bptt, 0.5, carry=False)
    assert not torch.allclose(trained.head.weight, reset.head.weight)


class Killed(Exception):
    pass


class KillAt(LanguageModelTask):
    """Dies during training step ``at`` (1-based), like a SIGKILL: nothing after it is saved."""

    def __init__(self, at):
        super().__init__("char")
        self.at, self.calls = at, 0

    def step(self, model, batch, state):
        if model.training:
            self.calls += 1
            if self.calls == self.at:
                raise Killed
        return super().step(model, batch, state)


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    ids, valid = corpus(4 * 41), corpus(60, seed=1)
    kw = dict(epochs=2, optimizer="adamw", lr=0.01, clip=1.0, schedule="plateau", checkpoint_every=3)

    def trainer(run_dir, task=None):
        model = tiny_model(dropout=0.3, dtype=torch.float32)  # dropout: the RNG state must resume too
        batches = StreamBatches(ids, 4, 8)  # 5 steps per epoch
        return Trainer(
            model,
            task or LanguageModelTask("char"),
            batches,
            StreamBatches(valid, 2, 8),
            sgd(**kw),
            run_dir=run_dir,
        )

    whole = trainer(tmp_path / "whole")
    whole.fit()
    with pytest.raises(Killed):
        trainer(tmp_path / "killed", KillAt(8)).fit()  # last checkpoint: step 6, mid-epoch 2
    assert len((tmp_path / "killed" / "steps.csv").read_text().splitlines()) == 1 + 7
    resumed = trainer(tmp_path / "killed")
    resumed.fit(resume=True)
    for name in ("steps.csv", "epochs.csv"):
        a = (tmp_path / "whole" / name).read_text().splitlines()
        b = (tmp_path / "killed" / name).read_text().splitlines()
        assert a == b, name
    for p, q in zip(whole.module.parameters(), resumed.module.parameters()):
        assert torch.equal(p, q)


def _write_text(path, n=3000):
    words = "the cat sat on a mat and the dog ran to the red sun while it was warm".split()
    g = torch.Generator().manual_seed(0)
    text = " ".join(words[i] for i in torch.randint(0, len(words), (n // 4,), generator=g).tolist())
    path.write_text(text[:n] + "\n")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    text = _write_text(root / "text.txt")
    config = LMRunConfig.from_flat(
        dict(
            text=str(text),
            out=str(root / "run"),
            hidden_size=24,
            batch_size=4,
            bptt=16,
            epochs=2,
            lr=0.01,
            progress=False,
            sample_length=20,
            tie_weights=True,
            device="cpu",
            engine="reference",
        )
    )
    return train_lm(config, echo=lambda line: None), text


def test_checkpoint_round_trip(trained_run, tmp_path):
    result, _ = trained_run
    model, vocab, saved = load_lm(result.run_dir)
    assert saved["model"]["tie_weights"] and model.head.weight is model.embedding.weight
    assert vocab.tokens == saved["vocab"]["tokens"] and len(vocab) == model.config.vocab_size
    copy_ = LanguageModel(model.config)
    save_weights(tmp_path / "w.safetensors", model)
    load_weights(tmp_path / "w.safetensors", copy_)
    tokens = torch.randint(0, len(vocab), (9, 2))
    torch.testing.assert_close(copy_(tokens)[0], model(tokens)[0], rtol=0, atol=0)


def test_evaluate_in_chunks_equals_one_pass_over_the_whole_text(trained_run, tmp_path):
    result, _ = trained_run
    model, vocab, _ = load_lm(result.run_dir)
    text = "the red dog sat on the warm mat and the cat ran " * 12  # > 256 characters: several chunks
    (tmp_path / "eval.txt").write_text(text)
    figures = evaluate_lm(result.run_dir, tmp_path / "eval.txt")
    ids = torch.tensor(vocab.encode(list(text)))
    with torch.no_grad():
        logits, _ = model(ids[:-1, None])
        loss = F.cross_entropy(logits[:, 0], ids[1:]).item()
    assert figures["tokens"] == len(text) - 1
    assert figures["loss"] == pytest.approx(loss, rel=1e-5)
    assert figures["bpc"] == pytest.approx(loss / 0.6931471805599453, rel=1e-5)


def test_training_learns_the_text(trained_run):
    result, _ = trained_run
    assert result.valid["bpc"] < 3.0  # uniform over the ~17 characters would be ~4.1 bits
    assert len(result.sample) == 20


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(trained_run):
    model, vocab, _ = load_lm(trained_run[0].run_dir)
    sample = lambda **kw: "".join(generate(model, vocab, "the ", SamplingConfig(length=40, **kw)))  # noqa: E731
    assert sample(seed=3) == sample(seed=3)
    assert sample(seed=3) != sample(seed=4)
    greedy = sample(temperature=0)
    assert sample(top_k=1, temperature=1.5, seed=5) == greedy == sample(top_k=1, seed=6)


def test_step_by_step_generation_equals_rerunning_the_prefix(trained_run):
    model, vocab, _ = load_lm(trained_run[0].run_dir)
    prime = vocab.encode(list("a cat "))
    out = list(sample_ids(model, prime, SamplingConfig(length=15, temperature=0)))
    with torch.no_grad():
        for i, token in enumerate(out):
            prefix = torch.tensor(prime + out[:i])[:, None]  # (T, 1): the whole text so far
            assert int(model(prefix)[0][-1, 0].argmax()) == token


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p)).tolist()  # noqa: E731
    assert kept(0.79) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(0.1) == [True, False, False, False]
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [True, True, False, False]


def test_bad_prime_and_bad_configs(trained_run):
    model, vocab, _ = load_lm(trained_run[0].run_dir)
    with pytest.raises(RnnkitError, match="prime has 1 character"):
        generate(model, vocab, "the Zeta", SamplingConfig(length=5))
    with pytest.raises(RnnkitError, match="unknown cell 'transformer'"):
        LanguageModelConfig(V, cell="transformer")
    with pytest.raises(RnnkitError, match="tie_weights needs"):
        LanguageModelConfig(V, hidden_size=8, embedding_size=4, tie_weights=True)
    with pytest.raises(RnnkitError, match="--top-p"):
        SamplingConfig(top_p=0)


def test_corrupt_weights_are_reported(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0].run_dir, run)
    (run / "best.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RnnkitError, match="corrupt"):
        load_lm(run)
