"""``rnnkit train classify``, ``rnnkit predict``: the command line of :mod:`rnnkit.training.classify`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import RnnkitError
from ..training.classify import load_classifier, predict_proba, read_labelled, run_classify
from ._common import (
    ClipOption,
    ConfigOption,
    DeviceOption,
    EarlyStoppingOption,
    EngineOption,
    InferenceDeviceOption,
    JsonOption,
    LrOption,
    MaxStepsOption,
    PrecisionOption,
    ProgressOption,
    ResumeOption,
    ScheduleOption,
    SeedOption,
    TuneOption,
    command_options,
)

__all__ = ["predict", "train_classify"]


def train_classify(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            help="labelled data: CSV/TSV, label<TAB>text, folder, .ts; default: surnames -> language"
        ),
    ] = None,
    valid: Annotated[Path | None, typer.Option(help="validation data (default: 10% held out)")] = None,
    test: Annotated[
        Path | None, typer.Option(help="test data (default: 10% held out when no --valid)")
    ] = None,
    text_col: Annotated[str | None, typer.Option(help="CSV/TSV text column (default: 'text')")] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV/TSV label column (default: 'label')")] = None,
    level: Annotated[str, typer.Option(help="text tokens: auto, char or word")] = "auto",
    cell: Annotated[str, typer.Option(help="lstm, gru or rnn")] = "lstm",
    layers: Annotated[int, typer.Option(help="stacked recurrent layers")] = 1,
    hidden_size: Annotated[int, typer.Option(help="hidden units per direction")] = 128,
    embedding_size: Annotated[int, typer.Option(help="token embedding size")] = 64,
    bidirectional: Annotated[bool, typer.Option(help="read both directions")] = True,
    pooling: Annotated[str, typer.Option(help="last, mean or max over valid steps")] = "last",
    dropout: Annotated[
        float, typer.Option(help="dropout on embeddings, between layers, before the head")
    ] = 0.0,
    batch_size: Annotated[int, typer.Option(help="examples per batch")] = 64,
    epochs: Annotated[int, typer.Option(help="passes over the training data")] = 10,
    max_steps: MaxStepsOption = None,
    lr: LrOption = 3e-3,
    clip: ClipOption = 1.0,
    schedule: ScheduleOption = "cosine",
    early_stopping: EarlyStoppingOption = 3,
    seed: SeedOption = 0,
    engine: EngineOption = "auto",
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    tune: TuneOption = False,
    out: Annotated[Path | None, typer.Option(help="run folder (default: runs/classify-<timestamp>)")] = None,
    resume: ResumeOption = False,
    config: ConfigOption = None,
    progress: ProgressOption = True,
    as_json: JsonOption = False,
) -> None:
    """Train a sequence classifier; reports accuracy, macro-F1 and a confusion matrix PNG."""
    opts, given = command_options(ctx, train_classify, dict(locals()))
    result = run_classify(given=given, **opts)
    if not result:  # another rank's process under torchrun: rank 0 prints
        return
    _print(result, as_json)


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for name in ("valid", "test"):
        if name in result:
            m = result[name]
            print(
                f"{name:5}  accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
                f"({m['examples']} examples)"
            )
    if "run_dir" in result:
        print(
            f"saved  {result['run_dir']}/ (best.safetensors, confusion_*.png, metrics.json)  "
            f"{result['seconds']} s"
        )


def predict(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by 'rnnkit train classify'")],
    input: Annotated[Path | None, typer.Option("--input", help="one text per line (default: stdin)")] = None,
    data: Annotated[
        Path | None, typer.Option(help="labelled data (any training format): also scores it")
    ] = None,
    text_col: Annotated[str | None, typer.Option(help="CSV/TSV text column")] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV/TSV label column")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    device: InferenceDeviceOption = "cpu",
) -> None:
    """Classify new inputs: prints 'label<TAB>probability' per input, in order."""
    import sys

    model, encoder = load_classifier(run_dir, device)
    if data is not None:
        d = read_labelled(data, text_col, label_col)
        inputs = encoder.inputs(d, str(data))
        encoder.targets(d.labels, str(data))  # a label unknown to the model is an error, before any output
    else:
        if encoder.kind != "text":
            raise RnnkitError("predict: this model classifies numeric sequences; pass them with --data FILE")
        lines = (input.read_text(encoding="utf-8") if input else sys.stdin.read()).split("\n")
        inputs = encoder.inputs([line.strip() for line in lines if line.strip()], str(input or "stdin"))
    if not inputs:
        raise RnnkitError("predict: no inputs")
    probs = predict_proba(model, encoder, inputs)
    for row in probs:
        k = int(row.argmax())
        if as_json:
            print(json.dumps({"label": encoder.labels[k], "probability": round(float(row[k]), 4)}))
        else:
            print(f"{encoder.labels[k]}\t{row[k]:.4f}")
