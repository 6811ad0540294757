"""``rnnkit train translate``, ``rnnkit translate``: the command line of :mod:`rnnkit.training.translate`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import RnnkitError
from ..training.translate import attention_heatmap, load_translator, run_translate, translate_lines
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

__all__ = ["train_translate", "translate"]


def train_translate(
    ctx: typer.Context,
    source: Annotated[
        Path | None,
        typer.Option(
            help="source sentences, one per line (.gz ok); default: dates in 16 languages -> ISO 8601"
        ),
    ] = None,
    target: Annotated[Path | None, typer.Option(help="target sentences, line-aligned with --source")] = None,
    pairs: Annotated[Path | None, typer.Option(help="source<TAB>target lines instead of two files")] = None,
    valid_source: Annotated[
        Path | None, typer.Option(help="validation source (default: 5% held out)")
    ] = None,
    valid_target: Annotated[Path | None, typer.Option(help="validation target")] = None,
    valid_pairs: Annotated[Path | None, typer.Option(help="validation source<TAB>target lines")] = None,
    test_source: Annotated[Path | None, typer.Option(help="test source")] = None,
    test_target: Annotated[Path | None, typer.Option(help="test target")] = None,
    level: Annotated[str, typer.Option(help="tokens: auto, char or word")] = "auto",
    min_freq: Annotated[int, typer.Option(help="word level: keep words seen this often")] = 2,
    max_length: Annotated[
        int | None, typer.Option(help="drop training pairs longer than this many tokens")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="use only the first N training pairs")] = None,
    cell: Annotated[str, typer.Option(help="gru, lstm or rnn")] = "gru",
    layers: Annotated[int, typer.Option(help="stacked layers (encoder and decoder)")] = 1,
    hidden_size: Annotated[int, typer.Option(help="decoder units (H/2 per encoder direction)")] = 128,
    embedding_size: Annotated[int, typer.Option(help="embedding size")] = 64,
    attention: Annotated[
        str, typer.Option(help="additive, dot, general or none (the bottleneck baseline)")
    ] = "additive",
    input_feeding: Annotated[bool, typer.Option(help="feed the last attentional output back in")] = False,
    dropout: Annotated[float, typer.Option(help="dropout")] = 0.0,
    beam_size: Annotated[int, typer.Option(help="beam for the reported BLEU (1: greedy)")] = 1,
    length_penalty: Annotated[float, typer.Option(help="GNMT length-penalty alpha for beam search")] = 0.0,
    max_decode: Annotated[int, typer.Option(help="longest output, in tokens")] = 60,
    heatmap_index: Annotated[int, typer.Option(help="test (else valid) example drawn as attention.png")] = 0,
    batch_size: Annotated[int, typer.Option(help="sentence pairs per batch")] = 64,
    epochs: Annotated[int, typer.Option(help="passes over the training data")] = 5,
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
    out: Annotated[Path | None, typer.Option(help="run folder (default: runs/translate-<timestamp>)")] = None,
    resume: ResumeOption = False,
    config: ConfigOption = None,
    progress: ProgressOption = True,
    as_json: JsonOption = False,
) -> None:
    """Train an encoder-decoder with attention on parallel text; reports accuracy, perplexity, BLEU."""
    opts, given = command_options(ctx, train_translate, dict(locals()))
    result = run_translate(given=given, **opts)
    if not result:  # another rank's process under torchrun: rank 0 prints
        return
    if as_json:
        print(json.dumps(result))
        return
    for name in ("valid", "test"):
        if name in result:
            m = result[name]
            print(
                f"{name:5}  token accuracy {m['token_accuracy']:.4f}  perplexity {m['perplexity']:.3f}  "
                f"BLEU {m['bleu']:.2f}  exact {m['exact_match']:.4f}  ({m['pairs']} pairs)"
            )
    print(
        f"saved  {result['run_dir']}/ (best.safetensors, attention.png, metrics.json)  {result['seconds']} s"
    )


def translate(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by 'rnnkit train translate'")],
    input: Annotated[
        Path | None, typer.Option("--input", help="sentences, one per line (default: stdin)")
    ] = None,
    beam_size: Annotated[int, typer.Option(help="beam size (1: greedy)")] = 1,
    length_penalty: Annotated[float, typer.Option(help="GNMT length-penalty alpha")] = 0.0,
    max_len: Annotated[int, typer.Option(help="longest output, in tokens")] = 60,
    heatmap: Annotated[
        Path | None, typer.Option(help="write the first line's attention heat map PNG here")
    ] = None,
    device: InferenceDeviceOption = "cpu",
) -> None:
    """Translate lines from a file or stdin, one output line per input line."""
    if beam_size < 1:
        raise RnnkitError(f"--beam-size must be a positive integer, got {beam_size}")
    if max_len < 1:
        raise RnnkitError(f"--max-len must be a positive integer, got {max_len}")
    model, sv, tv, _ = load_translator(run_dir, device)
    text = input.read_text(encoding="utf-8") if input else sys.stdin.read()
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        raise RnnkitError("translate: no input lines")
    for line in translate_lines(model, sv, tv, lines, beam_size, max_len, length_penalty):
        print(line)
    if heatmap is not None and not attention_heatmap(model, sv, tv, lines[0], heatmap):
        raise RnnkitError("--heatmap: this model has no attention (trained with --attention none)")
