"""SequenceClassifier: shapes, padding never leaks, pooling matches a per-example reference."""

import pytest
import torch

from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier, pool


def _model(pooling: str, cell: str = "lstm", bidirectional: bool = True, **kw) -> SequenceClassifier:
    torch.manual_seed(0)
    cfg = ClassifierConfig(
        num_classes=5,
        hidden_size=8,
        embed_size=6,
        num_layers=2,
        cell=cell,
        bidirectional=bidirectional,
        pooling=pooling,
        **kw,
    )
    return SequenceClassifier(cfg).eval()


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_shapes_and_padding_never_leaks(pooling, cell):
    model = _model(pooling, cell, vocab_size=20)
    x = torch.randint(1, 20, (4, 7))
    lengths = torch.tensor([7, 3, 5, 1])
    logits = model(x, lengths)
    assert logits.shape == (4, 5)
    # more padding, filled with random tokens rather than pad ids, must change nothing
    padded = torch.cat([x, torch.randint(1, 20, (4, 6))], dim=1)
    for b, n in enumerate(lengths.tolist()):
        padded[b, n:] = torch.randint(1, 20, (padded.shape[1] - n,))
    torch.testing.assert_close(model(padded, lengths), logits)
    # each example alone, unpadded, gives its batched row
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(model(x[b : b + 1, :n], torch.tensor([n])), logits[b : b + 1])


def test_features_input_and_unidirectional():
    model = _model("last", "gru", bidirectional=False, input_size=3)
    x = torch.randn(2, 9, 3)
    lengths = torch.tensor([9, 4])
    out = model(x, lengths)
    assert out.shape == (2, 5)
    torch.testing.assert_close(model(x[1:, :4], torch.tensor([4])), out[1:])


def test_pool_against_loop():
    out = torch.randn(3, 5, 4)
    lengths = torch.tensor([5, 2, 1])
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(pool(out, lengths, "mean")[b], out[b, :n].mean(0))
        torch.testing.assert_close(pool(out, lengths, "max")[b], out[b, :n].max(0).values)


def test_gradients_reach_embedding_only_for_valid_tokens():
    model = _model("mean", vocab_size=20)
    x = torch.tensor([[3, 4, 5, 19]])
    model(x, torch.tensor([3])).sum().backward()
    grad = model.embedding.weight.grad
    assert grad[19].abs().sum() == 0 and grad[3].abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 3}, "exactly one of"),
        ({"num_classes": 3, "vocab_size": 5, "input_size": 2}, "exactly one of"),
        ({"num_classes": 3, "vocab_size": 5, "cell": "tcn"}, "unknown cell type"),
        ({"num_classes": 3, "vocab_size": 5, "pooling": "sum"}, "pooling"),
        ({"num_classes": 0, "vocab_size": 5}, "num_classes"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassifierConfig(**kwargs)
