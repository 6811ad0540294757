"""The Triton engine equals the reference engine: outputs, final states and every gradient.

Without CUDA the kernels run in Triton's interpreter on the CPU (``TRITON_INTERPRET=1``, set here
before the kernels are defined; it must stay set while they run, so it stays set for this process).
With CUDA the same checks run compiled, plus larger GPU-only ones. Skipped if triton is missing.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when @triton.jit runs, i.e. at import

pytest.importorskip("triton")

from rnnkit.engine import reference  # noqa: E402
from rnnkit.engine.common import LayerWeights  # noqa: E402

if "rnnkit.engine.triton_kernels" in sys.modules and not CUDA:
    # imported earlier in this process without the interpreter: define the kernels again under it
    importlib.reload(sys.modules["rnnkit.engine.triton_kernels"])
    if "rnnkit.engine.triton_engine" in sys.modules:
        importlib.reload(sys.modules["rnnkit.engine.triton_engine"])
from rnnkit.engine import triton_engine as te  # noqa: E402

if not te.AVAILABLE:  # a Triton older than the kernels were checked with
    pytest.skip(te.MISSING, allow_module_level=True)

DEVICE = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
LENGTHS = [7, 3, 5]  # B = 3, T = 7: one full, two shorter, unsorted


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 kernels follow cudnn.allow_tf32 (on by default, as for torch.nn's cuDNN RNNs); the
    tight fp32 comparisons need full fp32 products."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def _problem(mode, B, T, I, H, dtype, bias=True, seed=0):
    """Random inputs, state and weights (leaf tensors) of one layer direction, in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    G = te.NUM_GATES[mode] * H

    def leaf(*shape, scale=1.0):
        t = (torch.rand(*shape, generator=g) * 2 - 1) * scale
        return t.to(device=DEVICE, dtype=dtype).requires_grad_()

    k = H**-0.5  # PyTorch's init range
    x = leaf(T, B, I)
    state = tuple(leaf(B, H) for _ in range(2 if mode == "lstm" else 1))
    weights = LayerWeights(
        leaf(G, I, scale=2 * k),
        leaf(G, H, scale=2 * k),
        leaf(G, scale=k) if bias else None,
        leaf(G, scale=k) if bias else None,
    )
    return x, state, weights


