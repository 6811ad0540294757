"""The command line: --help with defaults, train -> generate -> evaluate, --config, --resume, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from rnnkit.cli import main

# Small and fast: a tiny model on a tiny text, the reference engine (no JIT warm-up).
TINY = ["--hidden-size", "16", "--batch-size", "4", "--bptt", "16", "--engine", "reference", "--no-progress"]


def run_cli(args, capsys):
    """Run ``rnnkit ARGS`` in-process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnkit: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    words = "the quick brown fox jumps over a lazy dog and then it sleeps".split()
    path.write_text(
        "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(9)) for i in range(60)) + "\n"
    )
    return path


@pytest.fixture(scope="module")
def run(text, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main_exit(
        ["train", "lm", "--text", text, "--out", out, "--max-steps", "8", "--sample-length", "30", *TINY]
    )
    assert code == 0
    return out


def main_exit(args):
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return None


@pytest.mark.parametrize(
    "args, shown",
    [
        ([], "train"),
        (["train", "lm"], "[default: 64]"),
        (["generate"], "[default: 300]"),
        (["evaluate"], "--json"),
    ],
)
def test_help_shows_commands_and_defaults(args, shown, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli([*args, "--help"], capsys)
    assert code == 0 and shown in out


def test_train_writes_the_run_folder_and_prints_a_sample(run):
    for name in (
        "config.json",
        "model.safetensors",
        "trainer_state.pt",
        "steps.csv",
        "loss.png",
        "sample.txt",
    ):
        assert (run / name).is_file(), name
    saved = json.loads((run / "config.json").read_text())
    assert saved["task"] == "lm" and saved["model"]["hidden_size"] == 16
    assert len((run / "steps.csv").read_text().splitlines()) == 1 + 8


def test_generate_streams_a_seeded_sample(run, capsys):
    code, out, _ = run_cli(["generate", run, "--prime", "the ", "--length", "25", "--seed", "3"], capsys)
    assert code == 0 and out.startswith("the ") and len(out.rstrip("\n")) == 4 + 25
    assert run_cli(["generate", run, "--prime", "the ", "--length", "25", "--seed", "3"], capsys)[1] == out


def test_evaluate_prints_figures_last_and_json(run, text, capsys):
    code, out, _ = run_cli(["evaluate", run, "--text", text], capsys)
    assert code == 0 and out.strip().splitlines()[-1].startswith("loss ")
    code, out, _ = run_cli(["evaluate", run, "--text", text, "--json"], capsys)
    figures = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and set(figures) >= {"loss", "perplexity", "bpc", "tokens"}


def test_config_file_with_flags_overriding(text, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(
        '[model]\nhidden-size = 12\ncell = "gru"\n[train]\nmax-steps = 2\ntune = true\n'
    )
    out = tmp_path / "run"
    args = ["train", "lm", "--text", text, "--out", out, "--config", tmp_path / "c.toml", *TINY]
    code, _, _ = run_cli([*args, "--hidden-size", "10", "--sample-length", "5"], capsys)
    saved = json.loads((out / "config.json").read_text())
    assert code == 0 and saved["model"]["cell"] == "gru" and saved["model"]["hidden_size"] == 10
    assert saved["train"]["max_steps"] == 2 and saved["train"]["tune"] is True


def test_resume_continues_to_the_same_curve(text, tmp_path, capsys):
    common = ["train", "lm", "--text", text, "--checkpoint-every", "3", "--sample-length", "5", *TINY]
    assert run_cli([*common, "--out", tmp_path / "whole", "--max-steps", "10"], capsys)[0] == 0
    assert run_cli([*common, "--out", tmp_path / "cut", "--max-steps", "4"], capsys)[0] == 0
    code, out, _ = run_cli(
        ["train", "lm", "--out", tmp_path / "cut", "--resume", "--max-steps", "10", "--tune"], capsys
    )  # --tune may change on resume: it changes speed only
    assert code == 0 and "(resuming)" in out
    whole = (tmp_path / "whole" / "steps.csv").read_text().splitlines()
    assert (tmp_path / "cut" / "steps.csv").read_text().splitlines() == whole


# --- bad input: one line on stderr, exit status != 0, nothing saved is damaged -------------------


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "the text is empty"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary"),
        (b"na\xefve caf\xe9\n" * 50, "not valid UTF-8"),
        (b"tiny\n", "too few for --batch-size 4"),
    ],
)
def test_bad_text_files(content, fragment, tmp_path, capsys):
    (tmp_path / "t.txt").write_bytes(content)
    code, _, err = run_cli(
        ["train", "lm", "--text", tmp_path / "t.txt", "--out", tmp_path / "r", *TINY], capsys
    )
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--bptt", "0"], "--bptt must be a positive integer"),
        (["--cell", "lstn"], "unknown cell 'lstn'"),
        (["--bptt", "ten"], "--bptt"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_bad_flags(flags, fragment, capsys):
    code, _, err = run_cli(["train", "lm", *flags], capsys)
    assert_one_line_error(code, err, fragment)


def test_missing_run_folder(tmp_path, capsys):
    for command in (["generate", tmp_path / "nope"], ["evaluate", tmp_path / "nope", "--text", "x"]):
        code, _, err = run_cli(command, capsys)
        assert_one_line_error(code, err, "nope")
    code, _, err = run_cli(["train", "lm", "--out", tmp_path, "--resume"], capsys)
    assert_one_line_error(code, err, "no checkpoint to resume")


def test_prime_outside_the_vocabulary_prints_nothing(run, capsys):
    code, out, err = run_cli(["generate", run, "--prime", "the QUICK"], capsys)
    assert_one_line_error(code, err, "'Q'", "'U'")
    assert out == ""


def test_corrupt_checkpoint(run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    (broken / "trainer_state.pt").write_bytes(b"garbage")
    code, _, err = run_cli(["generate", broken], capsys)
    assert_one_line_error(code, err, "model.safetensors", "corrupt")
    code, _, err = run_cli(["train", "lm", "--out", broken, "--resume", "--max-steps", "20"], capsys)
    assert_one_line_error(code, err, "trainer_state.pt", "corrupt")


def test_incompatible_resume_and_overwrite_leave_the_checkpoint_alone(run, text, capsys):
    before = digest(run)
    code, _, err = run_cli(["train", "lm", "--out", run, "--resume", "--hidden-size", "32"], capsys)
    assert_one_line_error(code, err, "--hidden-size 32 differs from the run's 16")
    code, _, err = run_cli(["train", "lm", "--text", text, "--out", run, *TINY], capsys)
    assert_one_line_error(code, err, "already holds a run", "--resume")
    assert digest(run) == before


def test_triton_engine_off_cuda_is_refused_before_anything_is_written(text, tmp_path, capsys, monkeypatch):
    from rnnkit.engine import triton_engine

    monkeypatch.setattr(triton_engine, "INTERPRETED", False)
    monkeypatch.setattr(triton_engine, "AVAILABLE", True)
    args = ["train", "lm", "--text", text, "--out", tmp_path / "run", "--hidden-size", "16"]
    code, _, err = run_cli([*args, "--engine", "triton", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--engine triton runs on CUDA only")
    assert not (tmp_path / "run").exists()


def test_a_run_trained_on_the_triton_engine_loads_on_the_cpu(run, tmp_path, capsys, monkeypatch):
    import shutil

    from rnnkit.engine import triton_engine
    from rnnkit.training.lm import load_lm

    monkeypatch.setattr(triton_engine, "INTERPRETED", False)
    gpu_run = tmp_path / "gpu_run"
    shutil.copytree(run, gpu_run)
    saved = json.loads((gpu_run / "config.json").read_text())
    saved["model"]["engine"] = "triton"  # as written by a run trained with --engine triton on a GPU
    (gpu_run / "config.json").write_text(json.dumps(saved))
    model, _, _ = load_lm(gpu_run, "cpu")
    assert model.rnn.engine == "auto"
    assert load_lm(gpu_run, "cpu", engine="reference")[0].rnn.engine == "reference"
    code, out, err = run_cli(["generate", gpu_run, "--length", "20", "--seed", "1"], capsys)
    assert code == 0, err
    code, reference, _ = run_cli(["generate", run, "--length", "20", "--seed", "1"], capsys)
    assert out == reference


def test_console_script_error_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "rnnkit.cli", "train", "lm", "--bptt", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "rnnkit: error: --bptt must be a positive integer, got 0"
