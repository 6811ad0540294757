"""The native engine (PyTorch's own kernels: cuDNN on CUDA) against the reference engine, and
``auto``'s rule for choosing it on CUDA against the H100 measurements it was read from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.engine import LayerWeights, native, reference, resolve

from .test_fused import MODES, _leaves, _problem, _run_and_grad


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_lengths", [True, False])
@pytest.mark.parametrize("mode, nonlinearity", MODES)
def test_native_equals_the_reference_engine(mode, nonlinearity, with_lengths, bias):
    # unsorted lengths with T among them, odd sizes, float64: outputs, final states, every gradient
    x, state, weights, lengths = _problem(
        mode, 7, 5, 3, 4, dtype=torch.float64, bias=bias, with_lengths=with_lengths
    )
    ours = _run_and_grad(native.run, mode, x, state, weights, lengths, nonlinearity)
    theirs = _run_and_grad(reference.run, mode, x, state, weights, lengths, nonlinearity)
    out, final, grads = ours
    assert out.shape == (7, 5, 4) and len(grads) == len(_leaves(x, state, weights))
    if lengths is not None:  # zero past each sequence's end
        for b, n in enumerate(lengths.tolist()):
            assert not out[n:, b].any()
    for a, b in zip([out, *final, *grads], [theirs[0], *theirs[1], *theirs[2]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode, nonlinearity", MODES)
def test_native_gradcheck(mode, nonlinearity):
    x, state, weights, lengths = _problem(mode, 4, 3, 2, 3, dtype=torch.float64)

    def fn(*leaves):
        xs, *rest = leaves
        k = len(state)
        out, final = native.run(mode, xs, tuple(rest[:k]), type(weights)(*rest[k:]), lengths, nonlinearity)
        return (out, *final)

    assert torch.autograd.gradcheck(fn, tuple(_leaves(x, state, weights)))


def test_native_runs_under_no_grad_and_rejects_what_it_cannot_run():
    x, state, weights, lengths = _problem("lstm", 4, 3, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        out, (h, c) = native.run("lstm", x, state, weights, lengths)
    ref, (h_ref, c_ref) = reference.run("lstm", x, state, weights, lengths)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(h, h_ref.detach())
    with pytest.raises(ValueError, match="mode must be one of"):
        native.run("lstmx", x, state, weights)
    x, state, weights, _ = _problem("rnn", 4, 3, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        native.run("rnn", x, state, weights, nonlinearity="gelu")
    assert not native.supports("lstm", x.float(), weights)  # weights in another dtype


def test_layers_take_engine_native_like_torch_nn():
    torch.manual_seed(0)
    ours = rnnkit.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True, engine="native").double()
    theirs = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 1])
    out, (h, c) = ours(x, lengths=lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_packed, (h_ref, c_ref) = theirs(packed)
    ref, _ = torch.nn.utils.rnn.pad_packed_sequence(ref_packed, batch_first=True, total_length=6)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)


GPU_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu.json"


def test_autos_rule_on_cuda_matches_the_h100_measurements():
    # native.preferred says cuDNN where, and only where, the Triton kernels' default plan was
    # measured slower than cuDNN (every point of benchmarks/results/gpu.json)
    rows = json.loads(GPU_RESULTS.read_text())["rows"]
    assert len(rows) >= 50
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for row in rows:
        slower = row["ratio_default"] > 1.0
        got = native.preferred(row["mode"], row["B"], row["H"], dtypes[row["dtype"]])
        assert got == slower, row


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_gpu_native_under_autocast_runs_cudnn_in_the_autocast_dtype(mode):
    # torch.nn's own RNNs ran in float16 under bf16 autocast on an H100 (torch 2.11, cuDNN 9.19:
    # autocast sends _cudnn_rnn to fp16); ours runs the dtype asked for, so the reference is
    # torch.nn on bf16 weights and input
    torch.manual_seed(0)
    ours = getattr(rnnkit, mode.upper())(32, 64, num_layers=2, engine="native").cuda()
    theirs = getattr(torch.nn, mode.upper())(32, 64, num_layers=2).cuda()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(20, 8, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = ours(x)
    ref, _ = theirs.bfloat16()(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    # float32 at H = 64: cuDNN by the measured rule; bf16: the Triton kernels where installed
    weights = LayerWeights(ours.weight_ih_l0, ours.weight_hh_l0, ours.bias_ih_l0, ours.bias_hh_l0)
    assert resolve("auto", mode, x, weights) == "native"
    low = LayerWeights(*(w.bfloat16() for w in weights))
    assert resolve("auto", mode, x.bfloat16(), low) in ("triton", "native")
