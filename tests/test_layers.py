"""rnnkit layers against torch.nn with copied weights, float64: outputs, final states, every gradient."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit

from .helpers import ENGINES, MODES, make_pair, random_lengths, torch_class

B, I, H = 3, 4, 5


def _run(model, x, hx, lengths, *, via_torch_packing: bool):
    """Run ``model``; with lengths, torch.nn goes through pack_padded_sequence."""
    if lengths is None:
        return model(x, hx)
    if via_torch_packing:
        packed = pack_padded_sequence(x, lengths, batch_first=model.batch_first, enforce_sorted=False)
        out, state = model(packed, hx)
        T = x.shape[1] if model.batch_first else x.shape[0]
        out, _ = pad_packed_sequence(out, batch_first=model.batch_first, total_length=T)
        return out, state
    return model(x, hx, lengths=lengths)


def _flat_state(mode, state):
    return list(state) if mode == "lstm" else [state]


def _compare(mode, ours, theirs, x_shape, hx_given, lengths, batch_first, seed=0):
    """Forward both with the same inputs and random upstream grads; compare everything."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*x_shape, generator=g, dtype=torch.float64)
    D = 2 if ours.bidirectional else 1
    n_state = 2 if mode == "lstm" else 1
    hx = None
    if hx_given:
        shape = (D * ours.num_layers, *([x_shape[0 if batch_first else 1]] if x.dim() == 3 else []), H)
        hs = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(n_state)]
        hx = tuple(hs) if mode == "lstm" else hs[0]

    results = []
    for model, via_packing in ((ours, False), (theirs, True)):
        xi = x.clone().requires_grad_()
        hxi = None
        if hx is not None:
            hxi = (
                tuple(h.clone().requires_grad_() for h in hx)
                if mode == "lstm"
                else hx.clone().requires_grad_()
            )
        out, state = _run(model, xi, hxi, lengths, via_torch_packing=via_packing)
        results.append((xi, hxi, out, _flat_state(mode, state), model))

    (x1, hx1, out1, st1, m1), (x2, hx2, out2, st2, m2) = results
    torch.testing.assert_close(out1, out2, rtol=1e-10, atol=1e-10)
    for a, b in zip(st1, st2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

    g_out = torch.randn(out1.shape, generator=g, dtype=torch.float64)
    g_states = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in st1]
    for out, st in ((out1, st1), (out2, st2)):
        loss = (out * g_out).sum() + sum((s * gs).sum() for s, gs in zip(st, g_states))
        loss.backward()

    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-10)
    if hx is not None:
        for a, b in zip(_flat_state(mode, hx1), _flat_state(mode, hx2)):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10)
    p2 = dict(m2.named_parameters())
    for name, p in m1.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        torch.testing.assert_close(p.grad, p2[name].grad, rtol=1e-9, atol=1e-10, msg=name)


GRID = list(
    itertools.product(
        MODES,
        [1, 2, 3],  # num_layers
        [False, True],  # bidirectional
        [False, True],  # batch_first
        [False, True],  # hx given
        [False, True],  # lengths
        [1, 7, 63],  # T
    )
)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode,layers,bidir,batch_first,hx_given,use_lengths,T", GRID)
def test_matches_torch_nn(engine, mode, layers, bidir, batch_first, hx_given, use_lengths, T):
    ours, theirs = make_pair(
        mode, I, H, num_layers=layers, bidirectional=bidir, batch_first=batch_first, engine=engine
    )
    lengths = random_lengths(B, T, seed=T + layers) if use_lengths else None
    x_shape = (B, T, I) if batch_first else (T, B, I)
    _compare(mode, ours, theirs, x_shape, hx_given, lengths, batch_first)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
