"""The fused engine against the reference engine and against finite differences.

Every internal backend of the fused engine is forced explicitly: ``numba`` (compiled loop with
torch's BLAS), ``numba_scipy`` (the same kernels with ``np.dot``), ``torch`` (per-step tensor
ops). Sizes are tiny: this checks the math, the benchmark checks the speed.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from rnnkit.engine import LayerWeights, _team, fused, reference, resolve

MODES = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
BACKENDS = fused.BACKENDS
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _problem(mode, T, B, I, H, *, dtype, bias=True, with_lengths=True, seed=0, scale=0.5):
    """Random ``x``, initial state, weights (all requiring grad) and lengths; lengths include T."""
    g = torch.Generator().manual_seed(seed)
    G = GATES[mode] * H

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    x = rand(T, B, I)
    state = tuple(rand(B, H) for _ in range(2 if mode == "lstm" else 1))
    weights = LayerWeights(
        rand(G, I, scale=scale),
        rand(G, H, scale=scale),
        rand(G, scale=scale) if bias else None,
        rand(G, scale=scale) if bias else None,
    )
    lengths = None
    if with_lengths:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
    return x, state, weights, lengths


def _leaves(x, state, weights):
    return [x, *state, *(w for w in weights if w is not None)]


def _run_and_grad(run, mode, x, state, weights, lengths, nonlinearity, seed=1):
    """Outputs, final state and the gradients of every leaf for random upstream gradients."""
    out, final = run(mode, x, state, weights, lengths, nonlinearity)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for s in final:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    grads = torch.autograd.grad(loss, _leaves(x, state, weights))
    return out, final, grads


def _forced(backend):
    def run(mode, x, state, weights, lengths, nonlinearity):
        return fused.run(mode, x, state, weights, lengths, nonlinearity, backend=backend)

    return run


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mode,nonlinearity,T,bias,with_lengths",
    [
        (m, n, T, bias, wl)
        for (m, n), T, (bias, wl) in itertools.product(MODES, [1, 7, 63], [(True, True), (False, False)])
    ]
    + [
        (m, n, 7, bias, wl) for (m, n), (bias, wl) in itertools.product(MODES, [(True, False), (False, True)])
    ],
)
def test_fused_equals_reference_float64(backend, mode, nonlinearity, T, bias, with_lengths):
    problem = _problem(mode, T, 3, 4, 5, dtype=torch.float64, bias=bias, with_lengths=with_lengths)
    out1, st1, g1 = _run_and_grad(_forced(backend), mode, *problem, nonlinearity)
    out2, st2, g2 = _run_and_grad(reference.run, mode, *problem, nonlinearity)
    torch.testing.assert_close(out1, out2, rtol=1e-12, atol=1e-12)
    for a, b in zip(st1, st2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    names = ["x", *(f"state{i}" for i in range(len(st1))), "w_ih", "w_hh", "b_ih", "b_hh"]
    for name, a, b in zip(names, g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,nonlinearity", MODES)
def test_gradcheck(backend, mode, nonlinearity):
    x, state, weights, lengths = _problem(mode, 5, 3, 2, 3, dtype=torch.float64)
    n_state = len(state)

    def f(x, *rest):
        st, w = rest[:n_state], LayerWeights(*rest[n_state:])
        out, final = fused.run(mode, x, st, w, lengths, nonlinearity, backend=backend)
        return (out, *final)

    inputs = (x, *state, *weights)
    # relu has a kink at 0; random pre-activations stay far enough from it at this eps.
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,nonlinearity", MODES)
def test_float32_agrees_with_reference_within_tolerance(backend, mode, nonlinearity):
    """float32 with torch-like initialisation (U(-1/sqrt(H), 1/sqrt(H)) has std 0.14 at H=16).

    The compiled tanh is a rational approximation (abs error < 4e-7, float32 round-off) and the
    weight gradients are summed in a different order, so agreement is to float32 precision
    relative to each tensor's scale: 2e-5 for outputs and states, 1e-4 for gradients.
    """
    problem = _problem(mode, 40, 4, 8, 16, dtype=torch.float32, scale=0.15)
    out1, st1, g1 = _run_and_grad(_forced(backend), mode, *problem, nonlinearity)
    out2, st2, g2 = _run_and_grad(reference.run, mode, *problem, nonlinearity)
    for a, b, tol in [(out1, out2, 2e-5), *((a, b, 2e-5) for a, b in zip(st1, st2, strict=True))] + [
        (a, b, 1e-4) for a, b in zip(g1, g2, strict=True)
    ]:
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.detach().abs().max()))


def test_outputs_past_each_end_are_zero_and_state_is_frozen():
    x, state, weights, _ = _problem("lstm", 6, 2, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([6, 2])
    out, (h, c) = fused.run("lstm", x, state, weights, lengths)
    assert torch.all(out[2:, 1] == 0) and torch.all(out[:2, 1] != 0)
    short = tuple(s[1:] for s in state)
    _, (h_short, c_short) = fused.run("lstm", x[:2, 1:], short, weights)
    torch.testing.assert_close(h[1:], h_short)
    torch.testing.assert_close(c[1:], c_short)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_nan_propagates_like_torch(backend):
    x, state, weights, _ = _problem("gru", 3, 2, 3, 4, dtype=torch.float32)
    x = x.detach().clone()
    x[1, 0, 0] = float("nan")
    out, _ = fused.run("gru", x, state, weights, backend=backend)
    assert torch.isnan(out[1:, 0]).all() and not torch.isnan(out[:, 1]).any()


def test_does_not_modify_inputs_or_upstream_gradients():
    x, state, weights, lengths = _problem("lstm", 5, 3, 2, 3, dtype=torch.float64)
    before = [t.detach().clone() for t in _leaves(x, state, weights)]
    out, (h, c) = fused.run("lstm", x, state, weights, lengths)
    upstream = [torch.randn_like(t) for t in (out, h, c)]
    kept = [u.clone() for u in upstream]
    torch.autograd.backward([out, h, c], upstream)
    for a, b in zip(before, _leaves(x, state, weights)):
        assert torch.equal(a, b.detach())
    for a, b in zip(kept, upstream):
        assert torch.equal(a, b)


def test_supports_and_auto_policy():
    x, _, weights, _ = _problem("gru", 2, 1, 3, 4, dtype=torch.float32)
    assert fused.supports("gru", x, weights)
    assert resolve("auto", "gru", x, weights) == "fused"
    assert resolve("reference", "gru", x, weights) == "reference"
    half = x.detach().half()
    assert not fused.supports("gru", half, LayerWeights(*(w.detach().half() for w in weights)))
    assert resolve("auto", "gru", half, weights) == "reference"
    assert fused.default_backend(x) == "numba"


def test_bad_backend_and_mode_are_named():
    x, state, weights, _ = _problem("rnn", 2, 1, 3, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        fused.run("rnn", x, state, weights, backend="cuda-magic")
    with pytest.raises(ValueError, match="mode must be one of"):
        fused.run("lstmx", x, state, weights)


SPLITS = [("lstm", "tanh", "units"), ("lstm", "tanh", "batch"), ("gru", "tanh", "batch")]
SPLITS += [("rnn", "tanh", "batch"), ("rnn", "relu", "batch")]


def _force_split(monkeypatch, how):
    """Make the numba backend split even tiny problems: LSTM hidden units, or the batch."""
    if how == "units":
        monkeypatch.setattr(fused, "_LSTM_SPLIT_UNITS_ABOVE", 0)
        monkeypatch.setattr(fused, "_LSTM_UNITS_FROM_H", 0)
        monkeypatch.setattr(fused, "_LSTM_MIN_UNITS_PER_THREAD", 1)
        monkeypatch.setattr(fused, "_LSTM_UNITS_MIN_STEPS", 1)
        monkeypatch.setattr(fused, "_LSTM_UNITS_MIN_STEPS_BATCHED", 1)
    else:
        monkeypatch.setattr(fused, "_LSTM_SPLIT_UNITS_ABOVE", None)
        monkeypatch.setattr(fused, "_BATCH_SPLIT_FROM_MACS", 0)
        monkeypatch.setattr(fused, "_MIN_ROWS_PER_THREAD", 1)
    teams = []
    run = _team.run

    def recording_run(work, threads):
        def counted(part, parts):
            teams.append(parts)
            work(part, parts)

        run(counted, threads)

    monkeypatch.setattr(_team, "run", recording_run)
    return teams


def _force_transposed(monkeypatch, on: bool) -> list:
    """Make the forward kernels read ``W_hh`` transposed (``transpose_rows``) at any size, or
    never; returns the list the copies made are recorded in."""
    made = []
    kernels = fused._numba_kernels()
    transpose_rows = kernels.transpose_rows

    def recording(w, bounds):
        made.append(list(bounds))
        return transpose_rows(w, bounds)

    monkeypatch.setattr(kernels, "transpose_rows", recording)
    monkeypatch.setattr(fused, "_TRANSPOSED_FROM_ROWS", 0 if on else 10**12)
    return made


@pytest.mark.skipif(not _team.AVAILABLE, reason="torch ships no GNU-compatible OpenMP runtime")
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode,nonlinearity,how", SPLITS)
def test_multithreaded_loops_equal_reference(monkeypatch, mode, nonlinearity, how, dtype, transposed):
    """3 threads on torch's OpenMP team: LSTM hidden units in blocks of 2, 2, 3 (a barrier per
    step), or batch ranges of 1, 2, 2 sequences; odd lengths, every gradient; the forward's
    products from ``W_hh`` as stored or from its per-thread blocks transposed."""
    teams = _force_split(monkeypatch, how)
    made = _force_transposed(monkeypatch, transposed)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        problem = _problem(mode, 9, 5, 4, 7, dtype=dtype, scale=0.3)
        out1, st1, g1 = _run_and_grad(_forced("numba"), mode, *problem, nonlinearity)
    finally:
        torch.set_num_threads(threads)
    assert teams and max(teams) == 3, "the loops did not run on a team of 3 threads"
    if transposed and fused._numba_kernels().HAVE_VENDOR_BLAS:
        assert made == [[(0, 8), (8, 16), (16, 28)]] if how == "units" else len(made) == 1
    else:
        assert not made
    out2, st2, g2 = _run_and_grad(reference.run, mode, *problem, nonlinearity)
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip([out1, *st1, *g1], [out2, *st2, *g2], strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("transposed,vendor", [(False, True), (True, True), (True, False)])
def test_lstm_kernel_one_thread_over_several_blocks_equals_torch_layout(transposed, vendor):
    """OpenMP may grant fewer threads than blocks: one thread then owns every block (with
    ``W_hh`` transposed, one product per block). Against blocks = 1 as stored, vendor BLAS."""
    kernels = fused._numba_kernels()
    T, B, H = 6, 3, 7
    g = torch.Generator().manual_seed(3)
    act = torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64)
    w_hh = torch.randn(4 * H, H, generator=g, dtype=torch.float64) * 0.3
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5])
    results = []
    for blocks, w_t_on, use_vendor in ((1, False, True), (3, transposed, vendor)):
        order = fused._blocked_order(H, 4, blocks)
        a = act.index_select(2, order).contiguous()
        hbuf = torch.stack([h0, torch.zeros_like(h0)])
        c_seq = torch.zeros(T + 1, B, H, dtype=torch.float64)
        c_seq[0] = c0
        tanh_c, out = torch.empty(T, B, H, dtype=torch.float64), torch.empty(T, B, H, dtype=torch.float64)
        bias = torch.randn(4 * H, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        w_b = w_hh.index_select(0, order).contiguous()
        bounds = [(4 * lo, 4 * hi) for lo, hi in fused._unit_blocks(H, blocks)]
        w_t = kernels.transpose_rows(w_b, bounds) if w_t_on else w_b.new_empty(0)
        arrays = [t.numpy() for t in (a, w_b, w_t, bias.index_select(0, order), hbuf, c_seq, tanh_c, out)]
        kernels.lstm_forward(*arrays, lengths.numpy(), 0, B, blocks, 0, 1, use_vendor)
        gates = torch.empty_like(a)
        gates[:, :, order] = a  # back to torch's [i | f | g | o] columns
        results.append((gates, out, c_seq, hbuf[T % 2]))
    for x, y in zip(*results, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("mkl", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_transpose_rows_places_each_block_at_its_offset(monkeypatch, dtype, mkl):
    """Block ``[lo, hi)`` of ``w`` ``(N, K)`` transposed, C-contiguous at offset ``K * lo``;
    MKL's copy where torch exports it, else torch's, both exact."""
    kernels = fused._numba_kernels()
    if not mkl:
        monkeypatch.setattr(kernels, "_OMATCOPY", {})
    elif dtype not in kernels._OMATCOPY:
        pytest.skip("torch exports no MKL omatcopy here")
    w = torch.randn(11, 5, dtype=dtype)
    bounds = [(0, 4), (4, 6), (6, 11)]
    flat = kernels.transpose_rows(w.t().contiguous().t(), bounds)  # a non-contiguous weight too
    assert flat.shape == (55,) and flat.dtype == dtype
    for lo, hi in bounds:
        assert torch.equal(flat[5 * lo : 5 * hi].view(5, hi - lo), w[lo:hi].t())


@pytest.mark.parametrize(
    "T,B,H,blocks",
    [
        (1, 1, 256, 1),  # a generated token: one thread (the split cost 2.0 ms against 0.4)
        (512, 1, 1024, 1),  # one sequence never splits: BLAS threads its products itself
        (16, 2, 512, 1),  # too few steps to pay for the reorder and the team
        (128, 2, 512, 2),
        (64, 32, 256, 1),  # the batch splits instead
        (32, 32, 512, 2),  # from H = 512 the units do, over enough steps
        (1, 32, 512, 1),  # not a decoder's single step
        (8, 4, 16, 1),  # a step too small to split at all
    ],
)
def test_lstm_splits_units_only_where_measured_faster(monkeypatch, T, B, H, blocks):
    """The numba backend's choice of LSTM hidden-unit blocks on a 2-thread team."""
    loops = fused._NumbaLoops(vendor=True)
    monkeypatch.setattr(loops.team, "team_size", lambda: 2)
    assert loops.lstm_blocks(T, B, H) == blocks


