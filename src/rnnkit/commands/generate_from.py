"""``rnnkit train generate-from``, ``rnnkit sample``: the command line of
:mod:`rnnkit.training.generate_from`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from ..errors import RnnkitError
from ..training.generate_from import load_generator, run_generate_from
from ..training.runs import to_model
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

__all__ = ["sample", "train_generate_from"]


def train_generate_from(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            help="condition + text in any classify format (label = condition); default: surnames by language"
        ),
    ] = None,
    text_col: Annotated[str | None, typer.Option(help="CSV/TSV text column")] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV/TSV condition column")] = None,
    level: Annotated[str, typer.Option(help="tokens: auto, char or word")] = "auto",
    cell: Annotated[str, typer.Option(help="gru, lstm or rnn")] = "gru",
    layers: Annotated[int, typer.Option(help="stacked layers")] = 1,
    hidden_size: Annotated[int, typer.Option(help="hidden units")] = 128,
    embedding_size: Annotated[int, typer.Option(help="token embedding size")] = 32,
    condition_size: Annotated[int, typer.Option(help="condition embedding size")] = 32,
    every_step: Annotated[bool, typer.Option(help="also feed the condition at every step")] = True,
    dropout: Annotated[float, typer.Option(help="dropout")] = 0.0,
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
    out: Annotated[
        Path | None, typer.Option(help="run folder (default: runs/generate-from-<timestamp>)")
    ] = None,
    resume: ResumeOption = False,
    config: ConfigOption = None,
    progress: ProgressOption = True,
    as_json: JsonOption = False,
) -> None:
    """Train a generator of sequences conditioned on a label; prints samples per condition."""
    opts, given = command_options(ctx, train_generate_from, dict(locals()))
    result = run_generate_from(given=given, **opts)
    if not result:  # another rank's process under torchrun: rank 0 prints
        return
    if as_json:
        print(json.dumps(result))
        return
    m = result["valid"]
    print(f"valid  loss {m['loss']:.4f}  perplexity {m['perplexity']:.3f}  ({m['examples']} examples)")
    for cond, texts in result["samples"].items():
        print(f"{cond:>12}: {', '.join(texts)}")
    print(f"saved  {result['run_dir']}/ (best.safetensors, metrics.json)  {result['seconds']} s")


def sample(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by 'rnnkit train generate-from'")],
    condition: Annotated[str, typer.Option(help="the condition (a label seen in training)")],
    count: Annotated[int, typer.Option(help="how many sequences")] = 5,
    max_len: Annotated[int, typer.Option(help="longest output, in tokens")] = 40,
    temperature: Annotated[float, typer.Option(help="sampling temperature (0: greedy)")] = 0.8,
    top_k: Annotated[int, typer.Option(help="sample among the k most likely tokens (0: off)")] = 0,
    seed: Annotated[int | None, typer.Option(help="seed for reproducible samples")] = None,
    device: InferenceDeviceOption = "cpu",
) -> None:
    """Generate sequences for one condition, one per line."""
    if count < 1 or max_len < 1:
        raise RnnkitError("--count and --max-len must be positive integers")
    if temperature < 0:
        raise RnnkitError(f"--temperature must be >= 0, got {temperature}")
    model, vocab, conditions = load_generator(run_dir, device)
    if condition not in conditions:
        raise RnnkitError(
            f"--condition {condition!r} was never seen in training; known: {', '.join(conditions)}"
        )
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    cond = to_model(torch.full((count,), conditions.index(condition)), model)
    ids = model.generate(
        cond, max_len, temperature=temperature or 1.0, top_k=top_k, greedy=temperature == 0, generator=g
    )
    for x in ids:
        print(vocab.decode(x))