def test_unbatched_input(engine, mode):
    ours, theirs = make_pair(mode, I, H, num_layers=2, bidirectional=True, engine=engine)
    _compare(mode, ours, theirs, (7, I), True, None, False)
    _compare(mode, ours, theirs, (7, I), False, None, False, seed=1)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequence_in_and_out(engine, mode, enforce_sorted):
    ours, theirs = make_pair(mode, I, H, num_layers=2, bidirectional=True, engine=engine)
    lengths = torch.tensor([7, 5, 5, 2]) if enforce_sorted else torch.tensor([5, 7, 2, 5])
    x = torch.randn(7, 4, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out1, st1 = ours(packed)
    out2, st2 = theirs(packed)
    assert isinstance(out1, torch.nn.utils.rnn.PackedSequence)
    torch.testing.assert_close(out1.data, out2.data)
    assert torch.equal(out1.batch_sizes, out2.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(out1, name), getattr(out2, name)
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(_flat_state(mode, st1), _flat_state(mode, st2)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_initialisation_and_state_dict_both_ways(mode):
    kw = dict(num_layers=2, bidirectional=True, bias=True)
    torch.manual_seed(3)
    ours = getattr(rnnkit, mode.upper())(I, H, **kw)
    torch.manual_seed(3)
    theirs = torch_class(mode)(I, H, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    theirs.reset_parameters()
    ours.load_state_dict(theirs.state_dict())
    fresh = torch_class(mode)(I, H, **kw)
    fresh.load_state_dict(ours.state_dict())
    for (n1, p1), (_, p2) in zip(ours.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p1, p2), n1


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
def test_no_bias_and_relu(engine, mode):
    kw = {"nonlinearity": "relu"} if mode == "rnn" else {}
    ours, theirs = make_pair(mode, I, H, num_layers=2, bias=False, engine=engine, **kw)
    assert not any("bias" in n for n, _ in ours.named_parameters())
    _compare(mode, ours, theirs, (9, B, I), True, random_lengths(B, 9, seed=1), False)


@pytest.mark.parametrize("mode", MODES)
def test_dropout_between_layers_only_in_training(mode):
    torch.manual_seed(0)
    layer = getattr(rnnkit, mode.upper())(I, H, num_layers=2, dropout=0.5).double()
    x = torch.randn(6, B, I, dtype=torch.float64)
    layer.eval()
    a, _ = layer(x)
    b, _ = layer(x)
    assert torch.equal(a, b)
    layer.train()
    c, _ = layer(x)
    assert not torch.allclose(a, c)
    single = getattr(rnnkit, mode.upper())(I, H, num_layers=1, dropout=0.5).double().train()
    assert torch.equal(single(x)[0], single(x)[0])  # no dropout after the last layer


def test_rnn_positional_nonlinearity_like_torch():
    layer = rnnkit.RNN(I, H, 2, "relu")
    assert layer.nonlinearity == "relu" and layer.num_layers == 2
    assert "nonlinearity='relu'" in repr(layer)


def test_float32_agrees_with_torch_nn():
    for mode in MODES:
        ours, theirs = make_pair(mode, 16, 32, num_layers=2, dtype=torch.float32)
        x = torch.randn(50, 4, 16)
        out1, _ = ours(x)
        out2, _ = theirs(x)
        torch.testing.assert_close(out1, out2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_cpu_autocast_keeps_the_cpu_engines_in_float32(engine):
    # CPU autocast (bf16) would cast the engines' matrix products op by op (the fused engine has
    # no bf16 path): the layers run the CPU engines in float32 under it, gradients included
    ours, _ = make_pair("lstm", 6, 8, num_layers=2, dtype=torch.float32)
    ours.engine = engine
    x = torch.randn(5, 3, 6, requires_grad=True)
    plain, _ = ours(x)
    (gx,) = torch.autograd.grad(plain.sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = ours(x)
    assert out.dtype == h.dtype == c.dtype == torch.float32
    torch.testing.assert_close(out, plain)
    (gx_auto,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(gx_auto, gx)


def test_module_is_torch_module_and_cells_are_drop_ins():
    for ours, theirs in (
        (rnnkit.RNNCell, nn.RNNCell),
        (rnnkit.LSTMCell, nn.LSTMCell),
        (rnnkit.GRUCell, nn.GRUCell),
    ):
        torch.manual_seed(0)
        a = ours(I, H).double()
        torch.manual_seed(0)
        b = theirs(I, H).double()
        x = torch.randn(B, I, dtype=torch.float64)
        h = None
        hb = None
        for _ in range(3):  # several steps, state fed back
            h = a(x, h)
            hb = b(x, hb)
        for u, v in zip(h if isinstance(h, tuple) else (h,), hb if isinstance(hb, tuple) else (hb,)):
            torch.testing.assert_close(u, v)
