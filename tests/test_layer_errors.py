"""Bad input to the layers gets a clear error naming the layer and what was expected."""

from __future__ import annotations

import pytest
import torch

import rnnkit

from .helpers import MODES

I, H = 4, 5


def layer(mode: str, **kw):
    return getattr(rnnkit, mode.upper())(I, H, **kw)


def state(mode: str, shape, dtype=torch.float32):
    if mode == "lstm":
        return (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
    return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("mode", MODES)
def test_wrong_rank(mode):
    with pytest.raises(ValueError, match=rf"{mode.upper()}: expected input of 3 dimensions"):
        layer(mode)(torch.randn(2, 3, 4, I))
    with pytest.raises(ValueError, match="expected input of 3 dimensions"):
        layer(mode)(torch.randn(I))


@pytest.mark.parametrize("mode", MODES)
def test_wrong_feature_size(mode):
    with pytest.raises(ValueError, match=rf"expected input feature size {I}, got 7"):
        layer(mode)(torch.randn(5, 2, 7))


@pytest.mark.parametrize("mode", MODES)
def test_hx_of_wrong_shape(mode):
    m = layer(mode, num_layers=2)
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 3, 5\), got \(1, 3, 5\)"):
        m(torch.randn(6, 3, I), state(mode, (1, 3, H)))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 3, 5\)"):
        m(torch.randn(6, 3, I), state(mode, (2, 3, H + 1)))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 5\)"):  # unbatched
        m(torch.randn(6, I), state(mode, (2, 3, H)))


def test_lstm_hx_must_be_a_pair():
    with pytest.raises(TypeError, match=r"LSTM: expected hx to be a tuple \(h_0, c_0\)"):
        rnnkit.LSTM(I, H)(torch.randn(6, 3, I), torch.zeros(1, 3, H))
    with pytest.raises(ValueError, match=r"expected c_0 of shape \(1, 3, 5\)"):
        rnnkit.LSTM(I, H)(torch.randn(6, 3, I), (torch.zeros(1, 3, H), torch.zeros(1, 2, H)))


@pytest.mark.parametrize("mode", MODES)
def test_lengths_longer_than_sequence(mode):
    with pytest.raises(ValueError, match=r"must not exceed the sequence length T=6, got max 9"):
        layer(mode)(torch.randn(6, 3, I), lengths=[6, 9, 2])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [[6, 0, 2], [6, -1, 2]])
def test_zero_or_negative_lengths(mode, bad):
    with pytest.raises(ValueError, match="lengths must be at least 1"):
        layer(mode)(torch.randn(6, 3, I), lengths=torch.tensor(bad))


@pytest.mark.parametrize("mode", MODES)
def test_lengths_of_wrong_count(mode):
    with pytest.raises(ValueError, match=r"expected one length per sequence, shape \(3,\), got \(2,\)"):
        layer(mode)(torch.randn(6, 3, I), lengths=[6, 2])


def test_lengths_of_wrong_type():
    with pytest.raises(TypeError, match="lengths must be integers"):
        rnnkit.GRU(I, H)(torch.randn(6, 3, I), lengths=torch.tensor([6.0, 2.0, 1.0]))


def test_lengths_on_the_wrong_device():
    if not torch.cuda.is_available():
        # A meta tensor stands in for "some other device" when no accelerator is present.
        bad = torch.empty(3, dtype=torch.int64, device="meta")
    else:  # pragma: no cover - only with a GPU
        bad = torch.tensor([6, 2, 1], device="cuda")
    with pytest.raises(ValueError, match="lengths must be on the CPU or on the input's device"):
        rnnkit.LSTM(I, H)(torch.randn(6, 3, I), lengths=bad)


def test_lengths_with_unbatched_input_or_packed():
    with pytest.raises(ValueError, match="lengths= needs batched"):
        rnnkit.LSTM(I, H)(torch.randn(6, I), lengths=[6])
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(6, 2, I), [6, 3])
    with pytest.raises(ValueError, match="not both"):
        rnnkit.LSTM(I, H)(packed, lengths=[6, 3])


@pytest.mark.parametrize("mode", MODES)
def test_dtype_mismatch(mode):
    with pytest.raises(TypeError, match=r"input dtype torch.float64 does not match the layer's weights"):
        layer(mode)(torch.randn(6, 3, I, dtype=torch.float64))
    with pytest.raises(TypeError, match="h_0 dtype torch.float64 does not match input dtype"):
        layer(mode)(torch.randn(6, 3, I), state(mode, (1, 3, H), torch.float64))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="LSTM: hidden_size must be a positive integer"):
        rnnkit.LSTM(I, 0)
    with pytest.raises(ValueError, match="GRU: dropout must be a number in"):
        rnnkit.GRU(I, H, dropout=1.5)
    with pytest.raises(ValueError, match="RNN: nonlinearity must be 'tanh' or 'relu'"):
        rnnkit.RNN(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="engine must be one of"):
        rnnkit.LSTM(I, H, engine="cudnn")
    m = rnnkit.LSTM(I, H)
    with pytest.raises(ValueError, match="engine must be one of"):
        m.engine = "fast"


def test_not_a_tensor():
    with pytest.raises(TypeError, match="expected input to be a Tensor or PackedSequence, got list"):
        rnnkit.RNN(I, H)([[0.0] * I])
