"""Sequence classification (many-to-one): texts (char or word tokens) or numeric series, one
label each. The library side of ``rnnkit train classify``, ``rnnkit predict`` and ``rnnkit evaluate``
on classifier runs: :func:`run_classify` trains and reports accuracy, macro-F1 and a confusion
matrix PNG; :func:`load_classifier`, :func:`predict_proba` and :func:`evaluate_classifier` use a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..datasets import LabelledSeries, LabelledTexts, Vocabulary, names_by_language, read_classification
from ..errors import RnnkitError
from ..metrics import accuracy, confusion_matrix, macro_f1, plot_confusion_matrix
from ..models.classifier import ClassifierConfig, SequenceClassifier
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

__all__ = [
    "Encoder",
    "predict_proba",
    "read_labelled",
    "run_classify",
    "load_classifier",
    "evaluate_classifier",
]


class Encoder:
    """Turns examples into model inputs: token ids (texts) or float arrays (series), and labels to ids."""

    def __init__(self, kind: str, labels: list[str], vocab: Vocabulary | None, input_size: int | None):
        self.kind, self.labels, self.vocab, self.input_size = kind, labels, vocab, input_size
        self.index = {label: i for i, label in enumerate(labels)}

    @classmethod
    def fit(cls, data: LabelledTexts | LabelledSeries, level: str) -> Encoder:
        labels = sorted(set(data.labels))
        if len(labels) < 2:
            raise RnnkitError(f"classification needs at least 2 classes, found {len(labels)}: {labels}")
        if data.kind == "text":
            return cls(
                "text",
                labels,
                Vocabulary.build(data.texts, level, min_freq=1 if level == "char" else 2),
                None,
            )
        sizes = {s.shape[1] for s in data.series}
        if len(sizes) != 1:
            raise RnnkitError(f"the series have different numbers of dimensions: {sorted(sizes)}")
        return cls("series", labels, None, sizes.pop())

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "labels": self.labels,
            "vocab": self.vocab and self.vocab.to_dict(),
            "input_size": self.input_size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Encoder:
        return cls(d["kind"], d["labels"], d["vocab"] and Vocabulary.from_dict(d["vocab"]), d["input_size"])

    def inputs(self, data: LabelledTexts | LabelledSeries | list, source: str) -> list:
        examples = data if isinstance(data, list) else (data.texts if data.kind == "text" else data.series)
        if self.kind == "text":
            if examples and not isinstance(examples[0], str):
                raise RnnkitError(f"{source}: numeric sequences, but this model classifies text")
            return [self.vocab.encode(t) or [self.vocab.unk_id] for t in examples]
        if examples and isinstance(examples[0], str):
            raise RnnkitError(f"{source}: text, but this model classifies numeric sequences")
        for s in examples:
            if s.shape[1] != self.input_size:
                raise RnnkitError(
                    f"{source}: series of {s.shape[1]} dimensions, the model expects {self.input_size}"
                )
        return examples

    def targets(self, labels: list[str], source: str) -> list[int]:
        unseen = sorted(set(labels) - set(self.index))
        if unseen:
            raise RnnkitError(
                f"{source}: label {unseen[0]!r} never seen in training (known: {', '.join(self.labels[:20])})"
            )
        return [self.index[label] for label in labels]

    def collate(self, batch: list) -> tuple[Tensor, Tensor, Tensor]:
        """Padded inputs ``(B, T)`` ids or ``(B, T, I)`` values, lengths ``(B,)``, label ids ``(B,)``."""
        xs, ys = zip(*batch) if batch and isinstance(batch[0], tuple) else (batch, [0] * len(batch))
        if self.kind == "text":
            x, lengths = pad(xs)
        else:
            lengths = torch.tensor([len(s) for s in xs], dtype=torch.long)
            x = torch.zeros(len(xs), int(lengths.max()), self.input_size)
            for i, s in enumerate(xs):
                x[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
        return x, lengths, torch.tensor(ys, dtype=torch.long)


def _loss(model, batch):
    x, lengths, y = batch
    return F.cross_entropy(model(x, lengths), y), len(y)


@torch.no_grad()
def predict_proba(
    model: SequenceClassifier, encoder: Encoder, inputs: list, batch_size: int = 256
) -> np.ndarray:
    """Class probabilities ``(N, C)``."""
    model.eval()
    out = []
    for batch in Batches(inputs, batch_size, encoder.collate, shuffle=False):
        x, lengths, _ = to_model(batch, model)
        out.append(torch.softmax(model(x, lengths).float(), 1).cpu())
    return torch.cat(out).numpy()


def _scores(model, encoder, inputs, targets, run_dir: Path | None, name: str) -> dict[str, float]:
    probs = predict_proba(model, encoder, inputs)
    pred = probs.argmax(1).tolist()
    C = len(encoder.labels)
    figures = {
        "examples": len(targets),
        "accuracy": accuracy(pred, targets),
        "macro_f1": macro_f1(pred, targets, C),
    }
    if run_dir is not None:
        plot_confusion_matrix(
            confusion_matrix(pred, targets, C), encoder.labels, run_dir / f"confusion_{name}.png", name
        )
    return figures


def read_labelled(path: Path, text_col, label_col):
    return read_classification(path, text_col=text_col, label_col=label_col)


def run_classify(given: set[str] | None = None, **o: Any) -> dict[str, Any]:
    """The library side of ``rnnkit train classify`` (flags as keyword arguments)."""
    o, run_dir, resume = start_run("classify", o, given)
    tc = train_config(o)
    if o["data"] is None:
        full, source = names_by_language(seed=0), "surnames -> language (Faker last-name lists)"
    else:
        full, source = read_labelled(o["data"], o["text_col"], o["label_col"]), str(o["data"])
    if o["valid"] is not None:
        train_data, valid_data = full, read_labelled(o["valid"], o["text_col"], o["label_col"])
        test_data = read_labelled(o["test"], o["text_col"], o["label_col"]) if o["test"] else None
    else:
        fractions = (0.1, 0.1) if o["test"] is None else (0.1,)
        parts = split_indices(len(full), fractions, o["seed"])
        train_data, valid_data = _subset(full, parts[0]), _subset(full, parts[1])
        test_data = (
            _subset(full, parts[2])
            if o["test"] is None
            else read_labelled(o["test"], o["text_col"], o["label_col"])
        )
    level = pick_level(o["level"], train_data.texts) if train_data.kind == "text" else "char"
    encoder = Encoder.fit(train_data, level)
    model_cfg = ClassifierConfig(
        num_classes=len(encoder.labels),
        vocab_size=len(encoder.vocab) if encoder.vocab else None,
        input_size=encoder.input_size,
        embed_size=o["embedding_size"],
        hidden_size=o["hidden_size"],
        num_layers=o["layers"],
        cell=o["cell"],
        bidirectional=o["bidirectional"],
        pooling=o["pooling"],
        dropout=o["dropout"],
    )
    splits = {}
    for name, d in (("train", train_data), ("valid", valid_data), ("test", test_data)):
        if d is not None:
            splits[name] = (encoder.inputs(d, name), encoder.targets(d.labels, f"{name} data"))
    if not resume:
        write_run_config(
            run_dir,
            "classify",
            model_cfg.to_dict(),
            {"encoder": encoder.to_dict(), "source": source, "level": level, "train": tc.to_dict()},
            options=o,
        )
    model = SequenceClassifier(model_cfg)
    pairs = lambda s: list(zip(*splits[s]))  # noqa: E731
    say(
        f"data   {source}: {len(splits['train'][0])} train / {len(splits['valid'][0])} valid"
        + (f" / {len(splits['test'][0])} test" if "test" in splits else "")
        + f", {len(encoder.labels)} classes"
    )
    say(
        f"model  {model_cfg.cell.upper()} {'bi' if model_cfg.bidirectional else ''}"
        f"{model_cfg.num_layers}x{model_cfg.hidden_size}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters; run {run_dir}"
    )
    fitted = fit(
        model,
        LossTask(_loss, "example", per_token=False),
        Batches(pairs("train"), o["batch_size"], encoder.collate, shuffle=True, seed=o["seed"]),
        Batches(pairs("valid"), 256, encoder.collate, shuffle=False),
        tc,
        run_dir,
        resume=resume,
        engine=o.get("engine", "auto"),
    )
    if not fitted.is_main:  # under torchrun rank 0 alone scores and writes the figures
        return {}
    result: dict[str, Any] = {
        "task": "classify",
        "run_dir": str(run_dir),
        "seconds": round(fitted.seconds, 1),
        "steps": fitted.steps,
    }
    for name in ("valid", "test"):
        if name in splits:
            result[name] = _scores(fitted.model, encoder, *splits[name], run_dir, name)
    from ..training.checkpoint import save_json

    save_json(run_dir / "metrics.json", result)
    return result


def _subset(data: LabelledTexts | LabelledSeries, idx: list[int]):
    if data.kind == "text":
        return LabelledTexts([data.texts[i] for i in idx], [data.labels[i] for i in idx])
    return LabelledSeries([data.series[i] for i in idx], [data.labels[i] for i in idx])


def load_classifier(run_dir: Path, device: str = "cpu") -> tuple[SequenceClassifier, Encoder]:
    """The classifier of ``run_dir`` (best weights) on ``device``, and its input encoder."""
    saved = read_run(run_dir, "classify")
    try:
        model = SequenceClassifier(ClassifierConfig(**saved["model"]))
        encoder = Encoder.from_dict(saved["encoder"])
    except (KeyError, TypeError, ValueError) as err:
        raise RnnkitError(f"{run_dir}/config.json: corrupt classifier config ({err})") from None
    return load_best(run_dir, model, device), encoder


def evaluate_classifier(
    run_dir: Path,
    data: Path,
    text_col: str | None = None,
    label_col: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Accuracy and macro-F1 of ``run_dir``'s classifier on labelled ``data``, run on ``device``."""
    model, encoder = load_classifier(run_dir, device)
    d = read_labelled(data, text_col, label_col)
    return _scores(
        model, encoder, encoder.inputs(d, str(data)), encoder.targets(d.labels, str(data)), None, "data"
    )