def _run_and_grad(engine, mode, x, state, weights, lengths, nonlinearity, seed=1, **kw):
    """``[output, *final_state, *grads]`` with random upstream gradients on output and final state."""
    out, fin = engine(mode, x, state, weights, lengths, nonlinearity, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = 0.0
    for t in (out, *fin):
        loss = loss + (t.float() * torch.randn(t.shape, generator=g).to(t.device)).sum()
    leaves = [x, *state, *(w for w in weights if w is not None)]
    return [out, *fin, *torch.autograd.grad(loss, leaves)]


def _as64(x, state, weights):
    """The same values in float64, as new leaves (the yardstick for low precision)."""

    def leaf(t):
        return None if t is None else t.detach().double().requires_grad_()

    return leaf(x), tuple(leaf(s) for s in state), LayerWeights(*(leaf(w) for w in weights))


def _rel_err(a, b):
    """Max abs difference, relative to the larger of 1 and ``b``'s largest magnitude."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1.0)).item()


NAMES = {
    "rnn": ["out", "h_n", "dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh"],
    "gru": ["out", "h_n", "dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh"],
    "lstm": ["out", "h_n", "c_n", "dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh"],
}


def _check(mode, B, T, I, H, dtype, plan, *, lengths=None, nonlinearity="tanh", bias=True):
    x, state, weights = _problem(mode, B, T, I, H, dtype, bias)
    lens = None if lengths is None else torch.tensor(lengths)
    ours = _run_and_grad(te.run, mode, x, state, weights, lens, nonlinearity, plan=plan)
    names = [n for n in NAMES[mode] if bias or not n.startswith("db")]
    if dtype == torch.float32:
        theirs = _run_and_grad(reference.run, mode, x, state, weights, lens, nonlinearity)
        for name, a, b in zip(names, ours, theirs, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert _rel_err(a, b) < 2e-5, f"{name}: {_rel_err(a, b):.2e}"
        return
    # Low precision: against float64, no worse than the reference engine in the same dtype (x3)
    exact = _run_and_grad(reference.run, mode, *_as64(x, state, weights), lens, nonlinearity)
    same = _run_and_grad(reference.run, mode, x, state, weights, lens, nonlinearity)
    for name, a, b, e in zip(names, ours, same, exact, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        ours_err, ref_err = _rel_err(a, e), _rel_err(b, e)
        assert ours_err <= 3 * ref_err + 4e-3, f"{name}: {ours_err:.2e} vs reference {ref_err:.2e}"


def _plan(mode, path, dtype, B=3, H=24):
    if path == "resident":
        return te.plan_for(mode, B, H, dtype, path)
    # H = 24: two hidden blocks (split: two programs per batch tile), the second ragged; one
    # ragged reduction tile
    return te.Plan(path, block_b=16, block_h=16, block_k=32)


# ---------------------------------------------------------------- interpreter (or GPU) checks


@pytest.mark.parametrize("path", te.PATHS)
@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_every_path_matches_reference_float32_with_lengths(mode, path):
    _check(mode, 3, 7, 5, 24, torch.float32, _plan(mode, path, torch.float32), lengths=LENGTHS)


@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_resident_power_of_two_hidden_no_lengths_float32(mode):
    _check(mode, 3, 7, 5, 16, torch.float32, _plan(mode, "resident", torch.float32, H=16))


@pytest.mark.parametrize("path", ["resident", "persistent"])
def test_relu_rnn_without_bias(path):
    plan = _plan("rnn", path, torch.float32)
    _check("rnn", 3, 7, 5, 24, torch.float32, plan, lengths=[2, 7, 1], nonlinearity="relu", bias=False)


def test_gru_without_bias():
    plan = _plan("gru", "resident", torch.float32)
    _check("gru", 3, 7, 5, 24, torch.float32, plan, lengths=[2, 7, 1], bias=False)


@pytest.mark.parametrize("mode, path, H", [("lstm", "resident", 16), ("gru", "split", 24)])
def test_several_batch_tiles(mode, path, H):
    # B = 20 with 16-row tiles: a full tile and a ragged one, each with its own lengths (split:
    # each tile's programs keep their own step counter)
    lengths = [(3 * b) % 5 + 1 for b in range(20)]
    lengths[4] = 5
    _check(mode, 20, 5, 5, H, torch.float32, _plan(mode, path, torch.float32, H=H), lengths=lengths)


@pytest.mark.parametrize("mode, path", [("lstm", "split"), ("gru", "persistent")])
def test_sixty_four_row_batch_tiles(mode, path):
    # the 64-row tiles benchmarks time where B >= 64 (wgmma-sized products): a full tile and a
    # ragged one
    lengths = [(7 * b) % 4 + 1 for b in range(70)]
    plan = te.Plan(path, block_b=64, block_h=16, block_k=16, num_warps=8)
    _check(mode, 70, 4, 3, 24, torch.float32, plan, lengths=lengths)


def test_shared_vectors_are_filled_once_reused_and_grown():
    # lengths past any T and the column sums' ones: shared by calls, so none launches a fill
    cpu = torch.device("cpu")
    first = te._shared_full(5, 7, torch.float32, cpu)  # 7: a value no call asks for
    assert first.shape == (5,) and bool((first == 7).all())
    again = te._shared_full(3, 7, torch.float32, cpu)
    assert again.data_ptr() == first.data_ptr() and again.shape == (3,)
    grown = te._shared_full(1000, 7, torch.float32, cpu)
    assert grown.shape == (1000,) and bool((grown == 7).all()) and grown.data_ptr() != first.data_ptr()
    # the smaller one is kept: a kernel on another stream may still read it
    assert first.data_ptr() in [t.data_ptr() for t in te._SHARED[(7, torch.float32, cpu)]]
    # a size asked for again gets the same view, the grown vector's or not (no work a call)
    assert te._shared_full(5, 7, torch.float32, cpu) is first
    assert te._shared_full(1000, 7, torch.float32, cpu) is grown
    assert te._shared_full(5, 7, torch.bfloat16, cpu).dtype == torch.bfloat16


def test_forced_triton_engine_says_what_it_cannot_run():
    # engine="triton" on a dtype the kernels lack: a clear error, not a wrong engine; auto, on
    # the same call, picks another engine (it asks before it picks)
    from rnnkit.engine import run as engine_run
    from rnnkit.errors import RnnkitError

    x, state, weights = _as64(*_problem("gru", 2, 3, 4, 8, torch.float32))
    with pytest.raises(RnnkitError, match="engine='triton' needs .*float64"):
        engine_run("gru", x, state, weights, engine="triton")
    out, _ = engine_run("gru", x, state, weights, engine="auto")
    assert out.dtype == torch.float64


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_a_call_under_inference_mode_then_training(monkeypatch, mode):
    # evaluation under torch.inference_mode before training: the shared vectors made by the first
    # call (lengths past T, zeros for a missing state gradient, the bias sums' ones) must not be
    # inference tensors, which the training call could not save for its backward
    monkeypatch.setattr(te, "_SHARED", {})
    monkeypatch.setattr(te, "_SHARED_VIEWS", {})
    x, state, ws = _problem(mode, 2, 3, 4, 8, torch.float32)
    with torch.inference_mode():
        te.run(mode, x, state, ws)
        te.run(mode, x, state, ws, torch.tensor([3, 1]))
    assert all(not t.is_inference() for kept in te._SHARED.values() for t in kept)
    out, fin = te.run(mode, x, state, ws)
    torch.autograd.grad([out, *fin], list(ws), [torch.randn_like(out), *map(torch.randn_like, fin)])


@pytest.mark.parametrize("mode, path, B", [("lstm", "split", 20), ("gru", "persistent", 40)])
def test_barrier_paths_launch_whole_tiles_in_groups_that_fit_the_gpu(monkeypatch, mode, path, B):
    # a GPU of 2 multiprocessors: split (two programs per 16-row tile) launches one tile at a
    # time; persistent (one program per tile here) two tiles at a time, the last launch ragged
    monkeypatch.setattr(te, "_sm_count", lambda: 2)
    assert te._launches(3, 1) == [(0, 2), (2, 1)] and te._launches(2, 2) == [(0, 1), (1, 1)]
    plan = te.Plan(path, block_b=16, block_h=16, block_k=16, num_warps=8)
    lengths = [(3 * b) % 5 + 1 for b in range(B)]
    _check(mode, B, 5, 4, 24, torch.float32, plan, lengths=lengths)


@pytest.fixture
def _junk_counters(monkeypatch):
    """Step counters as uninitialised memory can leave them (junk, not zeros), and every launch
    that meets at barriers (``sync``) checked to start on zeroed counters (run on junk, a
    program would take a wrong ticket and index the counters out of bounds: checked, not run)."""
    barrier, shared = te._barrier, te._shared_counters
    synced = []

    class Checked:
        def __init__(self, kernel):
            self.kernel, self.sync = kernel, kernel.arg_names.index("sync")

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                if args[self.sync]:
                    bar = next(a for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.int32)
                    assert not bar.any(), f"a synced launch on counters nobody zeroed: {bar.tolist()}"
                    synced.append(bar.numel())
                self.kernel[grid](*args, **kwargs)

            return launch

    for name in ("fwd_split_kernel", "bwd_split_kernel", "fwd_blocked_kernel", "bwd_blocked_kernel"):
        monkeypatch.setattr(te.K, name, Checked(getattr(te.K, name)))

    def junk_barrier(n, device):
        return barrier(n, device).fill_(12345)

    def junk_shared(forward, backward, device):
        buf, fwd, bwd = shared(forward, backward, device)
        if buf is not None:
            buf.fill_(12345)
        return buf, fwd, bwd

    monkeypatch.setattr(te, "_barrier", junk_barrier)
    monkeypatch.setattr(te, "_shared_counters", junk_shared)
    return synced


@pytest.mark.parametrize("path, B, H", [("split", 3, 16), ("split", 20, 16), ("persistent", 20, 24)])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_step_counters_zeroed_once_for_both_directions(monkeypatch, _junk_counters, mode, path, B, H):
    """The forward zeroes its step counters and its backward's in one fill; a second backward
    through a retained graph, and a forward that wants no backward, zero their own. A lone
    program runs the split path's whole sequence in one launch under the interpreter too (as on a
    GPU: tickets, barriers), so counters left unzeroed give wrong results here. One multiprocessor:
    every batch tile a launch of its own (B = 20: two)."""
    synced = _junk_counters
    monkeypatch.setattr(te, "_sm_count", lambda: 1)
    plan = te.Plan(path, block_b=16, block_h=16, block_k=16, num_warps=8)
    x, state, weights = _problem(mode, B, 5, 4, H, torch.float32)
    leaves = [x, *state, *weights]
    lens = torch.tensor([(3 * b) % 5 + 1 for b in range(B)])
    with torch.no_grad():  # forward only: its own counters, none for a backward
        te.run(mode, x, state, weights, lens, plan=plan)
    out, fin = te.run(mode, x, state, weights, lens, plan=plan)
    ref_out, ref_fin = reference.run(mode, x, state, weights, lens)
    for a, b in zip((out, *fin), (ref_out, *ref_fin), strict=True):
        assert _rel_err(a, b) < 2e-5
    g = torch.Generator().manual_seed(4)
    ups = [torch.randn(t.shape, generator=g) for t in (out, *fin)]
    theirs = torch.autograd.grad([ref_out, *ref_fin], leaves, ups)
    for _ in range(2):  # the second backward (retained graph) zeroes counters of its own
        ours = torch.autograd.grad([out, *fin], leaves, ups, retain_graph=True)
        for a, b in zip(ours, theirs, strict=True):
            assert _rel_err(a, b) < 2e-5
    # three forwards (one recomputed for the second backward) and two backwards, each tile apart
    assert len(synced) == 5 * (B // 16 + 1)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_split_rnn_three_programs_per_tile(nonlinearity):
    # H = 40 over 16-column slices: three programs, the last owning 8 real columns of 16
    plan = te.Plan("split", block_b=16, block_h=16, block_k=16)
    _check("rnn", 3, 6, 4, 40, torch.float32, plan, lengths=[6, 1, 4], nonlinearity=nonlinearity)


@pytest.mark.parametrize(
    "mode, path",
    [
        ("rnn", "resident"),
        ("lstm", "resident"),
        ("gru", "resident"),
        ("lstm", "persistent"),
        ("gru", "stepwise"),
        ("lstm", "split"),
        ("gru", "split"),
        ("lstm", "gemm"),
        ("gru", "gemm"),
    ],
)
def test_bfloat16_matches_reference(mode, path):
    _check(mode, 3, 7, 5, 24, torch.bfloat16, _plan(mode, path, torch.bfloat16), lengths=LENGTHS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", te.PATHS)
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_packed_gate_io_matches_reference(mode, path, dtype):
    # the four gate slots of a step loaded and stored as one tile, on every path
    plan = dataclasses.replace(_plan(mode, path, dtype), packed_io=True)
    _check(mode, 3, 7, 5, 24, dtype, plan, lengths=LENGTHS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "mode, H, k, packed",
    [("rnn", 40, 4, False), ("lstm", 24, 2, False), ("lstm", 40, 4, True), ("gru", 40, 2, False)],
)
def test_k_sliced_split_plans_match_reference(mode, H, k, packed, dtype):
    # Plan.k_slices: each step's recurrent products over H in k slices (3-d products summed);
    # H = 40 pads to 64 (three programs, the last ragged; four slices of 16, the last two
    # holding 8 real rows and padding), H = 24 to 32. Packed gate I/O (LSTM's 16-column default):
    # the sliced forward stores the gates unpacked, the backward loads them packed
    plan = te.Plan("split", 16, 16, 16, num_warps=8, packed_io=packed, k_slices=k)
    _check(mode, 3, 7, 5, H, dtype, plan, lengths=LENGTHS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "mode, H, block_h, packed, k",
    [
        ("rnn", 40, 16, False, 1),
        ("lstm", 40, 32, True, 1),
        ("lstm", 16, 16, False, 1),
        ("gru", 24, 16, False, 1),
        ("lstm", 40, 16, False, 4),
        ("gru", 40, 16, True, 2),
    ],
)
def test_side_by_side_split_plans_match_reference(mode, H, block_h, packed, k, dtype):
    # Plan.side_gates: the forward's gate products as one 2-d product in two halves of the
    # reduction. H = 40 pads to 64 (halves of 32, the second holding 8 real rows and padding;
    # two 32-column programs, the last ragged, or three of 16); H = 16: one 16-deep product, no
    # halves; GRU's absent fourth gate rides along. Packed gate I/O: the forward stores the gates
    # unpacked, the backward loads them packed. k > 1: the backward's products in k slices
    plan = te.Plan("split", 16, block_h, 16, num_warps=8, packed_io=packed, k_slices=k)
    plan = dataclasses.replace(plan, side_gates=True)  # the RNN too: side_by_side offers it no plan
    back = te.backward_plan(plan, mode, 3, H, dtype)
    assert plan.side_gates and not back.side_gates and back.k_slices == k
    _check(mode, 3, 7, 5, H, dtype, plan, lengths=LENGTHS)


def test_side_by_side_plans_and_their_refusals():
    split = te.Plan("split", 16, 32, 16, num_warps=8)
    assert te.side_by_side(split, "gru") == dataclasses.replace(split, side_gates=True)
    assert te.side_by_side(split, "rnn") is None  # one gate: nothing to put side by side
    assert te.side_by_side(te.Plan("resident", 16, 64, 16), "lstm") is None
    assert te.side_by_side(None, "lstm") is None
    w16 = te.side_by_side(te.w16_plan("lstm", 16, 256), "lstm")
    assert (
        w16.half_w and w16.side_gates and not te.backward_plan(w16, "lstm", 16, 256, torch.float32).side_gates
    )
    with pytest.raises(ValueError, match="side_gates needs the split path"):
        te.Plan("resident", side_gates=True)
    plans = te.candidate_plans("lstm", 16, 256, torch.float32)
    assert any(p.side_gates and p.bwd_warps == 4 for p in plans)  # with the narrow backward too
    # a sliced backward's forward side by side; the RNN's sliced, never side by side
    assert all(p.side_gates for p in plans if p.k_slices > 1) and any(p.k_slices > 1 for p in plans)
    rnn = te.candidate_plans("rnn", 16, 256, torch.float32)
    assert not any(p.side_gates for p in rnn) and any(p.k_slices > 1 for p in rnn)
    # the forward takes SIDE in place of NK; the backward (backward_plan) NK alone
    sliced = te.side_by_side(dataclasses.replace(split, k_slices=2), "lstm")
    forward = te._split_options(sliced, 256, {})
    backward = te._split_options(te.backward_plan(sliced, "lstm", 16, 256, torch.float32), 256, {})
    assert forward["SIDE"] and "NK" not in forward and backward["NK"] == 2 and "SIDE" not in backward


def test_plans_are_remembered_per_gpu_and_limit(monkeypatch):
    # plan_for runs every call given no plan: it remembers its plans, but never across what shapes
    # them (the GPU's multiprocessors, the on-chip limits)
    f32 = torch.float32
    first = te.plan_for("lstm", 70, 256, f32)
    assert te.plan_for("lstm", 70, 256, f32) is first
    assert first.path == "split" and te._barrier_launches(first, 5, 256) == [(0, 5)]
    assert te._barrier_launches(first, 5, 256) is te._barrier_launches(first, 5, 256)
    monkeypatch.setattr(te, "_sm_count", lambda: 2)  # 8 slices of 32 columns no longer fit
    small = te.plan_for("lstm", 70, 256, f32)
    assert small.path == "persistent" and small == te._plan_for("lstm", 70, 256, f32, None)
    assert te._barrier_launches(first, 5, 256) == [(t, 1) for t in range(5)]  # a tile a launch
    monkeypatch.setattr(te, "RESIDENT_MAX_BYTES", 1 << 30)  # all of W_hh fits one program
    assert te.plan_for("lstm", 70, 256, f32).path == "resident"


def test_default_split_plans_are_the_measured_ones():
    # refined_split: what run 6 on the H100 measured fastest (benchmarks/results/gpu_notes.md)
    f32, b16 = torch.float32, torch.bfloat16
    plain = te.plan_for("lstm", 16, 256, f32, "split")  # a forced path stays plain
    assert not (plain.side_gates or plain.bwd_warps or plain.k_slices > 1)
    lstm = te.plan_for("lstm", 16, 256, f32)  # 32-column slices: side by side, 4-warp backward
    assert lstm == dataclasses.replace(plain, side_gates=True, bwd_warps=4)
    assert te.plan_for("lstm", 64, 512, b16) == dataclasses.replace(
        te.plan_for("lstm", 64, 512, b16, "split"), side_gates=True, bwd_warps=4
    )
    gru = te.plan_for("gru", 1, 256, f32)  # the GRU: the 4-warp backward alone
    assert gru == dataclasses.replace(te.plan_for("gru", 1, 256, f32, "split"), bwd_warps=4)
    for mode in ("lstm", "gru"):  # 16-column slices: side by side, the backward in k slices
        split = te.plan_for(mode, 64, 512, f32, "split")
        assert split.block_h == 16
        assert te.plan_for(mode, 64, 512, f32) == dataclasses.replace(split, side_gates=True, k_slices=4)
    # the RNN, and batch tiles wider than 16 rows (not measured), keep the plain plan
    assert te.plan_for("rnn", 64, 512, f32) == te.plan_for("rnn", 64, 512, f32, "split")
    wide = te.Plan("split", 64, 32, 16, num_warps=8)
    assert te.refined_split(wide, "lstm", 1024, 256, f32) == wide
    assert te.refined_split(te.Plan("resident", 16, 64, 16), "lstm", 16, 64, f32).path == "resident"
    # a half_w forward's backward: the default's slices, plain (its own k slices and warps apart)
    w16 = te.w16_plan("lstm", 64, 512)
    assert not w16.side_gates and not w16.bwd_warps and w16.k_slices == 1
    assert te.backward_plan(w16, "lstm", 64, 512, f32) == te.plan_for("lstm", 64, 512, f32, "split")


@pytest.mark.parametrize("mode, dtype", [("lstm", torch.float32), ("gru", torch.bfloat16)])
def test_narrow_backward_plans_match_reference(mode, dtype):
    # Plan.bwd_warps: the backward launched on its own warp count (the interpreter runs every
    # count alike; this checks the plan reaches the backward's launch and changes nothing else).
    # H = 40 pads to 64: two 32-column programs, the last ragged; w16's backward is the default's
    plan = te.narrow_backward(te.Plan("split", 16, 32, 16, num_warps=8), mode, 3, 40, dtype)
    assert plan.bwd_warps == 4 and plan.num_warps == 8
    back = te.backward_plan(plan, mode, 3, 40, dtype)
    assert back == dataclasses.replace(plan, num_warps=4)
    _check(mode, 3, 7, 5, 40, dtype, plan, lengths=LENGTHS)


def test_narrow_backward_only_where_its_slices_are_wide_enough():
    f32 = torch.float32
    assert te.narrow_backward(te.Plan("split", 16, 16, 16, num_warps=8), "lstm", 3, 40, f32) is None
    assert te.narrow_backward(te.Plan("split", 16, 32, 16, num_warps=4), "lstm", 3, 40, f32) is None
    assert te.narrow_backward(te.Plan("resident", 16, 64, 16, num_warps=8), "lstm", 3, 40, f32) is None
    w16 = te.w16_plan("lstm", 16, 256)
    narrow = te.narrow_backward(w16, "lstm", 16, 256, f32)
    back = te.backward_plan(narrow, "lstm", 16, 256, f32)
    assert narrow.half_w and not back.half_w and back.num_warps == 4 and back.block_h == 32
    with pytest.raises(ValueError, match="bwd_warps"):
        te.Plan("split", bwd_warps=3)


@pytest.mark.parametrize("mode, k", [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2)])
def test_split_backward_gate_by_gate_where_operands_do_not_fit(monkeypatch, mode, k):
    # The split backward reads all gates' gradients first and multiplies each gate apart where
    # those operands fit in shared memory beside the W_hh slices; else gate by gate, one chain
    # (LSTM fp32 H = 512). With no room at all, every size takes the second way (under the
    # interpreter the kernel reads the limit when it runs).
    if CUDA:
        pytest.skip("the limit is compiled into the kernel on a GPU")
    from rnnkit.engine import triton_kernels

    monkeypatch.setattr(triton_kernels, "READ_FIRST_MAX_BYTES", 0)
    plan = te.Plan("split", 16, 16, 16, num_warps=8, k_slices=k)
    _check(mode, 3, 7, 5, 24, torch.float32, plan, lengths=LENGTHS)


def test_k_sliced_plans_and_their_refusals():
    split16 = te.Plan("split", 16, 16, 16, num_warps=8)
    # as many slices as leave no warp repeating another's 8-column mma tiles, each >= 16 deep
    assert te.k_sliced(split16, 512).k_slices == 4
    assert te.k_sliced(dataclasses.replace(split16, block_h=32), 256).k_slices == 2
    assert te.k_sliced(split16, 24).k_slices == 2  # pads to 32: two slices of 16
    assert te.k_sliced(split16, 16) == split16
    wide = dataclasses.replace(split16, block_h=64)  # 8 tiles of 8 columns: one per warp already
    assert te.k_sliced(wide, 512) is wide
    with pytest.raises(ValueError, match="k_slices must be a power of two"):
        te.Plan("split", k_slices=3)
    with pytest.raises(ValueError, match="k_slices needs the split path"):
        te.Plan("resident", k_slices=2)
    x, state, weights = _problem("gru", 3, 4, 5, 24, torch.float32)
    with pytest.raises(ValueError, match="k_slices 4 leaves slices under 16 deep at H = 24"):
        te.run("gru", x, state, weights, plan=dataclasses.replace(split16, k_slices=4))


def test_wide_resident_plans_one_warp_per_eight_columns():
    f32, bf16 = torch.float32, torch.bfloat16
    assert te.wide_resident("lstm", 8, 64, f32).num_warps == 8
    assert te.wide_resident("gru", 32, 128, bf16).num_warps == 16
    assert te.wide_resident("lstm", 32, 100, bf16) == dataclasses.replace(
        te.plan_for("lstm", 32, 100, bf16, "resident"), num_warps=16
    )  # pads to 128
    assert te.wide_resident("lstm", 8, 32, f32) is None  # the default's 4 warps already
    assert te.wide_resident("lstm", 8, 128, f32) is None  # float32 W_hh too big for one program
    assert te.wide_resident("rnn", 8, 256, bf16).num_warps == 16  # 32 tiles of 8 columns: capped
    assert te.wide_resident("lstm", 8, 256, bf16) is None


def test_float16_matches_reference():
    plan = _plan("gru", "resident", torch.float16, H=16)
    _check("gru", 3, 7, 5, 16, torch.float16, plan, lengths=LENGTHS)


def _w16_emulation(mode, x, state, weights, lengths, follow=None):
    """What a ``half_w`` plan computes, in float64 autograd: the recurrent product's operands
    ``h`` and ``W_hh`` rounded to float16 in the forward, exact in the backward (the kernels'
    backward multiplies by the float32 ``W_hh`` and the saved float32 states).

    ``follow``: the kernels' ``out`` ``(T, B, H)``. Each step then starts from the kernels' own
    ``h`` (its value; the gradient still flows through the emulation's), so both round the same
    operands. Without it, where float32's ``h`` and float64's straddle a float16 rounding point
    the operands differ by a float16 step (~5e-4 at ``|h|`` ~ 0.5), which later steps carry on:
    over ``B * H * T`` ~ 5e4 element steps several such steps are expected (a few in 10^4), and
    the RNN, whose ``h`` feeds the next ``tanh`` undamped by gates, ends 2e-4 off (8e-4 where
    ``W_hh``'s spectral radius is over 1), in the interpreter as on the H100."""

    def rounded_product(h, w):  # (B, H) @ (H, K)
        exact = h @ w.t()
        return exact + (h.half().double() @ w.half().double().t() - exact).detach()

    x, w_ih, w_hh, b_ih, b_hh = (t.double() for t in (x, *weights))
    h = state[0].double()
    c = state[1].double() if mode == "lstm" else None
    H = h.shape[1]
    followed = h.detach()  # the kernels' h before each step
    outs = []
    for t in range(x.shape[0]):
        if follow is not None:
            h = h + (followed - h).detach()
        xp = x[t] @ w_ih.t() + b_ih
        if mode == "gru":
            hp = rounded_product(h, w_hh) + b_hh
            r = torch.sigmoid(xp[:, :H] + hp[:, :H])
            z = torch.sigmoid(xp[:, H : 2 * H] + hp[:, H : 2 * H])
            n = torch.tanh(xp[:, 2 * H :] + r * hp[:, 2 * H :])
            h_new, c_new = (1 - z) * n + z * h, None
        else:
            g = xp + rounded_product(h, w_hh) + b_hh
            if mode == "rnn":
                h_new, c_new = torch.tanh(g), None
            else:
                i, f, gg, o = g.chunk(4, 1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
        live = (t < lengths).unsqueeze(1)
        h = torch.where(live, h_new, h)
        c = torch.where(live, c_new, c) if mode == "lstm" else None
        outs.append(torch.where(live, h_new, torch.zeros_like(h_new)))
        if follow is not None:
            followed = torch.where(live, follow[t].double(), followed)
    return torch.stack(outs), ((h, c) if mode == "lstm" else (h,))


@pytest.mark.parametrize("path", ["resident", "split", "split_k", "split_side"])
@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_half_w_forward_rounds_only_the_recurrent_operands(mode, path):
    # Plan.half_w: float32 layers whose forward reads W_hh and h in float16. Equal to an exact
    # emulation of that rounding (outputs, states and every gradient); a float32 plan is not.
    B, T, I, H = 3, 7, 5, 24
    x, state, weights = _problem(mode, B, T, I, H, torch.float32)
    with torch.no_grad():
        state[0].mul_(0.6)
    lens = torch.tensor(LENGTHS)
    plan = te.w16_plan(mode, B, H) if path == "resident" else te.Plan("split", 16, 16, 16, half_w=True)
    if path == "split_k":  # and the product in two slices of the reduction (H = 24 pads to 32)
        plan = dataclasses.replace(plan, k_slices=2)
    if path == "split_side":  # and the gates side by side, in two halves of 16
        plan = dataclasses.replace(plan, side_gates=True)
    assert plan.path == path.split("_")[0] and plan.half_w
    ours = _run_and_grad(te.run, mode, x, state, weights, lens, "tanh", plan=plan)
    _check_half_w(mode, x, state, weights, lens, ours, 2e-5)
    full = _run_and_grad(
        te.run, mode, x, state, weights, lens, "tanh", plan=dataclasses.replace(plan, half_w=False)
    )
    # the rounding is visible: the test can tell a float32 forward, followed or not
    for follow in (None, full[0].detach()):
        em = functools.partial(_w16_emulation, follow=follow)
        wanted = _run_and_grad(lambda *a, e=em: e(*a[:5]), mode, *_as64(x, state, weights), lens, "tanh")
        assert _rel_err(full[0], wanted[0]) > 1e-5


def _check_half_w(mode, x, state, weights, lengths, ours, bound):
    """``ours`` (a half_w plan's outputs and gradients) against :func:`_w16_emulation`, each
    step of it from the kernels' own ``h``."""
    follow = ours[0].detach()
    wanted = _run_and_grad(
        lambda *a: _w16_emulation(*a[:5], follow=follow), mode, *_as64(x, state, weights), lengths, "tanh"
    )
    for name, a, b in zip(NAMES[mode], ours, wanted, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        assert _rel_err(a, b) < bound, f"{name}: {_rel_err(a, b):.2e}"


def test_half_w_rnn_at_the_size_where_a_free_emulation_drifts():
    # The H100's RNN half_w results were 0.8-1.9e-3 off the emulation run on its own (session
    # 17); the interpreter's are too at that size: a float16 step where float32's h and
    # float64's straddle a rounding point, carried on by the RNN. Each step from the kernels' h,
    # they agree.
    B, T, I, H = 37, 29, 33, 48
    lengths = torch.tensor([(7 * b) % T + 1 for b in range(B)])
    x, state, weights = _problem("rnn", B, T, I, H, torch.float32)
    plan = te.w16_plan("rnn", B, H)
    assert plan.path == "resident" and plan.half_w
    ours = _run_and_grad(te.run, "rnn", x, state, weights, lengths, "tanh", plan=plan)
    free = _run_and_grad(lambda *a: _w16_emulation(*a[:5]), "rnn", *_as64(x, state, weights), lengths, "tanh")
    assert _rel_err(ours[0], free[0]) > 1e-4  # what the H100 showed
    _check_half_w("rnn", x, state, weights, lengths, ours, 2e-5)


def test_half_w_plans_refuse_what_they_cannot_run():
    with pytest.raises(ValueError, match="half_w needs the resident or split path"):
        te.Plan("persistent", half_w=True)
    x, state, weights = _problem("rnn", 3, 4, 5, 16, torch.float32)
    plan = te.w16_plan("rnn", 3, 16)
    with pytest.raises(ValueError, match="float32 tanh cells"):
        te.run("rnn", x, state, weights, nonlinearity="relu", plan=plan)
    xb, state_b, weights_b = _problem("gru", 3, 4, 5, 16, torch.bfloat16)
    with pytest.raises(ValueError, match="float32 tanh cells"):
        te.run("gru", xb, state_b, weights_b, plan=te.w16_plan("gru", 3, 16))
    # sized for float16 slices: resident past float32's bound, wider split slices at H = 512
    assert te.w16_plan("lstm", 32, 128).path == "resident"
    assert te.plan_for("lstm", 32, 128, torch.float32).path == "split"
    assert te.w16_plan("gru", 64, 512).block_h > te.plan_for("gru", 64, 512, torch.float32).block_h
    assert te.w16_plan("lstm", 256, 1024) is None


# ---------------------------------------------------------------- plans and input checks


def test_plan_for_picks_resident_for_small_and_streams_for_large():
    assert te.plan_for("lstm", 16, 64, torch.float32).path == "resident"
    assert te.plan_for("lstm", 16, 24, torch.float32).block_h == 32  # padded to a power of two
    assert te.plan_for("lstm", 16, 256, torch.bfloat16).path != "resident"
    assert te.plan_for("lstm", 256, 1024, torch.bfloat16).path == "persistent"
    assert te.plan_for("gru", 1, 8, torch.float32, path="stepwise").path == "stepwise"


def test_split_plan_fits_the_chip_or_declines():
    sms = te._sm_count()
    plan = te.plan_for("lstm", 16, 256, torch.bfloat16)
    assert plan.path == "split" and plan.block_h == 32 and plan.block_b == 16
    assert te.split_plan("rnn", 16, 256, torch.bfloat16).block_h == 16
    # fp32 LSTM at H = 512: 32-column slices would not fit (4 x 512 x 32 x 4 bytes), 16 do
    assert te.split_plan("lstm", 64, 512, torch.float32).block_h == 16
    # B = 64, H = 512: four 16-row tiles of 32 programs each, one wave on an H100's 132 SMs
    plan = te.split_plan("lstm", 64, 512, torch.float32)
    assert plan is not None and te._cdiv(64, plan.block_b) * 32 <= max(sms, 128)
    # an fp32 LSTM slice at H = 1024 (4 gates x 1024 x 16 x 4 bytes) is too big for one program
    assert te.split_plan("lstm", 16, 1024, torch.float32) is None
    assert te.plan_for("lstm", 16, 1024, torch.float32).path != "split"
    # forcing the path where it does not fit still gives a runnable plan
    assert te.plan_for("lstm", 16, 1024, torch.float32, path="split").path == "split"


@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("B, H", [(3, 24), (16, 128), (64, 512), (256, 1024)])
def test_candidate_plans_start_with_the_default_and_are_distinct(mode, B, H):
    plans = te.candidate_plans(mode, B, H, torch.bfloat16)
    assert plans[0] == te.plan_for(mode, B, H, torch.bfloat16)
    assert len(set(plans)) == len(plans) >= 2
    # no graph plans (a training loop's calls would run them eagerly) and no launch-bound paths
    assert all(p.path in ("resident", "split", "persistent") and not p.graph for p in plans)
    on_chip = any(p.path in ("resident", "split") for p in plans)  # none at H = 1024
    assert any(p.packed_io for p in plans) == (mode != "rnn" and on_chip)
    assert any(p.block_b == 64 for p in plans) == (B >= 64)


@pytest.fixture
def _tuning(monkeypatch):
    """``cudnn.benchmark`` on and an empty tuning cache, as a fresh process that set it."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(te, "TUNED", {})


def test_tuning_times_every_candidate_once_and_runs_the_fastest(monkeypatch, _tuning):
    x, state, weights = _problem("gru", 3, 5, 4, 24, torch.float32)
    fastest = te.split_plan("gru", 3, 24, torch.float32, 16)
    timed, ran = [], []

    def fake_seconds(fn, repeats):
        fn()  # the candidate really runs (once here, for speed)
        timed.append(ran[-1])
        return 1.0 if ran[-1] == fastest else 2.0

    real_run = te._TritonLayer.apply
    monkeypatch.setattr(te, "_seconds", fake_seconds)
    monkeypatch.setattr(te._TritonLayer, "apply", lambda *a: ran.append(a[-2]) or real_run(*a))  # the plan
    lens = torch.tensor([5, 2, 4])
    for _ in range(2):
        ours = _run_and_grad(te.run, "gru", x, state, weights, lens, "tanh")
    assert sorted(map(repr, timed)) == sorted(map(repr, te.candidate_plans("gru", 3, 24, torch.float32)))
    assert ran[len(timed) :] == [fastest, fastest]  # both real calls, no second tuning
    assert list(te.TUNED.values()) == [fastest] and list(te.TUNED)[0][-1] is True  # with backward
    theirs = _run_and_grad(reference.run, "gru", x, state, weights, lens, "tanh")
    for a, b in zip(ours, theirs, strict=True):
        assert _rel_err(a, b) < 2e-5


def test_tuning_skips_a_failing_candidate_and_tunes_inference_apart(monkeypatch, _tuning):
    x, state, weights = _problem("lstm", 2, 3, 4, 16, torch.float32)
    default = te.plan_for("lstm", 2, 16, torch.float32)

    calls = []

    def seconds(fn, repeats):
        calls.append(1)
        if len(calls) == 1:  # the default, first: fails
            raise RuntimeError("out of resources")
        return float(len(calls))

    monkeypatch.setattr(te, "_seconds", seconds)
    with torch.no_grad():
        out, _ = te.run("lstm", x, state, weights)
    ((key, plan),) = te.TUNED.items()
    assert key[-1] is False  # forward only: no gradient was wanted
    assert plan == te.candidate_plans("lstm", 2, 16, torch.float32)[1] != default
    ref, _ = reference.run("lstm", x, state, weights)
    assert _rel_err(out, ref) < 2e-5


def test_tuning_under_inference_mode_times_the_forward(_tuning):
    x, state, weights = _problem("lstm", 2, 3, 4, 16, torch.float32)
    with torch.inference_mode():
        xi, si = x.detach().clone(), tuple(s.detach().clone() for s in state)
        wi = te.LayerWeights(*(w.detach().clone() for w in weights))
        out, _ = te.run("lstm", xi, si, wi, torch.tensor([3, 1]))
    ((key, plan),) = te.TUNED.items()
    assert key[-1] is False and plan in te.candidate_plans("lstm", 2, 16, torch.float32)
    ref, _ = reference.run("lstm", x, state, weights, torch.tensor([3, 1]))
    assert _rel_err(out, ref) < 2e-5


def test_tuning_falls_back_to_the_default_when_no_candidate_runs(monkeypatch, _tuning):
    x, state, weights = _problem("gru", 2, 3, 4, 16, torch.float32)

    def fail(fn, repeats):
        raise RuntimeError("out of resources")

    monkeypatch.setattr(te, "_seconds", fail)
    assert te.tune("gru", x, state, weights) == te.plan_for("gru", 2, 16, torch.float32)


def test_tuning_for_real_on_a_tiny_problem(_tuning):
    x, state, weights = _problem("rnn", 2, 3, 4, 16, torch.float32)
    plan = te.tune("rnn", x, state, weights, repeats=1)
    assert plan in te.candidate_plans("rnn", 2, 16, torch.float32)
    assert te.tune("rnn", x, state, weights) is plan  # remembered


def test_barrier_paths_launch_cooperatively_or_fall_back_once(monkeypatch):
    calls = []

    class Kernel:
        def __init__(self, refuse):
            self.refuse = refuse

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append((grid, args, kwargs))
                if self.refuse and kwargs.get("launch_cooperative_grid"):
                    raise RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")

            return launch

    monkeypatch.setattr(te, "INTERPRETED", False)
    monkeypatch.setattr(te, "COOPERATIVE", True)
    te._launch_synced(Kernel(False), (4,), 1, 2, BLOCK_B=16)
    assert calls == [((4,), (1, 2), {"BLOCK_B": 16, "launch_cooperative_grid": True})]
    calls.clear()
    with pytest.warns(RuntimeWarning, match="cooperative launch refused"):
        te._launch_synced(Kernel(True), (4,), 1, BLOCK_B=16)
    assert [c[2] for c in calls] == [{"BLOCK_B": 16, "launch_cooperative_grid": True}, {"BLOCK_B": 16}]
    assert te.COOPERATIVE is False
    calls.clear()
    te._launch_synced(Kernel(True), (4,), 1)  # from then on launched normally, no warning
    assert calls == [((4,), (1,), {})]
    # an error that a normal launch repeats is not the cooperative launch's: raised, flag kept
    calls.clear()
    monkeypatch.setattr(te, "COOPERATIVE", True)

    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append(kwargs)
                raise RuntimeError("Triton Error [CUDA]: out of memory")

            return launch

    with pytest.raises(RuntimeError, match="out of memory"):
        te._launch_synced(Broken(), (4,), 1)
    assert calls == [{"launch_cooperative_grid": True}, {}] and te.COOPERATIVE is True
    # while a CUDA graph is captured: a normal launch (a refused one would spoil the capture)
    calls.clear()
    monkeypatch.setattr(te, "COOPERATIVE", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    te._launch_synced(Kernel(False), (4,), 1)
    assert calls == [((4,), (1,), {})] and te.COOPERATIVE is True


def test_plan_rejects_bad_blocks():
    with pytest.raises(ValueError, match="block_h must be a power of two"):
        te.Plan("persistent", block_h=24)
    with pytest.raises(ValueError, match="path must be one of"):
        te.Plan("fast")


def test_supports_and_clear_error():
    x, state, weights = _problem("gru", 3, 4, 5, 16, torch.float32)
    assert te.supports("gru", x, weights)
    assert not te.supports("gru", x.double(), weights)
    assert not te.supports("conv", x, weights)
    with pytest.raises(ValueError, match="triton engine: expected"):
        te.run("gru", x.double(), state, weights)
    x, state, weights = _problem("gru", 3, 4, 5, 24, torch.float32)
    with pytest.raises(ValueError, match="resident plan needs block_h"):
        te.run("gru", x, state, weights, plan=te.Plan("resident", block_h=16, block_k=16))


def test_empty_input_and_double_backward_are_refused():
    x, state, weights = _problem("rnn", 2, 2, 3, 16, torch.float32)
    with pytest.raises(ValueError, match="expected non-empty T, B and H"):
        te.run("rnn", x[:0], state, weights)
    out, _ = te.run("rnn", x, state, weights)
    (dx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(dx.sum(), x)


def test_outputs_do_not_alias_and_state_dtype_follows_input():
    x, state, weights = _problem("lstm", 3, 4, 5, 16, torch.bfloat16)
    out, (h, c) = te.run("lstm", x, state, weights)
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    assert out.shape == (4, 3, 16) and h.shape == c.shape == (3, 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("used", ["out", "final", "last"])
@pytest.mark.parametrize("path", te.PATHS)
@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_outputs_left_out_of_the_loss(mode, path, used, dtype):
    """Outputs that no loss uses reach the backward as ``None`` (no zeros made for them): only
    the output, only the final state, or only the last state tensor (LSTM: ``c_n``); gradients
    as the reference's, also in bfloat16, where the final state's gradients arrive and ``dh0``
    and ``dc0`` leave in that dtype."""
    x, state, weights = _problem(mode, 3, 6, 5, 24, dtype)
    leaves = [x, *state, *weights]
    lens = torch.tensor([6, 2, 5])
    plan = _plan(mode, path, dtype)
    results = []
    for engine, kw in ((te.run, {"plan": plan}), (reference.run, {})):
        out, fin = engine(mode, x, state, weights, lens, **kw)
        picked = {"out": [out], "final": list(fin), "last": [fin[-1]]}[used]
        g = torch.Generator().manual_seed(5)
        loss = sum((t.float() * torch.randn(t.shape, generator=g).to(t.device)).sum() for t in picked)
        results.append(torch.autograd.grad(loss, leaves))
    ours, theirs = results
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        tol = 2e-5 if dtype == torch.float32 else 3e-2
        assert _rel_err(a, b) < tol


@pytest.mark.parametrize("frozen", ["bias_ih", "bias_hh", "none"])
@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_bias_gradients_one_product_whichever_bias_trains(mode, frozen):
    """Both biases' gradients come from one product (views of one result for LSTM and RNN,
    GRU's hidden side gathered from its slots); with either bias frozen the other's is still
    the reference's, and two gradients never share memory."""
    x, state, weights = _problem(mode, 3, 5, 4, 24, torch.float32)
    if frozen != "none":
        getattr(weights, frozen).requires_grad_(False)
    leaves = [t for t in (x, *state, *weights) if t.requires_grad]
    lens = torch.tensor([5, 1, 3])
    grads = []
    for engine, kw in ((te.run, {"plan": _plan(mode, "split", torch.float32)}), (reference.run, {})):
        out, fin = engine(mode, x, state, weights, lens, **kw)
        g = torch.Generator().manual_seed(2)
        ups = [torch.randn(t.shape, generator=g) for t in (out, *fin)]
        grads.append(torch.autograd.grad([out, *fin], leaves, ups))
    for a, b in zip(*grads, strict=True):
        assert _rel_err(a, b) < 2e-5
    ours = grads[0]
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in ours)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))


def test_the_backward_is_given_none_for_unused_outputs(monkeypatch):
    """The engine asks autograd not to fill unused outputs' gradients with zeros (a launch each)."""
    seen = []
    backward = te._TritonLayer.backward

    def spy(ctx, dout, dh_n, dc_n=None):
        seen.append((dout is None, dh_n is None, dc_n is None))
        return backward(ctx, dout, dh_n, dc_n)

    monkeypatch.setattr(te._TritonLayer, "backward", staticmethod(spy))
    x, state, weights = _problem("lstm", 3, 4, 5, 16, torch.float32)
    out, (h, c) = te.run("lstm", x, state, weights)
    out.sum().backward()
    assert seen == [(False, True, True)]


@pytest.mark.parametrize(
    "mode, path", [("lstm", "resident"), ("gru", "split"), ("lstm", "gemm"), ("rnn", "split")]
)
def test_second_backward_through_a_retained_graph(mode, path):
    """The backward writes the gate gradients over the saved activations (LSTM, GRU); a second
    backward through the same graph (``retain_graph``) must still equal the reference."""
    x, state, weights = _problem(mode, 3, 5, 4, 24, torch.float32)
    leaves = [x, *state, *weights]
    out, fin = te.run(mode, x, state, weights, torch.tensor([5, 2, 4]), plan=_plan(mode, path, torch.float32))
    ref_out, ref_fin = reference.run(mode, x, state, weights, torch.tensor([5, 2, 4]))
    g = torch.Generator().manual_seed(3)
    ups = [torch.randn(t.shape, generator=g) for t in (out, *fin)]
    theirs = torch.autograd.grad([ref_out, *ref_fin], leaves, ups, retain_graph=True)
    for _ in range(2):
        ours = torch.autograd.grad([out, *fin], leaves, ups, retain_graph=True)
        for a, b in zip(ours, theirs, strict=True):
            assert _rel_err(a, b) < 2e-5
    # a different upstream gradient the second time: the result follows it
    ups2 = [2 * u + 1 for u in ups]
    ours = torch.autograd.grad([out, *fin], leaves, ups2)
    theirs = torch.autograd.grad([ref_out, *ref_fin], leaves, ups2)
    for a, b in zip(ours, theirs, strict=True):
        assert _rel_err(a, b) < 2e-5


@pytest.mark.parametrize("mode, gate_slots", [("lstm", 4), ("gru", 4), ("rnn", 1)])
def test_projections_activations_and_gate_gradients_share_one_buffer(monkeypatch, mode, gate_slots):
    """Memory plan of one forward and backward, kernels replaced by no-ops: besides ``out``
    (LSTM: and the cell states) one gate buffer of ``T * B * gate_slots * H`` elements serves as
    the input projections, the saved activations and the gate gradients (RNN: a second one for
    the gradients), so the peak stays under that plus ``dx`` and small state tensors, where
    separate buffers would need two to three gate buffers more."""
    from torch.profiler import ProfilerActivity, profile

    class _NoOp:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    for name in dir(te.K):
        if name.endswith("_kernel"):
            monkeypatch.setattr(te.K, name, _NoOp())
    T, B, I, H = 32, 16, 16, 32
    x, state, weights = _problem(mode, B, T, I, H, torch.float32)
    leaves = [x, *state, *weights]
    ups = [torch.ones(T, B, H), *(torch.ones(B, H) for _ in state)]

    def step():
        out, fin = te.run(mode, x, state, weights, plan=te.plan_for(mode, B, H, torch.float32, "split"))
        grads = torch.autograd.grad([out, *fin], leaves, ups)
        return out, fin, grads

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()  # its results die inside the profile
    live = peak = 0
    events = prof.profiler.kineto_results.events()
    for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    row = T * B * 4  # bytes of one H-wide fp32 row block
    per_row = {"lstm": 1 + 1, "gru": 1, "rnn": 1 + 1}[mode]  # out (+ cs; RNN: its dgi)
    bound = (gate_slots + per_row) * H * row + I * row + 64 * 1024
    assert peak <= bound, f"peak {peak} bytes > {bound}"
    assert peak >= gate_slots * H * row  # the gate buffer is in the profile


def _span(ptr, shape, stride, itemsize):
    """``[first, last)`` byte addresses a tensor (or view) of this layout reaches."""
    last = sum((n - 1) * st for n, st in zip(shape, stride, strict=True) if n > 0)
    return ptr, ptr + (last + 1) * itemsize


class _Touches(TorchDispatchMode):
    """Records every tensor an aten op reads or writes (arguments and results)."""

    def __init__(self, sink: list) -> None:
        super().__init__()
        self.sink = sink

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten((args, kwargs, result))
        self.sink.extend(t for t in flat if isinstance(t, torch.Tensor))
        return result


GRAPH_KEY_CASES = [(mode, path, torch.float32, "all") for mode in ("rnn", "lstm", "gru") for path in te.PATHS]
GRAPH_KEY_CASES += [
    ("lstm", "split", torch.bfloat16, "all"),
    ("gru", "resident", torch.bfloat16, "all"),
    ("lstm", "split_w16", torch.float32, "all"),
    ("gru", "persistent", torch.float32, "state only"),  # no output gradient: the backward zeroes one
    ("lstm", "resident", torch.float32, "weights only"),  # no dx, dh0, dc0
    ("gru", "gemm", torch.float32, "no bias"),
]


@pytest.mark.parametrize("mode, path, dtype, case", GRAPH_KEY_CASES)
def test_graph_keys_name_every_tensor_a_call_launches_on(monkeypatch, mode, path, dtype, case):
    """A replayed CUDA graph writes wherever its capture's launches pointed, so a ``graph`` plan's
    key must name every tensor a launch in the call reaches: else a later call over other memory
    could replay into the wrong buffers. And no launch may allocate (memory made inside a capture
    belongs to the graph and is reused by the next replay). Here the launches run eagerly, every
    aten op and kernel launch recorded (kernels as no-ops: what they compute is tested above).
    The tensors a call allocates itself are keyed by address alone, so their layouts must follow
    from the rest of the key: the same call again allocates the same layouts."""
    from rnnkit.engine._graphs import call_key

    calls = []  # (given, owned, tensors the call's launches reached)
    named = []  # (given, owned) of the key being built

    def recording_key(given, owned=()):
        named.append((given, owned))
        return call_key(given, owned)

    class Recording:
        def run(self, key, launches, device, family=""):
            calls.append((*named.pop(), []))
            with _Touches(calls[-1][2]):
                launches()
            return "eager"

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kw: calls[-1][2].extend(a for a in args if isinstance(a, torch.Tensor))

    for name in dir(te.K):
        if name.endswith("_kernel"):
            monkeypatch.setattr(te.K, name, Kernel())
    monkeypatch.setattr(te, "GRAPHS", Recording())
    monkeypatch.setattr(te, "call_key", recording_key)
    B, T, H = 3, 7, 24
    if path == "split_w16":
        plan = dataclasses.replace(te.Plan("split", 16, 16, 16, half_w=True), graph=True)
    else:
        plan = dataclasses.replace(_plan(mode, path, dtype, B, H), graph=True)
    x, state, weights = _problem(mode, B, T, 5, H, dtype, bias=case != "no bias")
    if case == "weights only":
        x, state = x.detach(), tuple(s.detach() for s in state)
    leaves = [t for t in (x, *state, *weights) if t is not None and t.requires_grad]
    lengths = torch.tensor(LENGTHS)
    ups = None
    for _ in range(2):
        out, fin = te.run(mode, x, state, weights, lengths, plan=plan)
        ups = ups or [torch.randn_like(t) for t in (out, *fin)]
        if case == "state only":
            torch.autograd.grad(fin, leaves, ups[1:])
        else:
            torch.autograd.grad([out, *fin], leaves, ups)
    assert [given[0] for given, _, _ in calls] == ["fwd", "bwd", "fwd", "bwd"]

    def layout(t):
        return (t.shape, t.stride(), t.dtype) if isinstance(t, torch.Tensor) else t

    for (given, owned, touched), (again, owned_again, _) in zip(calls[:2], calls[2:], strict=True):
        # the same kind of call (given layouts alike, some addresses not): owned layouts alike
        assert [layout(t) for t in given] == [layout(t) for t in again]
        assert [layout(t) for t in owned] == [layout(t) for t in owned_again]
        tensors = [t for t in (*given, *owned) if isinstance(t, torch.Tensor)]
        keyed = [_span(t.data_ptr(), t.shape, t.stride(), t.element_size()) for t in tensors]
        assert len(touched) > 5
        for t in touched:
            lo, hi = _span(t.data_ptr(), t.shape, t.stride(), t.element_size())
            assert any(a <= lo and hi <= b for a, b in keyed), (
                f"{given[0]}: a launch reaches a tensor the key does not name: {tuple(t.shape)} {t.dtype}"
            )


# ---------------------------------------------------------------- GPU only (compiled kernels)


@needs_cuda
@pytest.mark.parametrize(
    "path, dtype",
    [(p, torch.float32) for p in ("resident", "split", "persistent", "gemm")]
    + [("split", torch.bfloat16), ("gemm", torch.bfloat16)],
)
@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_gpu_graph_plans_replay_equal_to_eager_calls(monkeypatch, mode, path, dtype):
    # first of the GPU tests (file order): the newest check, run before any time limit bites
    # what benchmarks/bench_gpu.py's graph variants run: a call's launches captured as a CUDA
    # graph on its second sighting and replayed after. New values go into the same tensors before
    # each call, so a replay must read what the memory holds now, and each call's results must
    # equal the eager plan's on the same values.
    from rnnkit.engine._graphs import CallGraphs

    monkeypatch.setattr(te, "GRAPHS", CallGraphs())
    B, T = 37, 29
    H = 48 if path == "resident" else 208
    lengths = torch.tensor([(7 * b) % T + 1 for b in range(B)])
    x, state, weights = _problem(mode, B, T, 33, H, dtype)
    leaves = [x, *state, *weights]
    plan = dataclasses.replace(te.plan_for(mode, B, H, dtype, path), graph=True)
    eager = dataclasses.replace(plan, graph=False)
    scales = [leaf.abs().max().item() for leaf in leaves]

    def call(seed, plan):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for leaf, scale in zip(leaves, scales, strict=True):
                leaf.copy_(scale * (torch.rand(leaf.shape, generator=g) * 2 - 1))
        res = _run_and_grad(te.run, mode, x, state, weights, lengths, "tanh", plan=plan)
        return [r.detach().cpu() for r in res]

    graphed = [call(seed, plan) for seed in range(5)]  # in a row: the same blocks each call
    assert te.GRAPHS.stats["captured"] >= 2 and te.GRAPHS.stats["replayed"] >= 2, te.GRAPHS.stats
    # the same kernels; library products may pick other algorithms under capture (rounding), a
    # replay over stale or wrong memory would be off by the values' own size
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for seed, ours in enumerate(graphed):
        theirs = call(seed, eager)
        for name, a, b in zip(NAMES[mode], ours, theirs, strict=True):
            assert _rel_err(a, b) < tol, f"call {seed}, {name}: {_rel_err(a, b):.2e}"
    if dtype == torch.float32:  # and right, not just alike: the last call against the reference
        ref = _run_and_grad(reference.run, mode, x, state, weights, lengths, "tanh")
        for name, a, b in zip(NAMES[mode], graphed[-1], ref, strict=True):
            assert _rel_err(a, b.detach().cpu()) < 2e-5, name


@needs_cuda
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_gpu_graph_plans_in_a_training_loop_train_as_eager_plans(monkeypatch, mode):
    # A graph plan replays a call only where its tensors sit where the captured call's did. In a
    # training loop they move: on the H100 (session 17) a language model's 12 steps replayed none
    # of their 24 calls, for the embeddings, the carried state and the engine's own buffers land
    # elsewhere each step (Plan.graph). What must hold whatever replays: the loop trains exactly as
    # with the eager plan, every call run once (no graph replayed over memory that moved).
    import torch.nn.functional as F

    from rnnkit.engine._graphs import CallGraphs
    from rnnkit.models import LanguageModel, LanguageModelConfig

    def train(graph: bool) -> tuple[list[float], CallGraphs]:
        graphs = CallGraphs()
        monkeypatch.setattr(te, "GRAPHS", graphs)
        default = te.plan_for
        monkeypatch.setattr(
            te, "plan_for", lambda *a, **k: dataclasses.replace(default(*a, **k), graph=graph)
        )
        torch.manual_seed(0)
        V, T, B = 50, 24, 8
        model = LanguageModel(LanguageModelConfig(V, cell=mode, hidden_size=64, engine="triton")).to(DEVICE)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        data = torch.randint(0, V, (12, T + 1, B), device=DEVICE)
        state, losses = None, []
        for tokens in data:
            logits, state = model(tokens[:-1], state)
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            losses.append(loss.item())
        monkeypatch.setattr(te, "plan_for", default)
        return losses, graphs

    eager, _ = train(False)
    graphed, graphs = train(True)
    assert sum(graphs.stats.values()) == 2 * len(eager), graphs.stats  # a forward and a backward a step
    assert graphed == pytest.approx(eager, rel=1e-5), (graphed, eager)
    assert eager[-1] < eager[0]  # it trains (lr 1e-2, 12 steps)


GPU_CASES = [(path, dtype) for path in te.PATHS for dtype in (torch.float32, torch.bfloat16)]
GPU_CASES.append(("resident", torch.float16))
# and the default plan, where it is a split plan refined_split changed (a forced path is plain)
GPU_CASES += [("default", torch.float32), ("default", torch.bfloat16)]


@needs_cuda
@pytest.mark.parametrize("path, dtype", GPU_CASES)
@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_gpu_larger_sizes(mode, path, dtype):
    # H = 208: four 64-wide blocks, the last ragged; 48 pads to 64. Both are multiples of 16, so
    # after benchmarks/bench_gpu.py these hit its compiled variants in Triton's disk cache.
    H = 48 if path == "resident" else 208
    B, T = 37, 29  # three 16-row tiles, the last ragged
    lengths = [(7 * b) % T + 1 for b in range(B)]
    lengths[5] = T
    plan = te.plan_for(mode, B, H, dtype, None if path == "default" else path)
    if path == "default" and mode != "rnn":  # LSTM: side by side, 4-warp backward; GRU: the latter
        assert plan.path == "split" and plan.bwd_warps == 4 and plan.side_gates == (mode == "lstm")
    _check(mode, B, T, 33, H, dtype, plan, lengths=lengths)


@needs_cuda
@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize(
    "path, B, block_b, packed",
    [
        ("resident", 37, 16, True),
        ("split", 37, 16, True),
        ("split", 70, 64, False),
        ("persistent", 70, 64, False),
    ],
)
def test_gpu_benchmark_variants(mode, path, B, block_b, packed):
    # what benchmarks/bench_gpu.py's *_packed, split64 and persistent64 variants run (the 64-row
    # tiles compile to wgmma on sm_90), at the sizes of test_gpu_larger_sizes
    H = 48 if path == "resident" else 208
    lengths = [(7 * b) % 29 + 1 for b in range(B)]
    plan = dataclasses.replace(
        te.plan_for(mode, B, H, torch.bfloat16, path), block_b=block_b, packed_io=packed
    )
    _check(mode, B, 29, 33, H, torch.bfloat16, plan, lengths=lengths)


@needs_cuda
@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("H, sliced", [(48, False), (208, False), (512, False), (512, True)])
def test_gpu_half_w_plans(mode, H, sliced):
    # what benchmarks/bench_gpu.py's w16 and w16k variants run: resident at H = 48, split beyond
    # (at H = 512 with the float16-sized slices, wider than float32's; w16k: the products in k
    # slices, the float32 backward's too), against the exact emulation
    B, T = 37, 29
    lengths = torch.tensor([(7 * b) % T + 1 for b in range(B)])
    x, state, weights = _problem(mode, B, T, 33, H, torch.float32)
    plan = te.w16_plan(mode, B, H)
    if sliced:
        plan = te.k_sliced(plan, H)
        assert plan.k_slices > 1
    ours = _run_and_grad(te.run, mode, x, state, weights, lengths, "tanh", plan=plan)
    # each step from the kernels' h (run on its own, the emulation drifted off the RNN's by
    # 0.8-1.9e-3 on the H100, and GRU H = 208's by 5.0e-5: float16 steps where float32's h and
    # float64's straddle a rounding point; test_half_w_rnn_at_the_size_where_a_free_emulation_drifts)
    _check_half_w(mode, x, state, weights, lengths.to(DEVICE), ours, 2e-5)


@needs_cuda
@pytest.mark.parametrize(
    "mode, H, dtype",
    [("lstm", 512, torch.float32), ("gru", 512, torch.bfloat16), ("rnn", 208, torch.float32)],
)
def test_gpu_k_sliced_split_plans(mode, H, dtype):
    # what benchmarks/bench_gpu.py's splitk variant runs: the split plan, its products in k
    # slices (LSTM fp32 H = 512: 16 columns, 4 slices; GRU bf16: 32 columns, 2; H = 208 pads to
    # 256)
    B, T = 37, 29
    lengths = [(7 * b) % T + 1 for b in range(B)]
    plan = te.k_sliced(te.plan_for(mode, B, H, dtype, "split"), H)
    assert plan.k_slices > 1
    _check(mode, B, T, 33, H, dtype, plan, lengths=lengths)


@needs_cuda
@pytest.mark.parametrize(
    "mode, H, dtype, variant",
    [
        ("lstm", 256, torch.float32, "sidebw4"),
        ("gru", 512, torch.float32, "sidek"),
        ("lstm", 208, torch.bfloat16, "side"),
    ],
)
def test_gpu_side_by_side_plans(mode, H, dtype, variant):
    # what benchmarks/bench_gpu.py's side variants run: the forward's gates side by side (LSTM
    # fp32 H = 256: 32 columns, halves of 128, the backward on 4 warps; GRU fp32 H = 512: 16
    # columns, the backward in 4 k slices; LSTM bf16 H = 208 pads to 256)
    B, T = 37, 29
    lengths = [(7 * b) % T + 1 for b in range(B)]
    plan = dataclasses.replace(te.plan_for(mode, B, H, dtype, "split"), side_gates=True)
    if variant == "sidebw4":
        plan = te.narrow_backward(plan, mode, B, H, dtype)
    elif variant == "sidek":
        plan = te.k_sliced(plan, H)
    assert plan.side_gates and (variant != "sidek" or plan.k_slices > 1)
    _check(mode, B, T, 33, H, dtype, plan, lengths=lengths)


@needs_cuda
@pytest.mark.parametrize("mode, H, dtype", [("lstm", 64, torch.float32), ("gru", 128, torch.bfloat16)])
def test_gpu_wide_resident_plans(mode, H, dtype):
    # what benchmarks/bench_gpu.py's resident_wide variant runs: 8 and 16 warps
    B, T = 37, 29
    lengths = [(7 * b) % T + 1 for b in range(B)]
    plan = te.wide_resident(mode, B, H, dtype)
    assert plan.num_warps == H // 8
    _check(mode, B, T, 33, H, dtype, plan, lengths=lengths)


#: a user's TF32 setting (old and new torch APIs) -> whether torch.nn's cuDNN RNNs use TF32, on a
#: torch whose parent switches overwrite their children when set (2.13)
TF32_SETUPS = {
    "pass": True,
    "torch.backends.cuda.matmul.allow_tf32 = True": True,
    "torch.backends.cuda.matmul.allow_tf32 = False": True,
    "torch.backends.cudnn.allow_tf32 = False": False,
    "torch.set_float32_matmul_precision('high')": True,
    "torch.backends.cuda.matmul.fp32_precision = 'tf32'": True,
    "torch.backends.fp32_precision = 'tf32'": True,
    "torch.backends.fp32_precision = 'ieee'": False,
    "torch.backends.cudnn.fp32_precision = 'ieee'": False,
    "torch.backends.cudnn.rnn.fp32_precision = 'ieee'": False,
    "torch.backends.fp32_precision = 'ieee'; torch.backends.cudnn.rnn.fp32_precision = 'tf32'": True,
}
#: the setups that differ on a torch whose parent switches leave a child's own value alone (2.11):
#: there cuDNN RNN's switch starts at "tf32", not "none", and torch's ``Context::float32Precision``
#: takes an op's own value before its parents', so its cuDNN RNNs keep TF32
TF32_SETUPS_PARENTS_KEEP_CHILDREN = {
    "torch.backends.fp32_precision = 'ieee'": True,
    "torch.backends.cudnn.fp32_precision = 'ieee'": True,
}

#: run in a fresh process: each setup in a forked child (the switches are process-wide, and torch
#: remembers which API set them), the child's findings as one JSON line
_TF32_PROBE = r"""
import json, os, sys
import torch
from rnnkit.engine import triton_engine as te

def observe():
    seen = {"new": torch.backends.cuda.matmul.fp32_precision}
    for name in ("cuda.matmul", "cudnn"):
        try:
            seen[name] = eval(f"torch.backends.{name}.allow_tf32")
        except RuntimeError:  # torch: "mix of the legacy and new APIs"
            seen[name] = "raises"
    return seen

if os.fork() == 0:  # does setting a parent switch overwrite a child's own value? torch's answer
    torch.backends.fp32_precision = "ieee"
    print(json.dumps({"parents_overwrite": torch.backends.cudnn.rnn.fp32_precision == "ieee"}), flush=True)
    os._exit(0)
os.wait()

for setup in json.loads(sys.argv[1]):
    r, w = os.pipe()
    if os.fork() == 0:
        result = {"setup": setup}
        try:
            exec(setup)
            before = observe()
            result["rnn_tf32"] = te.cudnn_rnn_tf32()
            for enabled in (True, False):
                with te._cublas_tf32(enabled):
                    result[f"inside_{enabled}"] = torch.backends.cuda.matmul.fp32_precision
            result["after"], result["before"] = observe(), before
        except BaseException as e:
            result["error"] = repr(e)
        finally:
            os.write(w, (json.dumps(result) + "\n").encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        sys.stdout.write(f.read())
    os.wait()
"""


@pytest.mark.skipif(te._FP32_GET is None or not hasattr(os, "fork"), reason="torch < 2.9, or no fork")
def test_tf32_switches_read_and_restored_under_both_torch_apis():
    # torch >= 2.9 raises on reading allow_tf32 once a user set the new fp32_precision switches
    # (as its docs advise): the engine must read and set the new ones, and leave both as they were
    import json
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", _TF32_PROBE, json.dumps(list(TF32_SETUPS))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    semantics, *results = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = dict(TF32_SETUPS)
    if not semantics["parents_overwrite"]:
        expected |= TF32_SETUPS_PARENTS_KEEP_CHILDREN
    assert [r["setup"] for r in results] == list(TF32_SETUPS)
    for r in results:
        assert "error" not in r, r
        assert r["rnn_tf32"] == expected[r["setup"]], r
        assert (r["inside_True"], r["inside_False"]) == ("tf32", "ieee"), r
        assert r["after"] == r["before"], r
    # the case that used to raise: the new API set, the old switch unreadable
    new_api = list(TF32_SETUPS).index("torch.backends.cuda.matmul.fp32_precision = 'tf32'")
    assert results[new_api]["before"]["cuda.matmul"] == "raises"


@needs_cuda
@pytest.mark.parametrize("cudnn_tf32", [False, True])
def test_gpu_library_products_follow_cudnn_tf32_and_restore_the_flag(cudnn_tf32):
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
    before = torch.backends.cuda.matmul.allow_tf32
    x, state, weights = _problem("gru", 5, 4, 8, 16, torch.float32)
    plan = te.plan_for("gru", 5, 16, torch.float32, "gemm")
    ours = _run_and_grad(te.run, "gru", x, state, weights, None, "tanh", plan=plan)
    assert torch.backends.cuda.matmul.allow_tf32 == before
    theirs = _run_and_grad(reference.run, "gru", *_as64(x, state, weights), None, "tanh")
    worst = max(_rel_err(a, b) for a, b in zip(ours, theirs, strict=True))
    assert worst < (3e-3 if cudnn_tf32 else 2e-5)


@needs_cuda
def test_gpu_split_with_more_programs_than_multiprocessors():
    # 16-row tiles of 16 programs each, more tiles than the GPU holds at once: the host launches
    # them in groups that fit (no program waits for a partner that cannot start; no NaN)
    H = 256
    B = 16 * (te._sm_count() // 16 + 2)
    plan = te.Plan("split", block_b=16, block_h=16, num_warps=8)
    _check("lstm", B, 9, 32, H, torch.bfloat16, plan, lengths=[(5 * b) % 9 + 1 for b in range(B)])


@needs_cuda
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_gpu_default_plan_at_a_benchmark_size(mode):
    _check(mode, 16, 64, 256, 256, torch.bfloat16, None)


@needs_cuda
def test_gpu_tuned_plan_at_a_benchmark_size(_tuning):
    # every candidate compiles and runs on the GPU (a failing one would only be skipped: the
    # log says which), and the plan chosen is correct
    _check("lstm", 64, 32, 128, 512, torch.bfloat16, None)
    assert len(te.TUNED) == 1


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_layer_engine_triton_equals_reference(mode):
    """``engine="triton"`` through the layer (stacked, bidirectional, lengths) equals the reference."""
    import rnnkit

    torch.manual_seed(0)
    ours = getattr(rnnkit, mode.upper())(5, 16, num_layers=2, bidirectional=True, engine="triton").to(DEVICE)
    x = torch.randn(6, 3, 5, device=DEVICE)
    lengths = torch.tensor([6, 2, 4])
    out_t, _ = ours(x, lengths=lengths)
    ours.engine = "reference"
    out_r, _ = ours(x, lengths=lengths)
    torch.testing.assert_close(out_t, out_r, rtol=2e-5, atol=2e-5)


def test_layer_under_autocast_runs_the_triton_engine_in_low_precision():
    """A float32 layer under autocast (the CPU's here, standing in for CUDA's under the
    interpreter) runs the Triton kernels in autocast's dtype, exactly as the same layer cast to
    that dtype; gradients reach the float32 weights; the CPU engines keep float32."""
    import copy

    import rnnkit

    torch.manual_seed(0)
    ours = rnnkit.LSTM(5, 16, num_layers=2, bidirectional=True, engine="triton").to(DEVICE)
    low = copy.deepcopy(ours).to(torch.bfloat16)
    x = torch.randn(6, 3, 5, device=DEVICE)
    h0 = (torch.randn(4, 3, 16, device=DEVICE), torch.randn(4, 3, 16, device=DEVICE))
    lengths = torch.tensor([6, 2, 4])
    up = torch.randn(6, 3, 32, device=DEVICE).to(torch.bfloat16)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out, (h, c) = ours(x, h0, lengths=lengths)
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    out.backward(up)
    out_low, (h_low, c_low) = low(
        x.to(torch.bfloat16), tuple(s.to(torch.bfloat16) for s in h0), lengths=lengths
    )
    out_low.backward(up)
    for a, b in ((out, out_low), (h, h_low), (c, c_low)):
        assert torch.equal(a, b)
    for (name, p), q in zip(ours.named_parameters(), low.parameters(), strict=True):
        assert p.dtype == torch.float32 and torch.equal(p.grad, q.grad.float()), name
    ours.engine = "fused"  # the CPU engines keep float32 under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x.cpu(), lengths=lengths)[0].dtype == torch.float32


def test_auto_times_triton_against_native_once_per_kind_of_call(monkeypatch, _tuning):
    # what engine="auto" does on CUDA under cudnn.benchmark: the faster of the Triton kernels
    # (on their tuned plan) and cuDNN's, timed on the first call of each kind
    from rnnkit import engine as engines

    x, state, weights = _problem("gru", 3, 5, 4, 24, torch.float32)
    monkeypatch.setattr(engines, "CHOSEN", {})
    monkeypatch.setattr(te, "tune", lambda *a, **k: te.plan_for("gru", 3, 24, torch.float32))
    speeds = [2.0, 1.0, 1.0, 3.0]  # triton, native (with backward); triton, native (forward only)
    timed = []

    def fake_seconds(fn, repeats):
        fn()  # each candidate really runs
        timed.append(speeds[len(timed)])
        return timed[-1]

    monkeypatch.setattr(te, "_seconds", fake_seconds)
    assert engines.choose("gru", x, state, weights) == "native"
    assert engines.choose("gru", x, state, weights) == "native" and len(timed) == 2  # remembered
    with torch.no_grad():
        assert engines.choose("gru", x, state, weights) == "triton" and len(timed) == 4
    assert sorted(engines.CHOSEN.values()) == ["native", "triton"]
