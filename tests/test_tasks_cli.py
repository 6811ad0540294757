"""The classify / translate / generate-from / forecast commands end to end, and every bad input.

Each task trains a tiny model for a few steps on a small slice in a temp folder, then the run is
used by its follow-up command (predict, translate, sample, evaluate). Bad input must give one
line on stderr naming the problem, exit status 1, and leave an existing run untouched.
"""

import hashlib
import json
import math
import random

import pytest
import torch

from rnnkit.cli import main

TINY = ["--hidden-size", "8", "--embedding-size", "8", "--no-progress", "--seed", "0"]


def run(argv, capsys, stdin=None, monkeypatch=None):
    """``rnnkit argv`` in process: (exit code, stdout, stderr)."""
    if stdin is not None:
        import io

        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def fails(argv, capsys, *needles):
    code, _, err = run(argv, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnkit: error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def digest(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    rng = random.Random(0)
    words = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"]}
    lines = []
    for i in range(60):
        label = "pos" if i % 2 else "neg"
        lines.append(f"{label}\t" + " ".join(rng.choice(words[label] + ["the", "film"]) for _ in range(5)))
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    (folder / "new.txt").write_text("good great film\nawful bad the sad\n")
    (folder / "unseen.txt").write_text("meh\tthe film\n")
    return folder


@pytest.fixture(scope="module")
def classify_run(texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "classify"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "classify",
                "--data",
                str(texts / "train.txt"),
                "--max-steps",
                "3",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--json",
                *TINY,
            ]
        )
    assert e.value.code == 0
    return out


def test_classify_train_predict_evaluate(classify_run, texts, capsys, monkeypatch):
    metrics = json.loads((classify_run / "metrics.json").read_text())
    assert 0 <= metrics["test"]["accuracy"] <= 1 and 0 <= metrics["test"]["macro_f1"] <= 1
    assert (classify_run / "confusion_test.png").stat().st_size > 0
    assert (classify_run / "config.json").is_file() and (classify_run / "best.safetensors").is_file()
    code, out, _ = run(["predict", classify_run, "--input", texts / "new.txt"], capsys)
    assert code == 0
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert len(rows) == 2 and all(r[0] in ("pos", "neg") and 0 <= float(r[1]) <= 1 for r in rows)
    code, out2, _ = run(["predict", classify_run], capsys, stdin="good great film\n", monkeypatch=monkeypatch)
    assert code == 0 and out2.splitlines()[0] == out.splitlines()[0]
    code, out, _ = run(["evaluate", classify_run, "--data", texts / "train.txt", "--json"], capsys)
    figures = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and figures["examples"] == 60


def test_classify_series_from_ts(tmp_path, capsys):
    rng = random.Random(1)
    header = "#toy\n@problemName Toy\n@univariate true\n@equalLength true\n@seriesLength 12\n"
    header += "@classLabel true 1 2\n@data\n"
    rows = []
    for i in range(30):
        label = 1 + i % 2
        rows.append(
            ",".join(f"{(label - 1.5) * math.sin(t / 2) + rng.gauss(0, 0.1):.4f}" for t in range(12))
            + f":{label}"
        )
    (tmp_path / "toy_TRAIN.ts").write_text(header + "\n".join(rows) + "\n")
    code, out, err = run(
        [
            "train",
            "classify",
            "--data",
            tmp_path / "toy_TRAIN.ts",
            "--test",
            tmp_path / "toy_TRAIN.ts",
            "--max-steps",
            "2",
            "--out",
            tmp_path / "run",
            "--json",
            *TINY,
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["test"]["examples"] == 30
    # malformed header: no @classLabel
    (tmp_path / "bad.ts").write_text("@problemName Toy\n@data\n1,2,3:1\n")
    fails(
        ["train", "classify", "--data", tmp_path / "bad.ts", "--out", tmp_path / "r2", *TINY],
        capsys,
        "bad.ts",
        "malformed .ts header",
    )
    (tmp_path / "bad2.ts").write_text("@problemName Toy\nnot a tag\n@data\n1,2,3:1\n")
    fails(
        ["train", "classify", "--data", tmp_path / "bad2.ts", "--out", tmp_path / "r3", *TINY],
        capsys,
        "line 2",
        "malformed .ts header",
    )


def test_classify_bad_inputs_leave_the_run_alone(classify_run, texts, tmp_path, capsys):
    before = digest(classify_run)
    (tmp_path / "data.csv").write_text("label,text\npos,good film\nneg,bad film\n")
    fails(
        [
            "train",
            "classify",
            "--data",
            tmp_path / "data.csv",
            "--text-col",
            "review",
            "--out",
            tmp_path / "r",
            *TINY,
        ],
        capsys,
        "unknown column 'review'",
        "label, text",
    )
    fails(
        [
            "train",
            "classify",
            "--data",
            tmp_path / "data.csv",
            "--label-col",
            "y",
            "--out",
            tmp_path / "r",
            *TINY,
        ],
        capsys,
        "unknown column 'y'",
    )
    classes = tmp_path / "classes"
    classes.mkdir()
    (classes / "pos.txt").write_text("good film\n")
    (classes / "neg.txt").write_text("\n")
    fails(
        ["train", "classify", "--data", classes, "--out", tmp_path / "r", *TINY], capsys, "neg", "empty class"
    )
    fails(["predict", classify_run, "--data", texts / "unseen.txt"], capsys, "'meh' never seen in training")
    fails(["evaluate", classify_run, "--data", texts / "unseen.txt"], capsys, "'meh' never seen in training")
    # training again into the same folder is refused, not overwritten
    fails(
        ["train", "classify", "--data", texts / "train.txt", "--out", classify_run, *TINY],
        capsys,
        "already holds a run",
    )
    assert digest(classify_run) == before


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("translate")
    rng = random.Random(2)
    de = {"eins": "one", "zwei": "two", "drei": "three", "vier": "four"}
    src, tgt = [], []
    for _ in range(40):
        words = [rng.choice(list(de)) for _ in range(rng.randint(1, 4))]
        src.append(" ".join(words))
        tgt.append(" ".join(de[w] for w in words))
    (folder / "train.de").write_text("\n".join(src) + "\n")
    (folder / "train.en").write_text("\n".join(tgt) + "\n")
    (folder / "short.en").write_text("\n".join(tgt[:-1]) + "\n")
    (folder / "pairs.tsv").write_text("\n".join(f"{s}\t{t}" for s, t in zip(src, tgt)) + "\n")
    return folder


def test_translate_end_to_end_and_bad_inputs(pairs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, stdout, err = run(
        [
            "train",
            "translate",
            "--source",
            pairs / "train.de",
            "--target",
            pairs / "train.en",
            "--level",
            "word",
            "--min-freq",
            "1",
            "--max-steps",
            "3",
            "--out",
            out,
            "--json",
            "--beam-size",
            "2",
            *TINY,
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    for split in ("valid", "test"):
        m = result[split]
        assert 0 <= m["token_accuracy"] <= 1 and m["perplexity"] > 1 and 0 <= m["bleu"] <= 100
    assert (out / "attention.png").stat().st_size > 0
    code, stdout, _ = run(
        ["translate", out, "--beam-size", "3", "--heatmap", tmp_path / "h.png"],
        capsys,
        stdin="eins zwei\ndrei\n",
        monkeypatch=monkeypatch,
    )
    # one output line per input line (an untrained model may well emit empty translations)
    assert code == 0 and stdout.count("\n") == 2 and (tmp_path / "h.png").is_file()
    code, stdout, _ = run(["evaluate", out, "--data", pairs / "pairs.tsv", "--json"], capsys)
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["pairs"] == 40

    before = digest(out)
    fails(
        [
            "train",
            "translate",
            "--source",
            pairs / "train.de",
            "--target",
            pairs / "short.en",
            "--out",
            tmp_path / "r2",
            *TINY,
        ],
        capsys,
        "line count",
        "40",
        "39",
    )
    fails(["translate", out, "--beam-size", "0"], capsys, "--beam-size must be a positive integer")
    fails(
        [
            "train",
            "translate",
            "--pairs",
            pairs / "pairs.tsv",
            "--beam-size",
            "0",
            "--out",
            tmp_path / "r3",
            *TINY,
        ],
        capsys,
        "--beam-size",
    )
    assert not (tmp_path / "r3").exists()
    assert digest(out) == before


def test_generate_from_and_sample(texts, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(
        [
            "train",
            "generate-from",
            "--data",
            texts / "train.txt",
            "--level",
            "char",
            "--max-steps",
            "3",
            "--out",
            out,
            "--json",
            *TINY,
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["samples"]) == {"pos", "neg"} and result["valid"]["perplexity"] > 1
    code, stdout, _ = run(["sample", out, "--condition", "pos", "--count", "3", "--seed", "1"], capsys)
    code2, stdout2, _ = run(["sample", out, "--condition", "pos", "--count", "3", "--seed", "1"], capsys)
    assert code == code2 == 0 and stdout == stdout2 and len(stdout.split("\n")) == 4
    fails(["sample", out, "--condition", "meh"], capsys, "'meh' was never seen in training")
    code, stdout, _ = run(["evaluate", out, "--data", texts / "train.txt", "--json"], capsys)
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["examples"] == 60


def test_forecast_end_to_end_and_bad_inputs(tmp_path, capsys):
    rows = ["month,sales,promo"] + [
        f"m{i},{100 + i + 10 * math.sin(i * math.pi / 6):.2f},{i % 3}" for i in range(60)
    ]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    code, stdout, err = run(
        [
            "train",
            "forecast",
            "--data",
            tmp_path / "s.csv",
            "--target-col",
            "sales",
            "--covariates",
            "promo",
            "--horizon",
            "6",
            "--lookback",
            "12",
            "--epochs",
            "1",
            "--passes",
            "1",
            "--hidden-size",
            "8",
            "--out",
            out,
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    m = json.loads(stdout.strip().splitlines()[-1])["test"]
    assert m["points"] == 6 and m["mape"] >= 0 and m["naive_mape"] >= 0
    assert (out / "forecast.png").stat().st_size > 0
    code, stdout, _ = run(["evaluate", out, "--data", tmp_path / "s.csv", "--json"], capsys)
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["points"] == 6

    before = digest(out)
    bad = rows[:30] + ["m30,abc,1"] + rows[31:]
    (tmp_path / "bad.csv").write_text("\n".join(bad) + "\n")
    fails(
        [
            "train",
            "forecast",
            "--data",
            tmp_path / "bad.csv",
            "--target-col",
            "sales",
            "--out",
            tmp_path / "r2",
        ],
        capsys,
        "row 31",
        "'sales'",
        "'abc' is not a number",
    )
    fails(
        [
            "train",
            "forecast",
            "--data",
            tmp_path / "s.csv",
            "--target-col",
            "revenue",
            "--out",
            tmp_path / "r3",
        ],
        capsys,
        "unknown column 'revenue'",
    )
    fails(["evaluate", out, "--data", tmp_path / "bad.csv"], capsys, "is not a number")
    assert digest(out) == before


def _interrupt_after(monkeypatch, steps):
    """Make the Trainer raise Ctrl-C on its ``steps + 1``-th training step (a killed run)."""
    from rnnkit.training.trainer import Trainer

    real, calls = Trainer._train_step, [0]

    def step(self, batch, state):
        calls[0] += 1
        if calls[0] > steps:
            raise KeyboardInterrupt
        return real(self, batch, state)

    monkeypatch.setattr(Trainer, "_train_step", step)


def test_classify_killed_then_resumed_equals_an_uninterrupted_run(texts, tmp_path, capsys, monkeypatch):
    # 48 training examples in batches of 8: 6 steps an epoch; the kill comes in epoch 2, so the
    # resumed run restarts from the checkpoint at the end of epoch 1
    argv = ["train", "classify", "--data", texts / "train.txt", "--epochs", "2", "--batch-size", "8"]
    argv += ["--json", *TINY]
    code, _, _ = run([*argv, "--out", tmp_path / "whole"], capsys)
    assert code == 0
    with monkeypatch.context() as m:
        _interrupt_after(m, 9)
        code, _, _ = run([*argv, "--out", tmp_path / "killed"], capsys)
    assert code == 130
    assert not (tmp_path / "killed" / "metrics.json").exists()
    code, out, _ = run(["train", "classify", "--resume", "--out", tmp_path / "killed", "--json"], capsys)
    assert code == 0, out
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads(out.strip().splitlines()[-1])
    assert resumed["steps"] == whole["steps"] == 12
    assert resumed["test"] == whole["test"] and resumed["valid"] == whole["valid"]
    for name in ("best.safetensors", "model.safetensors"):
        assert digest(tmp_path / "killed")[name] == digest(tmp_path / "whole")[name], name


def test_resume_refuses_what_it_cannot_continue(texts, tmp_path, capsys):
    argv = ["train", "classify", "--data", texts / "train.txt", "--epochs", "1"]  # one step an epoch
    code, _, _ = run([*argv, "--out", tmp_path / "run", "--json", *TINY], capsys)
    assert code == 0
    before = digest(tmp_path / "run")
    fails(["train", "classify", "--resume"], capsys, "--resume needs --out")
    fails(["train", "classify", "--resume", "--out", tmp_path / "none"], capsys, "no such run folder")
    line = fails(
        ["train", "classify", "--resume", "--out", tmp_path / "run", "--hidden-size", "16"],
        capsys,
        "--hidden-size 16 differs from the run's 8",
    )
    assert "only budgets" in line
    fails(["train", "forecast", "--resume", "--out", tmp_path / "run"], capsys, "a 'classify' run")
    assert digest(tmp_path / "run") == before
    # a budget may change: more epochs continue the same run
    code, out, _ = run(
        ["train", "classify", "--resume", "--out", tmp_path / "run", "--epochs", "3", "--json"], capsys
    )
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["steps"] == 3


def test_generate_from_resumes_after_a_kill(texts, tmp_path, capsys, monkeypatch):
    argv = ["train", "generate-from", "--data", texts / "train.txt", "--epochs", "2", "--batch-size", "16"]
    argv += ["--json", *TINY]
    code, _, _ = run([*argv, "--out", tmp_path / "whole"], capsys)
    assert code == 0
    with monkeypatch.context() as m:
        _interrupt_after(m, 5)
        code, _, _ = run([*argv, "--out", tmp_path / "killed"], capsys)
    assert code == 130
    code, _, _ = run(["train", "generate-from", "--resume", "--out", tmp_path / "killed", "--json"], capsys)
    assert code == 0
    assert digest(tmp_path / "killed")["best.safetensors"] == digest(tmp_path / "whole")["best.safetensors"]


def test_forecast_needs_data_unless_resuming_and_resumes_after_a_kill(tmp_path, capsys, monkeypatch):
    fails(["train", "forecast", "--horizon", "6"], capsys, "needs --data")
    rows = ["t,y"] + [f"{i},{50 + 5 * math.sin(i / 3):.3f}" for i in range(80)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    argv = ["train", "forecast", "--data", tmp_path / "s.csv", "--horizon", "4", "--lookback", "8"]
    argv += ["--epochs", "2", "--passes", "1", "--batch-size", "16", "--hidden-size", "8", "--json"]
    code, _, err = run([*argv, "--out", tmp_path / "whole"], capsys)
    assert code == 0, err
    with monkeypatch.context() as m:
        _interrupt_after(m, 5)
        code, _, _ = run([*argv, "--out", tmp_path / "killed"], capsys)
    assert code == 130
    code, out, err = run(["train", "forecast", "--resume", "--out", tmp_path / "killed", "--json"], capsys)
    assert code == 0, err
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert json.loads(out.strip().splitlines()[-1])["test"] == whole["test"]
    # no validation data: the final weights are the model
    assert digest(tmp_path / "killed")["model.safetensors"] == digest(tmp_path / "whole")["model.safetensors"]


def test_translate_resumes_after_a_kill(pairs, tmp_path, capsys, monkeypatch):
    argv = ["train", "translate", "--pairs", pairs / "pairs.tsv", "--level", "word", "--min-freq", "1"]
    argv += ["--epochs", "2", "--batch-size", "8", "--beam-size", "1", "--json", *TINY]
    code, _, err = run([*argv, "--out", tmp_path / "whole"], capsys)
    assert code == 0, err
    with monkeypatch.context() as m:
        _interrupt_after(m, 6)
        code, _, _ = run([*argv, "--out", tmp_path / "killed"], capsys)
    assert code == 130
    code, out, err = run(["train", "translate", "--resume", "--out", tmp_path / "killed", "--json"], capsys)
    assert code == 0, err
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads(out.strip().splitlines()[-1])
    assert resumed["steps"] == whole["steps"] and resumed["valid"] == whole["valid"]
    assert digest(tmp_path / "killed")["best.safetensors"] == digest(tmp_path / "whole")["best.safetensors"]


def test_task_commands_read_a_config_file_and_flags_override_it(texts, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(
        f'data = "{texts / "train.txt"}"\nepochs = 1\nmax-steps = 2\nprogress = false\n'
        "[model]\nhidden_size = 8\nembedding-size = 6\nbidirectional = false\n"
    )
    out = tmp_path / "run"
    code, _, err = run(
        ["train", "classify", "--config", tmp_path / "c.toml", "--hidden-size", "12", "--out", out, "--json"],
        capsys,
    )
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["hidden_size"] == 12  # the flag
    assert saved["model"]["embed_size"] == 6 and saved["model"]["bidirectional"] is False  # the file
    assert saved["train"]["max_steps"] == 2
    (tmp_path / "bad.toml").write_text("hidden-size = 8\nheads = 4\n")
    fails(
        ["train", "classify", "--config", tmp_path / "bad.toml"], capsys, "bad.toml", "unknown option 'heads'"
    )
    (tmp_path / "typo.yaml").write_text("hidden_size: eight\n")
    fails(
        ["train", "forecast", "--config", tmp_path / "typo.yaml"],
        capsys,
        "hidden_size must be an integer, got 'eight'",
    )
    fails(["train", "translate", "--config", tmp_path / "none.toml"], capsys, "config file not found")


def _record_engines(monkeypatch):
    """Record ``(engine, grad enabled)`` for every recurrent layer call."""
    import torch

    import rnnkit.engine as engines

    seen, real = [], engines.resolve

    def resolve(engine, mode, x, weights):
        seen.append((engine, torch.is_grad_enabled()))
        return real(engine, mode, x, weights)

    monkeypatch.setattr(engines, "resolve", resolve)
    return seen


def test_task_commands_take_engine_device_precision_and_tune(texts, tmp_path, capsys, monkeypatch):
    seen = _record_engines(monkeypatch)
    argv = ["train", "classify", "--data", texts / "train.txt", "--epochs", "1", "--json", *TINY]
    argv += ["--engine", "reference", "--device", "cpu", "--precision", "bf16", "--tune"]
    code, out, err = run([*argv, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    trained = [engine for engine, grad in seen if grad]
    assert trained and set(trained) == {"reference"}  # every training call, on the engine asked for
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["device"] == "cpu" and saved["train"]["precision"] == "bf16"
    assert saved["train"]["tune"] is True and saved["options"]["engine"] == "reference"
    assert math.isfinite(json.loads(out.strip().splitlines()[-1])["valid"]["accuracy"])
    # where and how a run trains may change when it is resumed; the rest may not
    seen.clear()
    code, out, err = run(
        ["train", "classify", "--resume", "--out", tmp_path / "run", "--epochs", "2", "--engine", "fused"],
        capsys,
    )
    assert code == 0, err
    assert {engine for engine, grad in seen if grad} == {"fused"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["options"]["engine"] == "reference"


def test_task_commands_refuse_an_engine_or_device_that_cannot_run_before_writing(
    texts, tmp_path, capsys, monkeypatch
):
    import torch

    from rnnkit.engine import triton_engine

    argv = ["train", "classify", "--data", texts / "train.txt", "--epochs", "1", *TINY]
    fails([*argv, "--engine", "cudnn", "--out", tmp_path / "a"], capsys, "--engine must be one of", "'cudnn'")
    monkeypatch.setattr(triton_engine, "INTERPRETED", False)
    monkeypatch.setattr(triton_engine, "AVAILABLE", True)
    fails(
        [*argv, "--engine", "triton", "--device", "cpu", "--out", tmp_path / "b"],
        capsys,
        "--engine triton runs on CUDA only",
        "--device cuda",
    )
    monkeypatch.setattr(triton_engine, "AVAILABLE", False)
    monkeypatch.setattr(triton_engine, "MISSING", triton_engine.NOT_INSTALLED)
    fails([*argv, "--engine", "triton", "--out", tmp_path / "c"], capsys, "needs Triton", "rnnkit[gpu]")
    if not torch.cuda.is_available():
        fails([*argv, "--device", "cuda", "--out", tmp_path / "d"], capsys, "CUDA is not available")
    fails([*argv, "--precision", "fp8", "--out", tmp_path / "e"], capsys, "--precision")
    assert not any((tmp_path / name).exists() for name in "abcde")


def _task_runs(texts, pairs, folder, capsys, device="cpu"):
    """A tiny run of each task, trained on ``device``. Returns ``{task: run folder}`` and the
    follow-up commands that use the runs (each ``rnnkit`` argv)."""
    rows = ["month,sales"] + [f"m{i},{100 + i + 10 * math.sin(i * math.pi / 6):.2f}" for i in range(48)]
    (folder / "s.csv").write_text("\n".join(rows) + "\n")
    (folder / "lines.txt").write_text("eins zwei\ndrei\n")
    train = {  # task: (its own options, its labelled data)
        "classify": (["--epochs", "1", "--bidirectional", *TINY], texts / "train.txt"),
        "translate": (["--level", "word", "--min-freq", "1", *TINY], pairs / "pairs.tsv"),
        "generate-from": (["--level", "char", *TINY], texts / "train.txt"),
        "forecast": (
            ["--target-col", "sales", "--horizon", "4", "--lookback", "12", "--hidden-size", "8"],
            folder / "s.csv",
        ),
    }
    runs, follow_ups = {}, []
    for task, (options, data) in train.items():
        runs[task] = folder / task
        where = ["--pairs" if task == "translate" else "--data", data, "--out", runs[task]]
        code, _, err = run(
            ["train", task, *where, *options, "--max-steps", "3", "--device", device, "--json"], capsys
        )
        assert code == 0, err
        follow_ups.append(["evaluate", runs[task], "--data", data, "--json"])
    follow_ups += [
        ["predict", runs["classify"], "--input", texts / "new.txt", "--json"],
        ["translate", runs["translate"], "--input", folder / "lines.txt", "--heatmap", folder / "h.png"],
        ["translate", runs["translate"], "--input", folder / "lines.txt", "--beam-size", "3"],
        ["sample", runs["generate-from"], "--condition", "pos", "--seed", "3"],
    ]
    return runs, follow_ups


#: The models' inference and training entry points, checked for tensors made without naming a
#: device: on the CPU this finds what would break on a GPU (see :func:`_strays_are_errors`).
_GUARDED = {
    "rnnkit.models.classifier.SequenceClassifier": ("forward",),
    "rnnkit.models.seq2seq.Seq2Seq": ("forward", "loss", "greedy", "sample", "beam_search"),
    "rnnkit.models.conditional.ConditionalGenerator": ("forward", "loss", "generate"),
    "rnnkit.models.forecaster.Forecaster": ("forward", "predict"),
}


def _strays_are_errors(monkeypatch):
    """Inside the guarded methods, a tensor made without a device lands on the meta device, and
    any operation that mixes it with a real tensor (more than a 0-dim scalar, which CUDA would
    accept from the CPU) fails the test. The recurrent layers run unguarded: their CPU engines
    rightly make CPU tensors, and the layers' own GPU tests cover their devices."""
    import importlib

    from torch.overrides import TorchFunctionMode
    from torch.utils._device import _device_constructors
    from torch.utils._pytree import tree_leaves

    class Strays(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in _device_constructors() and kwargs.get("device") is None:
                kwargs["device"] = "meta"
            leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim()]
            kinds = {t.device.type for t in leaves}
            assert not ("meta" in kinds and len(kinds) > 1), f"{func}: a tensor made without a device"
            return func(*args, **kwargs)

    for path, names in _GUARDED.items():
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        for method in names:
            real = getattr(cls, method)

            def guarded(self, *args, _real=real, **kwargs):
                with Strays():
                    return _real(self, *args, **kwargs)

            monkeypatch.setattr(cls, method, guarded)
    from rnnkit.layers import RNNBase

    layer_forward = RNNBase.forward

    def unguarded(self, *args, **kwargs):
        with torch._C.DisableTorchFunction():  # no mode inside the layer
            return layer_forward(self, *args, **kwargs)

    monkeypatch.setattr(RNNBase, "forward", unguarded)


def test_task_models_make_every_tensor_on_their_own_device(texts, pairs, tmp_path, capsys, monkeypatch):
    _strays_are_errors(monkeypatch)
    _, follow_ups = _task_runs(texts, pairs, tmp_path, capsys)
    for argv in follow_ups:
        code, _, err = run(argv, capsys)
        assert code == 0, (argv, err)


def test_task_follow_up_commands_take_a_device(texts, pairs, tmp_path, capsys):
    runs, follow_ups = _task_runs(texts, pairs, tmp_path, capsys)
    for argv in follow_ups:
        code, default, err = run(argv, capsys)
        assert code == 0, (argv, err)
        code, on_cpu, err = run([*argv, "--device", "cpu"], capsys)
        assert code == 0 and on_cpu == default, (argv, err)
        if not torch.cuda.is_available():
            fails([*argv, "--device", "cuda"], capsys, "--device cuda", "CUDA is not available")
            code, auto, err = run([*argv, "--device", "auto"], capsys)
            assert code == 0 and auto == default, (argv, err)
    fails(["predict", runs["classify"], "--device", "tpu"], capsys, "--device")


#: Figures that vary smoothly with the weights (the rest count argmax decisions, which a
#: rounding difference between devices may flip on an untrained model).
_SMOOTH = {"loss", "perplexity", "free_running_perplexity", "mape", "mae", "naive_mape", "naive_mae"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_task_runs_score_alike_on_cuda_and_cpu(texts, pairs, tmp_path, capsys):
    runs, follow_ups = _task_runs(texts, pairs, tmp_path, capsys, device="cuda")
    for task, out in runs.items():
        trained = json.loads((out / "metrics.json").read_text())
        assert trained["steps"] == 3, task
    for argv in follow_ups:
        code, on_gpu, err = run([*argv, "--device", "cuda"], capsys)
        assert code == 0, (argv, err)
        code, on_cpu, err = run([*argv, "--device", "cpu"], capsys)
        assert code == 0, (argv, err)
        assert on_gpu.count("\n") == on_cpu.count("\n"), argv
        if argv[0] == "evaluate":  # figures: equal up to TF32 / reduction-order rounding
            gpu, cpu = (json.loads(o.strip().splitlines()[-1]) for o in (on_gpu, on_cpu))
            assert gpu.keys() == cpu.keys(), argv
            for key, value in cpu.items():
                if isinstance(value, int):
                    assert gpu[key] == value, (argv, key)
                elif key in _SMOOTH:
                    assert gpu[key] == pytest.approx(value, rel=2e-2, abs=1e-3), (argv, key)
                else:
                    assert abs(gpu[key] - value) <= 0.25, (argv, key)  # a few flipped decisions
