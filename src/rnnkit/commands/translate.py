"""``rnnkit train translate`` and ``rnnkit translate``: encoder-decoder with attention.

Reports teacher-forced token accuracy and perplexity, corpus BLEU (sacrebleu) of greedy or beam
translations, exact-match rate, and an attention heat map PNG for one chosen example.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ..datasets import Vocabulary, dates, read_pairs, read_parallel
from ..errors import RnnkitError
from ..metrics import corpus_bleu, token_accuracy
from ..models.seq2seq import Seq2Seq, Seq2SeqConfig
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

__all__ = ["train_translate", "translate", "evaluate_translation"]


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src, tgt = zip(*batch)
    s, s_len = pad(src)
    t, _ = pad(tgt)
    return s, s_len, t


def _loss(model: Seq2Seq, batch):
    src, src_len, tgt = batch
    return model.loss(src, src_len, tgt), int((tgt[:, 1:] != 0).sum())


def _read_split(source: Path | None, target: Path | None, pairs: Path | None, what: str):
    if pairs is not None:
        return read_pairs(pairs)
    if source is not None and target is not None:
        return read_parallel(source, target)
    if source is not None or target is not None:
        raise RnnkitError(f"{what}: give both --{what}source and --{what}target, or --{what}pairs")
    return None


def _encode(
    src_vocab: Vocabulary, tgt_vocab: Vocabulary, src: list[str], tgt: list[str], max_len: int | None
):
    items = []
    for s, t in zip(src, tgt):
        a, b = src_vocab.encode(s, eos=True), tgt_vocab.encode(t, bos=True, eos=True)
        if max_len is None or (len(a) <= max_len and len(b) <= max_len + 2):
            items.append((a, b))
    return items


def translate_lines(
    model: Seq2Seq,
    src_vocab: Vocabulary,
    tgt_vocab: Vocabulary,
    lines: list[str],
    beam_size: int = 1,
    max_len: int = 60,
    length_penalty: float = 0.0,
    batch_size: int = 64,
) -> list[str]:
    """Translate ``lines`` (greedy when ``beam_size`` is 1)."""
    if not isinstance(beam_size, int) or beam_size < 1:
        raise RnnkitError(f"--beam-size must be a positive integer, got {beam_size!r}")
    out = []
    for i in range(0, len(lines), batch_size):
        src, src_len = pad([src_vocab.encode(s, eos=True) for s in lines[i : i + batch_size]])
        if beam_size == 1:
            ids, _ = model.greedy(src, src_len, max_len)
        else:
            ids = model.beam_search(src, src_len, beam_size, max_len, length_penalty)
        out += [tgt_vocab.decode(x) for x in ids]
    return out


@torch.no_grad()
def _scores(model, src_vocab, tgt_vocab, src, tgt, beam_size, max_len, length_penalty) -> dict[str, float]:
    model.eval()
    items = _encode(src_vocab, tgt_vocab, src, tgt, None)
    nll = n = correct = 0.0
    free_nll = 0.0
    for batch in Batches(items, 128, _collate, shuffle=False):
        s, s_len, t = batch
        logits, _ = model(s, s_len, t[:, :-1])
        gold = t[:, 1:]
        nll += float(
            torch.nn.functional.cross_entropy(logits.transpose(1, 2), gold, ignore_index=0, reduction="sum")
        )
        free = model.loss(s, s_len, t, feed="greedy")
        free_nll += float(free) * int((gold != 0).sum())
        correct += token_accuracy(logits.argmax(-1).numpy(), gold.numpy(), 0) * int((gold != 0).sum())
        n += int((gold != 0).sum())
    hyps = translate_lines(model, src_vocab, tgt_vocab, src, beam_size, max_len, length_penalty)
    refs = [
        tgt_vocab.decode(tgt_vocab.encode(t)) for t in tgt
    ]  # what the vocabulary can express (<unk> kept)
    return {
        "pairs": len(src),
        "loss": nll / n,
        "perplexity": math.exp(min(nll / n, 700)),
        "free_running_perplexity": math.exp(min(free_nll / n, 700)),
        "token_accuracy": correct / n,
        "bleu": corpus_bleu(hyps, refs, tokenize="char" if tgt_vocab.level == "char" else "13a"),
        "exact_match": sum(h == r for h, r in zip(hyps, refs)) / len(refs),
    }


def _heatmap(model: Seq2Seq, src_vocab: Vocabulary, tgt_vocab: Vocabulary, line: str, path: Path) -> bool:
    if model.config.attention == "none":
        return False
    from ..diagnostics.plots import plot_attention

    src, src_len = pad([src_vocab.encode(line, eos=True)])
    ids, maps = model.greedy(src, src_len, 60)
    weights = maps[0]
    src_tokens = [src_vocab.itos[i] for i in src[0].tolist()]
    tgt_tokens = [tgt_vocab.itos[i] for i in ids[0]] + ["<eos>"]
    plot_attention(weights, src_tokens, tgt_tokens[: weights.shape[0]], path, title=f"attention: {line[:40]}")
    return True


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


def run_translate(given: set[str] | None = None, **o: Any) -> dict[str, Any]:
    """The library side of ``rnnkit train translate`` (flags as keyword arguments)."""
    o, run_dir, resume = start_run("translate", o, train_translate, given)
    if not isinstance(o["beam_size"], int) or o["beam_size"] < 1:
        raise RnnkitError(f"--beam-size must be a positive integer, got {o['beam_size']!r}")
    tc = train_config(o)
    train = _read_split(o["source"], o["target"], o["pairs"], "")
    if train is None:
        train, source = dates(20000, seed=0), "dates in 16 locales and 4 styles -> ISO 8601 (Babel CLDR data)"
    else:
        source = str(o["pairs"] or o["source"])
    if o["limit"]:
        train = (train[0][: o["limit"]], train[1][: o["limit"]])
    valid = _read_split(o["valid_source"], o["valid_target"], o["valid_pairs"], "valid-")
    test = _read_split(o["test_source"], o["test_target"], None, "test-")
    if valid is None:
        parts = split_indices(len(train[0]), (0.05,) if test is not None else (0.05, 0.05), o["seed"])
        pick = lambda idx: ([train[0][i] for i in idx], [train[1][i] for i in idx])  # noqa: E731
        valid = pick(parts[1])
        if test is None:
            test = pick(parts[2])
        train = pick(parts[0])
    level = pick_level(o["level"], train[1])
    mf = 1 if level == "char" else o["min_freq"]
    src_vocab, tgt_vocab = Vocabulary.build(train[0], level, mf), Vocabulary.build(train[1], level, mf)
    cfg = Seq2SeqConfig(
        len(src_vocab),
        len(tgt_vocab),
        o["embedding_size"],
        o["hidden_size"],
        o["layers"],
        o["cell"],
        o["attention"],
        o["input_feeding"],
        o["dropout"],
    )
    items = _encode(src_vocab, tgt_vocab, *train, o["max_length"])
    if not items:
        raise RnnkitError(f"no training pairs within --max-length {o['max_length']}")
    if not resume:
        write_run_config(
            run_dir,
            "translate",
            cfg.to_dict(),
            {
                "src_vocab": src_vocab.to_dict(),
                "tgt_vocab": tgt_vocab.to_dict(),
                "source": source,
                "train": tc.to_dict(),
                "decode": {
                    "beam_size": o["beam_size"],
                    "length_penalty": o["length_penalty"],
                    "max_len": o["max_decode"],
                },
            },
            options=o,
        )
    model = Seq2Seq(cfg)
    print(
        f"data   {source}: {len(items)} train / {len(valid[0])} valid / "
        f"{len(test[0]) if test else 0} test pairs; "
        f"{level} level, vocab {len(src_vocab)} -> {len(tgt_vocab)}"
    )
    print(
        f"model  {cfg.cell.upper()} {cfg.num_layers}x{cfg.hidden_size}, attention {cfg.attention}, "
        f"{model.num_parameters():,} parameters; run {run_dir}"
    )
    fitted = fit(
        model,
        LossTask(_loss, "token", per_token=True),
        Batches(items, o["batch_size"], _collate, shuffle=True, seed=o["seed"]),
        Batches(_encode(src_vocab, tgt_vocab, *valid, None), 128, _collate, shuffle=False),
        tc,
        run_dir,
        resume=resume,
        engine=o.get("engine", "auto"),
    )
    result: dict[str, Any] = {
        "task": "translate",
        "run_dir": str(run_dir),
        "seconds": round(fitted.seconds, 1),
        "steps": fitted.steps,
    }
    for name, split in (("valid", valid), ("test", test)):
        if split is not None:
            result[name] = _scores(
                fitted.model,
                src_vocab,
                tgt_vocab,
                *split,
                o["beam_size"],
                o["max_decode"],
                o["length_penalty"],
            )
    shown = test or valid
    i = min(max(o["heatmap_index"], 0), len(shown[0]) - 1)
    if _heatmap(fitted.model, src_vocab, tgt_vocab, shown[0][i], run_dir / "attention.png"):
        result["heatmap"] = str(run_dir / "attention.png")
    save_json(run_dir / "metrics.json", result)
    return result


def load_translator(run_dir: Path) -> tuple[Seq2Seq, Vocabulary, Vocabulary, dict]:
    saved = read_run(run_dir, "translate")
    try:
        model = Seq2Seq(Seq2SeqConfig(**saved["model"]))
        src_vocab, tgt_vocab = (
            Vocabulary.from_dict(saved["src_vocab"]),
            Vocabulary.from_dict(saved["tgt_vocab"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RnnkitError(f"{run_dir}/config.json: corrupt translation config ({err})") from None
    return load_best(run_dir, model), src_vocab, tgt_vocab, saved


def evaluate_translation(
    run_dir: Path, data: Path, target: Path | None = None, beam_size: int | None = None
) -> dict[str, Any]:
    """Scores on ``data`` (source<TAB>target lines, or a source file with ``target``)."""
    model, sv, tv, saved = load_translator(run_dir)
    src, tgt = read_parallel(data, target) if target is not None else read_pairs(data)
    dec = saved.get("decode", {})
    return _scores(
        model,
        sv,
        tv,
        src,
        tgt,
        beam_size or dec.get("beam_size", 1),
        dec.get("max_len", 60),
        dec.get("length_penalty", 0.0),
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
) -> None:
    """Translate lines from a file or stdin, one output line per input line."""
    if beam_size < 1:
        raise RnnkitError(f"--beam-size must be a positive integer, got {beam_size}")
    if max_len < 1:
        raise RnnkitError(f"--max-len must be a positive integer, got {max_len}")
    model, sv, tv, _ = load_translator(run_dir)
    text = input.read_text(encoding="utf-8") if input else sys.stdin.read()
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        raise RnnkitError("translate: no input lines")
    for line in translate_lines(model, sv, tv, lines, beam_size, max_len, length_penalty):
        print(line)
    if heatmap is not None and not _heatmap(model, sv, tv, lines[0], heatmap):
        raise RnnkitError("--heatmap: this model has no attention (trained with --attention none)")
