"""Generation from a condition (one-to-many). The library side of ``rnnkit train generate-from``,
``rnnkit sample`` and ``rnnkit evaluate`` on generator runs. The default task generates a surname
given its language (the Faker lists read backwards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..datasets import LabelledTexts, Vocabulary, names_by_language, read_classification
from ..errors import RnnkitError
from ..models.conditional import ConditionalConfig, ConditionalGenerator
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

__all__ = ["run_generate_from", "load_generator", "evaluate_generator"]


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
    for batch in Batches(items, 256, _collate, shuffle=False):
        cond, tokens = to_model(batch, model)
        count = int((tokens[:, 1:] != 0).sum())
        total += float(model.loss(cond, tokens)) * count
        n += count
    return {"examples": len(items), "loss": total / n, "perplexity": math.exp(min(total / n, 700))}


def run_generate_from(given: set[str] | None = None, **o: Any) -> dict[str, Any]:
    """The library side of ``rnnkit train generate-from``."""
    o, run_dir, resume = start_run("generate-from", o, given)
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
    say(
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
    if not fitted.is_main:  # under torchrun rank 0 alone scores and writes the figures
        return {}
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
        ids = fitted.model.generate(
            to_model(torch.full((5,), index[c]), fitted.model), 30, temperature=0.8, generator=g
        )
        texts = [vocab.decode(x) for x in ids]
        novel += sum(t not in seen for t in texts)
        total += len(texts)
        samples[c] = texts
    result["samples"], result["novel_fraction"] = samples, novel / total
    save_json(run_dir / "metrics.json", result)
    return result


def load_generator(run_dir: Path, device: str = "cpu") -> tuple[ConditionalGenerator, Vocabulary, list[str]]:
    """The generator of ``run_dir`` (best weights) on ``device``, its vocabulary and conditions."""
    saved = read_run(run_dir, "generate-from")
    try:
        model = ConditionalGenerator(ConditionalConfig(**saved["model"]))
        vocab, conditions = Vocabulary.from_dict(saved["vocab"]), list(saved["conditions"])
    except (KeyError, TypeError, ValueError) as err:
        raise RnnkitError(f"{run_dir}/config.json: corrupt generate-from config ({err})") from None
    return load_best(run_dir, model, device), vocab, conditions


def evaluate_generator(
    run_dir: Path,
    data: Path,
    text_col: str | None = None,
    label_col: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Per-token loss and perplexity of ``run_dir``'s generator on labelled ``data``, run on ``device``."""
    model, vocab, conditions = load_generator(run_dir, device)
    d = read_classification(data, text_col=text_col, label_col=label_col)
    if d.kind != "text":
        raise RnnkitError(f"{data}: expected text examples")
    return _loss_on(model, _items(d, vocab, {c: i for i, c in enumerate(conditions)}, str(data)))
