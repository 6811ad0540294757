"""The ``rnnkit`` command line: parse flags into config dataclasses and call the library.

Commands: ``rnnkit train lm``, ``rnnkit generate RUN_DIR``, ``rnnkit evaluate RUN_DIR``. New
training tasks add a command to :data:`train_app` (``rnnkit train <task>``); new top-level groups
use ``app.add_typer``. Any :class:`~rnnkit.errors.RnnkitError` becomes one line on stderr and
exit status 1; usage errors exit with status 2.

Option precedence: the dataclass defaults, then ``--config FILE`` (TOML or YAML), then the flags
actually given on the command line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .commands import TASKS as TASK_COMMANDS
from .commands import evaluate_run as evaluate_task_run
from .commands import format_figures as format_task_figures
from .commands import register as register_task_commands
from .commands._common import InferenceDeviceOption, explicit_flags
from .data import LMDataConfig
from .errors import RnnkitError
from .experiments.cli import experiment_app
from .training.config import TrainConfig, read_config_file
from .training.lm import LMRunConfig

__all__ = ["app", "train_app", "main", "given_options"]

app = typer.Typer(
    name="rnnkit",
    help="Recurrent sequence models on PyTorch: train, sample, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a model; one sub-command per task.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(experiment_app, name="experiment")
register_task_commands(app, train_app)  # train classify|translate|generate-from|forecast, predict, ...

D, T, R = LMDataConfig, TrainConfig, LMRunConfig  # the defaults below are the dataclasses' own
DATA, MODEL, OPTIM, RUN, OUT = "Data", "Model", "Optimisation", "Run", "Sample"


def given_options(ctx: typer.Context, skip: tuple[str, ...] = ("config",)) -> dict[str, Any]:
    """The options the user set: ``--config FILE`` values, overridden by flags given explicitly."""
    options: dict[str, Any] = {}
    config = ctx.params.get("config")
    if config is not None:
        options.update(read_config_file(config))
    for name in explicit_flags(ctx, (n for n in ctx.params if n not in skip)):
        value = ctx.params[name]
        options[name] = str(value) if isinstance(value, Path) else value
    return options


@train_app.command("lm")
def train_lm_command(
    ctx: typer.Context,
    text: Annotated[
        Path | None,
        typer.Option(
            help="UTF-8 text file (.gz ok) or folder; default: embedded corpus", rich_help_panel=DATA
        ),
    ] = None,
    valid: Annotated[
        Path | None,
        typer.Option(help="validation text (default: held out from --text)", rich_help_panel=DATA),
    ] = None,
    test: Annotated[
        Path | None, typer.Option(help="test text (default: held out from --text)", rich_help_panel=DATA)
    ] = None,
    level: Annotated[str, typer.Option(help="char or word", rich_help_panel=DATA)] = D.level,
    vocab_size: Annotated[
        int, typer.Option(help="word vocabulary cap incl. <eos>, <unk>", rich_help_panel=DATA)
    ] = D.vocab_size,
    valid_fraction: Annotated[
        float, typer.Option(help="held-out share for validation", rich_help_panel=DATA)
    ] = D.valid_fraction,
    test_fraction: Annotated[
        float, typer.Option(help="held-out share for test", rich_help_panel=DATA)
    ] = D.test_fraction,
    batch_size: Annotated[
        int, typer.Option(help="contiguous streams B (global under DDP)", rich_help_panel=DATA)
    ] = D.batch_size,
    bptt: Annotated[
        int, typer.Option(help="truncated-BPTT window: steps per batch", rich_help_panel=DATA)
    ] = D.bptt,
    cell: Annotated[str, typer.Option(help="lstm, gru or rnn", rich_help_panel=MODEL)] = R.cell,
    layers: Annotated[int, typer.Option(help="stacked recurrent layers", rich_help_panel=MODEL)] = R.layers,
    hidden_size: Annotated[
        int, typer.Option(help="hidden units per layer", rich_help_panel=MODEL)
    ] = R.hidden_size,
    embedding_size: Annotated[
        int | None, typer.Option(help="embedding size (default: hidden size)", rich_help_panel=MODEL)
    ] = None,
    dropout: Annotated[
        float,
        typer.Option(help="dropout on embeddings, between layers, before output", rich_help_panel=MODEL),
    ] = R.dropout,
    tie_weights: Annotated[
        bool, typer.Option(help="share embedding and output weights", rich_help_panel=MODEL)
    ] = R.tie_weights,
    engine: Annotated[
        str,
        typer.Option(
            help="layer engine: auto, fused, reference, triton (CUDA) or native (cuDNN)",
            rich_help_panel=MODEL,
        ),
    ] = R.engine,
    epochs: Annotated[
        int, typer.Option(help="passes over the training text", rich_help_panel=OPTIM)
    ] = T.epochs,
    max_steps: Annotated[
        int | None, typer.Option(help="stop after this many steps in all", rich_help_panel=OPTIM)
    ] = None,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd", rich_help_panel=OPTIM)] = T.optimizer,
    lr: Annotated[float, typer.Option(help="learning rate", rich_help_panel=OPTIM)] = T.lr,
    weight_decay: Annotated[float, typer.Option(help="weight decay", rich_help_panel=OPTIM)] = T.weight_decay,
    momentum: Annotated[float, typer.Option(help="SGD momentum", rich_help_panel=OPTIM)] = T.momentum,
    schedule: Annotated[
        str,
        typer.Option(help="constant, plateau (divide on no improvement) or cosine", rich_help_panel=OPTIM),
    ] = T.schedule,
    lr_factor: Annotated[
        float, typer.Option(help="plateau: divide the rate by this", rich_help_panel=OPTIM)
    ] = T.lr_factor,
    lr_patience: Annotated[
        int, typer.Option(help="plateau: epochs without improvement tolerated", rich_help_panel=OPTIM)
    ] = T.lr_patience,
    warmup_steps: Annotated[
        int, typer.Option(help="linear warm-up steps", rich_help_panel=OPTIM)
    ] = T.warmup_steps,
    clip: Annotated[
        float, typer.Option(help="clip the gradient norm to this (0: off)", rich_help_panel=OPTIM)
    ] = T.clip,
    early_stopping: Annotated[
        int,
        typer.Option(help="stop after this many epochs without improvement (0: off)", rich_help_panel=OPTIM),
    ] = T.early_stopping,
    seed: Annotated[
        int, typer.Option(help="random seed (same seed, same run)", rich_help_panel=RUN)
    ] = T.seed,
    device: Annotated[
        str, typer.Option(help="auto (CUDA if present), cpu or cuda", rich_help_panel=RUN)
    ] = T.device,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA), fp32 or bf16", rich_help_panel=RUN)
    ] = T.precision,
    tune: Annotated[
        bool,
        typer.Option(
            help="GPU: time the Triton kernels' plans and cuDNN on first use, keep the fastest",
            rich_help_panel=RUN,
        ),
    ] = T.tune,
    out: Annotated[
        Path | None, typer.Option(help="run folder (default: runs/lm-<timestamp>)", rich_help_panel=RUN)
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="continue the checkpoint in --out", rich_help_panel=RUN)
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="TOML or YAML file of options; flags override it", rich_help_panel=RUN)
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="checkpoint every N steps (0: epoch ends only)", rich_help_panel=RUN)
    ] = T.checkpoint_every,
    log_every: Annotated[
        int, typer.Option(help="progress-bar refresh every N steps", rich_help_panel=RUN)
    ] = T.log_every,
    progress: Annotated[bool, typer.Option(help="show a progress bar", rich_help_panel=RUN)] = T.progress,
    sample_length: Annotated[
        int, typer.Option(help="tokens to sample at the end", rich_help_panel=OUT)
    ] = R.sample_length,
    sample_prime: Annotated[
        str, typer.Option(help="text the closing sample continues", rich_help_panel=OUT)
    ] = R.sample_prime,
    sample_temperature: Annotated[
        float, typer.Option(help="temperature of the closing sample", rich_help_panel=OUT)
    ] = R.sample_temperature,
) -> None:
    """Train a recurrent language model with truncated BPTT, evaluate it and print a sample.

    With no --text it trains a character-level LSTM on the English Python reference text that ships
    with CPython (no download).
    """
    from .training.lm import resume_config, train_lm

    options = given_options(ctx)
    if options.get("resume"):
        if options.get("out") is None:
            raise RnnkitError("--resume needs --out RUN_DIR, the run folder to continue")
        run_config = resume_config(options["out"], options)
    else:
        run_config = LMRunConfig.from_flat(options)
    result = train_lm(run_config)
    print(result.summary)
    print(f"saved   {result.run_dir}/ (model.safetensors, best.safetensors, steps.csv, loss.png)")
    print(f"time    {result.seconds:.0f} s ({result.fit.steps} steps, stopped by {result.fit.stopped})")
    print(f"sample  (temperature {run_config.sample_temperature}):")
    print(result.sample)


@app.command("generate")
def generate_command(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by 'rnnkit train lm'")],
    prime: Annotated[str, typer.Option(help="text to continue (default: start of a line)")] = "",
    length: Annotated[int, typer.Option(help="tokens to generate")] = 300,
    temperature: Annotated[float, typer.Option(help="sampling temperature (0: greedy)")] = 0.8,
    top_k: Annotated[int, typer.Option(help="sample among the k most likely tokens (0: off)")] = 0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass (1: off)")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="seed for reproducible samples")] = None,
    device: InferenceDeviceOption = "cpu",
) -> None:
    """Sample text from a trained language model, printing each token as it comes."""
    from .generate import SamplingConfig, generate
    from .training.lm import load_lm

    sampling = SamplingConfig(length, temperature, top_k, top_p, seed)
    model, vocab, _ = load_lm(run_dir, device)
    pieces = generate(model, vocab, prime, sampling)  # checks the prime before printing anything
    sys.stdout.write(prime)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command("evaluate")
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by 'rnnkit train'")],
    text: Annotated[Path | None, typer.Option(help="text to score (language models)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
    device: InferenceDeviceOption = "cpu",
    data: Annotated[Path | None, typer.Option(help="labelled data to score (other tasks)")] = None,
) -> None:
    """Score a trained model on new data; the figures are the last line printed."""
    from .training.checkpoint import CONFIG_FILE, load_json

    task = load_json(Path(run_dir) / CONFIG_FILE).get("task")
    if task in TASK_COMMANDS:
        figures = evaluate_task_run(task, run_dir, data, device)
        print(json.dumps(figures) if as_json else format_task_figures(figures))
        return
    if task != "lm":
        raise RnnkitError(f"{run_dir}: 'evaluate' does not know task {task!r} yet")
    if text is None:
        raise RnnkitError("evaluate: a language model needs --text FILE, the text to score")
    from .training.lm import evaluate_lm

    started = time.perf_counter()
    result = evaluate_lm(run_dir, text, device)
    if as_json:
        print(json.dumps(result))
    else:
        print(f"scored {result['tokens']:,} tokens of {text} in {time.perf_counter() - started:.1f} s")
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rnnkit`` console script."""
    try:
        code = app(args=argv, standalone_mode=False)
    except RnnkitError as err:
        print(f"rnnkit: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        # Click's (or typer's vendored click's) exceptions, matched by shape since their classes
        # depend on the typer version: Exit carries a status, usage errors a message too.
        kind = type(err).__name__
        if kind == "Exit":
            sys.exit(getattr(err, "exit_code", 0))
        if kind == "Abort":
            print("rnnkit: interrupted", file=sys.stderr)
            sys.exit(130)
        if hasattr(err, "format_message") and hasattr(err, "exit_code"):
            # One line, not a usage box: scripts grep it and people read it.
            print(f"rnnkit: error: {err.format_message()} (see --help)", file=sys.stderr)
            sys.exit(err.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