@pytest.mark.parametrize(
    "mode,T,B,H,team",
    [
        ("gru", 1, 32, 256, False),  # a decoder's single step: waking the team costs more
        ("lstm", 1, 8, 256, False),
        ("rnn", 1024, 8, 32, False),  # 8 M multiply-adds in all
        ("gru", 64, 16, 128, True),
        ("lstm", 1024, 8, 32, True),  # 34 M
    ],
)
def test_batch_splits_only_calls_with_enough_work(monkeypatch, mode, T, B, H, team):
    """The numba backend runs a call's batch on the thread team only from
    ``_BATCH_SPLIT_FROM_MACS`` multiply-adds of recurrent products (forward and backward)."""
    loops = fused._NumbaLoops(vendor=True)
    monkeypatch.setattr(loops.team, "team_size", lambda: 2)
    ran = []
    monkeypatch.setattr(loops, "_on_team", lambda *args: ran.append("team"))
    monkeypatch.setattr(loops, "_single", lambda *args: ran.append("single"))
    G = GATES[mode] * H
    seq, w = torch.empty(T, B, G), torch.empty(G, H)
    loops._batch_split(None, (), B, *loops._work(seq, w)[1:])
    assert ran == ["team" if team else "single"]


def test_backward_scratch_buffers_are_not_returned():
    """The backward reuses its temporaries across calls; no gradient may alias them."""
    problem = _problem("lstm", 7, 3, 4, 5, dtype=torch.float64)
    _, _, first = _run_and_grad(fused.run, "lstm", *problem, "tanh", seed=1)
    kept = [g.clone() for g in first]
    _run_and_grad(fused.run, "lstm", *problem, "tanh", seed=2)  # same shapes, other upstream
    for a, b in zip(first, kept, strict=True):
        assert torch.equal(a, b)


