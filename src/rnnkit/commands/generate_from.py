"""``rnnkit train generate-from`` and ``rnnkit sample``: one-to-many generation from a condition.

The default task generates a surname given its language (the Faker lists read backwards).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ..datasets import LabelledTexts, Vocabulary, names_by_language, read_classification
from ..errors import RnnkitError
from ..models.conditional import ConditionalConfig, ConditionalGenerator
from ..training.checkpoint import save_json
from ._common import (
    Batches,
    ClipOption,
    ConfigOption,
    DeviceOption,
    EarlyStoppingOption,
    EngineOption,
    JsonOption,
    LossTask,
    LrOption,
    MaxStepsOption,
    PrecisionOption,
    ProgressOption,
    ResumeOption,
    ScheduleOption,
    SeedOption,
    TuneOption,
    command_options,
    fit,
    load_best,
    pad,
    pick_level,
    read_run,
    split_indices,
    start_run,
    train_config,
    write_run_config,
)

__all__ = ["train_generate_from", "sample", "evaluate_generator"]


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    cond, seqs = zip(*batch)
    tokens, _ = pad(seqs)
    return torch.tensor(cond, dtype=torch.long), tokens


def _loss(model: ConditionalGenerator, batch):
    cond, tokens = batch
    return model.loss(cond, tokens), int((tokens[:, 1:] != 0).sum())


def _items(data: LabelledTexts, vocab: Vocabulary, index: dict[str, int], source: str) -> list:
    unseen = sorted(set(data.labels) - set(index))
    if unseen:
        raise RnnkitError(f"{source}: condition {unseen[0]!r} never seen in training")
    return [(index[c], vocab.encode(t, bos=True, eos=True)) for t, c in zip(data.texts, data.labels)]


@torch.no_grad()
def _loss_on(model: ConditionalGenerator, items: list) -> dict[str, float]:
    import math

    model.eval()
    total = n = 0.0
    for cond, tokens in Batches(items, 256, _collate, shuffle=False):
        count = int((tokens[:, 1:] != 0).sum())
        total += float(model.loss(cond, tokens)) * count
        n += count
    return {"examples": len(items), "loss": total / n, "perplexity": math.exp(min(total / n, 700))}


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
    if as_json:
        print(json.dumps(result))
        return
    m = result["valid"]
    print(f"valid  loss {m['loss']:.4f}  perplexity {m['perplexity']:.3f}  ({m['examples']} examples)")
    for cond, texts in result["samples"].items():
        print(f"{cond:>12}: {', '.join(texts)}")
    print(f"saved  {result['run_dir']}/ (best.safetensors, metrics.json)  {result['seconds']} s")


def run_generate_from(given: set[str] | None = None, **o: Any) -> dict[str, Any]:
    """The library side of ``rnnkit train generate-from``."""
    o, run_dir, resume = start_run("generate-from", o, train_generate_from, given)
    tc = train_config(o)
    if o["data"] is None:
        full, source = names_by_language(seed=0), "surnames by language (Faker last-name lists)"
    else:
        full, source = (
            read_classification(o["data"], text_col=o["text_col"], label_col=o["label_col"]),
            str(o["data"]),
        )
        if full.kind != "text":
            raise RnnkitError(f"{o['data']}: generate-from needs text examples, got numeric sequences")
    train_idx, valid_idx = split_indices(len(full), (0.1,), o["seed"])
    train = LabelledTexts([full.texts[i] for i in train_idx], [full.labels[i] for i in train_idx])
    valid = LabelledTexts([full.texts[i] for i in valid_idx], [full.labels[i] for i in valid_idx])
    conditions = sorted(set(full.labels))
    index = {c: i for i, c in enumerate(conditions)}
    level = pick_level(o["level"], train.texts)
    vocab = Vocabulary.build(train.texts, level, 1 if level == "char" else 2)
    cfg = ConditionalConfig(
        len(vocab),
        num_conditions=len(conditions),
        embed_size=o["embedding_size"],
        condition_embed_size=o["condition_size"],
        hidden_size=o["hidden_size"],
        num_layers=o["layers"],
        cell=o["cell"],
        condition_every_step=o["every_step"],
        dropout=o["dropout"],
    )
    if not resume:
        write_run_config(
            run_dir,
            "generate-from",
            cfg.to_dict(),
            {"vocab": vocab.to_dict(), "conditions": conditions, "source": source, "train": tc.to_dict()},
            options=o,
        )
    model = ConditionalGenerator(cfg)
    print(
        f"data   {source}: {len(train)} train / {len(valid)} valid, {len(conditions)} conditions; "
        f"run {run_dir}"
    )
    fitted = fit(
        model,
        LossTask(_loss, "token", per_token=True),
        Batches(
            _items(train, vocab, index, "train"), o["batch_size"], _collate, shuffle=True, seed=o["seed"]
        ),
        Batches(_items(valid, vocab, index, "valid"), 256, _collate, shuffle=False),
        tc,
        run_dir,
        resume=resume,
        engine=o.get("engine", "auto"),
    )
    result: dict[str, Any] = {
        "task": "generate-from",
        "run_dir": str(run_dir),
        "seconds": round(fitted.seconds, 1),
        "steps": fitted.steps,
    }
    result["valid"] = _loss_on(fitted.model, _items(valid, vocab, index, "valid"))
    g = torch.Generator().manual_seed(o["seed"])
    samples = {}
    seen = set(train.texts)
    novel = total = 0
    for c in conditions:
        ids = fitted.model.generate(torch.full((5,), index[c]), 30, temperature=0.8, generator=g)
        texts = [vocab.decode(x) for x in ids]
        novel += sum(t not in seen for t in texts)
        total += len(texts)
        samples[c] = texts
    result["samples"], result["novel_fraction"] = samples, novel / total
    save_json(run_dir / "metrics.json", result)
    return result


def load_generator(run_dir: Path) -> tuple[ConditionalGenerator, Vocabulary, list[str]]:
    saved = read_run(run_dir, "generate-from")
    try:
        model = ConditionalGenerator(ConditionalConfig(**saved["model"]))
        vocab, conditions = Vocabulary.from_dict(saved["vocab"]), list(saved["conditions"])
    except (KeyError, TypeError, ValueError) as err:
        raise RnnkitError(f"{run_dir}/config.json: corrupt generate-from config ({err})") from None
    return load_best(run_dir, model), vocab, conditions


def evaluate_generator(
    run_dir: Path, data: Path, text_col: str | None = None, label_col: str | None = None
) -> dict[str, Any]:
    """Per-token loss and perplexity of ``run_dir``'s generator on labelled ``data``."""
    model, vocab, conditions = load_generator(run_dir)
    d = read_classification(data, text_col=text_col, label_col=label_col)
    if d.kind != "text":
        raise RnnkitError(f"{data}: expected text examples")
    return _loss_on(model, _items(d, vocab, {c: i for i, c in enumerate(conditions)}, str(data)))


