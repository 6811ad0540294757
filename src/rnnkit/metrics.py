"""Task metrics: classification, token-level and corpus translation scores, forecast errors.

Inputs are plain Python sequences or NumPy arrays; every function is small enough to check by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "accuracy",
    "confusion_matrix",
    "macro_f1",
    "plot_confusion_matrix",
    "token_accuracy",
    "perplexity",
    "corpus_bleu",
    "mae",
    "mape",
    "seasonal_naive",
]


def accuracy(predicted: Sequence[int], actual: Sequence[int]) -> float:
    """Fraction of equal entries."""
    p, a = np.asarray(predicted), np.asarray(actual)
    if p.shape != a.shape or p.size == 0:
        raise ValueError(
            f"accuracy: expected two equal-length non-empty sequences, got {p.shape} and {a.shape}"
        )
    return float((p == a).mean())


def confusion_matrix(predicted: Sequence[int], actual: Sequence[int], num_classes: int) -> np.ndarray:
    """``(C, C)`` counts; row = actual class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(actual, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return m


def macro_f1(predicted: Sequence[int], actual: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in ``actual`` or ``predicted``.

    A class never seen nor predicted has no F1 and is left out (as scikit-learn does with ``labels``
    restricted to the present ones); a class seen but never predicted correctly scores 0.
    """
    m = confusion_matrix(predicted, actual, num_classes)
    tp = np.diag(m).astype(np.float64)
    support, predicted_n = m.sum(1), m.sum(0)
    present = (support + predicted_n) > 0
    denom = support + predicted_n  # 2TP + FP + FN
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[present].mean())


def plot_confusion_matrix(
    matrix: np.ndarray, labels: Sequence[str], path: str | Path, title: str = ""
) -> None:
    """Save the matrix as a PNG heat map with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    C = len(labels)
    size = max(4.0, 0.5 * C + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(C), labels, rotation=60, ha="right")
    ax.set_yticks(range(C), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if title:
        ax.set_title(title)
    peak = matrix.max() if matrix.size else 0
    for i in range(C):
        for j in range(C):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > peak / 2 else "black",
                fontsize=8,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def token_accuracy(predicted: np.ndarray, target: np.ndarray, pad_id: int) -> float:
    """Fraction of non-padding target tokens predicted exactly (teacher-forced argmax)."""
    valid = target != pad_id
    return float((predicted[valid] == target[valid]).mean()) if valid.any() else float("nan")


def perplexity(mean_nll: float) -> float:
    """``exp`` of a mean negative log-likelihood in nats."""
    return math.exp(min(mean_nll, 700.0))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100) by sacrebleu, one reference per hypothesis."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"corpus_bleu: {len(hypotheses)} hypotheses but {len(references)} references")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score)


def mae(forecast: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute error."""
    return float(
        np.mean(np.abs(np.asarray(forecast, dtype=np.float64) - np.asarray(actual, dtype=np.float64)))
    )


def mape(forecast: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute percentage error as a fraction (0.1 = 10%), as sktime's ``symmetric=False``."""
    f, a = np.asarray(forecast, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if np.any(a == 0):
        raise ValueError("mape: undefined when an actual value is 0; use mae")
    return float(np.mean(np.abs(f - a) / np.abs(a)))


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Repeat the last full season: ``y[N+h] = y[N - season + ((h-1) mod season)]`` for ``h = 1..horizon``."""
    history = np.asarray(history, dtype=np.float64)
    if season < 1 or len(history) < season:
        raise ValueError(
            f"seasonal_naive: need at least one season ({season}) of history, got {len(history)}"
        )
    last = history[-season:]
    return np.array([last[h % season] for h in range(horizon)])