def test_retain_graph_backward_twice_gives_the_same_gradients():
    """The backward reuses scratch buffers; a second backward must still see the saved tensors intact."""
    x, state, weights, lengths = _problem("lstm", 40, 8, 16, 64, dtype=torch.float32, scale=0.1)
    out, (h, c) = fused.run("lstm", x, state, weights, lengths)
    loss = out.square().sum() + h.sum() + c.sum()
    first = torch.autograd.grad(loss, _leaves(x, state, weights), retain_graph=True)
    for _ in range(2):  # other calls of the same shapes in between want buffers too
        fused.run("lstm", x.detach(), tuple(s.detach() for s in state), weights, lengths)
    second = torch.autograd.grad(loss, _leaves(x, state, weights))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(not _team.AVAILABLE, reason="torch ships no GNU-compatible OpenMP runtime")
@pytest.mark.parametrize("T,B,H", [(64, 16, 128), (128, 2, 256)])  # batch split; hidden-unit split
def test_default_policy_splits_large_lstm_and_matches_torch_nn(monkeypatch, T, B, H):
    """At sizes where ``auto`` uses several threads, float32 results still match torch.nn."""
    import rnnkit

    teams = []
    run = _team.run
    monkeypatch.setattr(_team, "run", lambda work, threads: (teams.append(threads), run(work, threads)))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        ref = torch.nn.LSTM(24, H)
        layer = rnnkit.LSTM(24, H, engine="fused")
        layer.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, 24, requires_grad=True)
        up = torch.randn(T, B, H)
        grads = []
        for m in (layer, ref):
            out, (h, c) = m(x)
            loss = (out * up).sum() + h.sum() + c.sum()
            grads.append((out, *torch.autograd.grad(loss, [x, *m.parameters()])))
    finally:
        torch.set_num_threads(threads)
    assert teams, "the default policy did not use the thread team at this size"
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.detach().abs().max()))