def sample(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by 'rnnkit train generate-from'")],
    condition: Annotated[str, typer.Option(help="the condition (a label seen in training)")],
    count: Annotated[int, typer.Option(help="how many sequences")] = 5,
    max_len: Annotated[int, typer.Option(help="longest output, in tokens")] = 40,
    temperature: Annotated[float, typer.Option(help="sampling temperature (0: greedy)")] = 0.8,
    top_k: Annotated[int, typer.Option(help="sample among the k most likely tokens (0: off)")] = 0,
    seed: Annotated[int | None, typer.Option(help="seed for reproducible samples")] = None,
) -> None:
    """Generate sequences for one condition, one per line."""
    if count < 1 or max_len < 1:
        raise RnnkitError("--count and --max-len must be positive integers")
    if temperature < 0:
        raise RnnkitError(f"--temperature must be >= 0, got {temperature}")
    model, vocab, conditions = load_generator(run_dir)
    if condition not in conditions:
        raise RnnkitError(
            f"--condition {condition!r} was never seen in training; known: {', '.join(conditions)}"
        )
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    cond = torch.full((count,), conditions.index(condition))
    ids = model.generate(
        cond, max_len, temperature=temperature or 1.0, top_k=top_k, greedy=temperature == 0, generator=g
    )
    for x in ids:
        print(vocab.decode(x))
