"""Sequence to sequence (many-to-many, unaligned): an encoder-decoder with attention. The library
side of ``rnnkit train translate``, ``rnnkit translate`` and ``rnnkit evaluate`` on translation runs.

:func:`run_translate` reports teacher-forced token accuracy and perplexity, corpus BLEU
(sacrebleu) of greedy or beam translations, exact-match rate, and an attention heat map PNG for
one chosen example; :func:`load_translator`, :func:`translate_lines`, :func:`attention_heatmap`
and :func:`evaluate_translation` use a run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..datasets import Vocabulary, dates, read_pairs, read_parallel
from ..errors import RnnkitError
from ..metrics import corpus_bleu, token_accuracy
from ..models.seq2seq import Seq2Seq, Seq2SeqConfig
from .checkpoint import save_json
from .runs import (
    Batches,
    LossTask,
    fit,
    load_best,
    pad,
    pick_level,
    read_run,
    say,
    split_indices,
    start_run,
    to_model,
    train_config,
    write_run_config,
)

__all__ = ["translate_lines", "attention_heatmap", "run_translate", "load_translator", "evaluate_translation"]


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
    """Translate ``lines`` (greedy when ``beam_size`` is 1) on the model's device."""
    if not isinstance(beam_size, int) or beam_size < 1:
        raise RnnkitError(f"--beam-size must be a positive integer, got {beam_size!r}")
    out = []
    for i in range(0, len(lines), batch_size):
        batch = pad([src_vocab.encode(s, eos=True) for s in lines[i : i + batch_size]])
        src, src_len = to_model(batch, model)
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
        s, s_len, t = to_model(batch, model)
        logits, _ = model(s, s_len, t[:, :-1])
        gold = t[:, 1:]
        nll += float(
            torch.nn.functional.cross_entropy(logits.transpose(1, 2), gold, ignore_index=0, reduction="sum")
        )
        free = model.loss(s, s_len, t, feed="greedy")
        tokens = int((gold != 0).sum())
        free_nll += float(free) * tokens
        correct += token_accuracy(logits.argmax(-1).cpu().numpy(), gold.cpu().numpy(), 0) * tokens
        n += tokens
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


def attention_heatmap(
    model: Seq2Seq, src_vocab: Vocabulary, tgt_vocab: Vocabulary, line: str, path: Path
) -> bool:
    if model.config.attention == "none":
        return False
    from ..diagnostics.plots import plot_attention

    src, src_len = to_model(pad([src_vocab.encode(line, eos=True)]), model)
    ids, maps = model.greedy(src, src_len, 60)
    weights = maps[0].cpu()
    src_tokens = [src_vocab.itos[i] for i in src[0].tolist()]
    tgt_tokens = [tgt_vocab.itos[i] for i in ids[0]] + ["<eos>"]
    plot_attention(weights, src_tokens, tgt_tokens[: weights.shape[0]], path, title=f"attention: {line[:40]}")
    return True


def run_translate(given: set[str] | None = None, **o: Any) -> dict[str, Any]:
    """The library side of ``rnnkit train translate`` (flags as keyword arguments)."""
    o, run_dir, resume = start_run("translate", o, given)
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
    say(
        f"data   {source}: {len(items)} train / {len(valid[0])} valid / "
        f"{len(test[0]) if test else 0} test pairs; "
        f"{level} level, vocab {len(src_vocab)} -> {len(tgt_vocab)}"
    )
    say(
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
    if not fitted.is_main:  # under torchrun rank 0 alone scores and writes the figures
        return {}
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
    if attention_heatmap(fitted.model, src_vocab, tgt_vocab, shown[0][i], run_dir / "attention.png"):
        result["heatmap"] = str(run_dir / "attention.png")
    save_json(run_dir / "metrics.json", result)
    return result


def load_translator(run_dir: Path, device: str = "cpu") -> tuple[Seq2Seq, Vocabulary, Vocabulary, dict]:
    """The translator of ``run_dir`` (best weights) on ``device``, its vocabularies and saved config."""
    saved = read_run(run_dir, "translate")
    try:
        model = Seq2Seq(Seq2SeqConfig(**saved["model"]))
        src_vocab, tgt_vocab = (
            Vocabulary.from_dict(saved["src_vocab"]),
            Vocabulary.from_dict(saved["tgt_vocab"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RnnkitError(f"{run_dir}/config.json: corrupt translation config ({err})") from None
    return load_best(run_dir, model, device), src_vocab, tgt_vocab, saved


def evaluate_translation(
    run_dir: Path,
    data: Path,
    target: Path | None = None,
    beam_size: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Scores on ``data`` (source<TAB>target lines, or a source file with ``target``), run on ``device``."""
    model, sv, tv, saved = load_translator(run_dir, device)
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