def test_without_an_openmp_runtime_the_loops_run_on_one_thread(monkeypatch):
    """Where torch ships no GNU-compatible OpenMP runtime, nothing is split and results are unchanged."""
    _force_split(monkeypatch, "units")
    monkeypatch.setattr(_team, "_RUNTIME", None)
    assert _team.team_size() == 1
    problem = _problem("lstm", 9, 5, 4, 7, dtype=torch.float64)
    out1, st1, g1 = _run_and_grad(_forced("numba"), "lstm", *problem, "tanh")
    out2, st2, g2 = _run_and_grad(reference.run, "lstm", *problem, "tanh")
    for a, b in zip([out1, *st1, *g1], [out2, *st2, *g2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.skipif(not _team.AVAILABLE, reason="torch ships no GNU-compatible OpenMP runtime")
def test_ctrl_c_waits_until_every_thread_of_the_team_is_done():
    """A KeyboardInterrupt raised mid-region could leave other threads waiting at a barrier
    forever; it is delivered when the region ends instead."""
    import signal
    import time

    finished = []

    def work(part, parts):
        if part == 0:  # the calling (main) thread: a Ctrl-C arrives while the region runs
            signal.raise_signal(signal.SIGINT)
            deadline = time.perf_counter() + 0.2
            while time.perf_counter() < deadline:  # Python bytecodes: where an interrupt would land
                pass
        finished.append(part)

    # Python's Ctrl-C handler, even where the suite was started with SIGINT ignored (a shell's
    # background job), in which case Python installs none and the signal would just vanish
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _team.run(work, 2)
    finally:
        signal.signal(signal.SIGINT, before)
    assert sorted(finished) == [0, 1]
