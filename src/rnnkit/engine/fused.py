"""The fused engine: one ``autograd.Function`` per cell type with BPTT written by hand.

Each Function does, for one direction of one layer:

1. forward: the input projection of all ``T`` steps as ONE matrix product
   ``(T*B, I) @ (I, G)``, then a time loop doing the recurrent product and the gate arithmetic;
2. backward: a time loop from the last step to the first producing the gradient of the gate
   pre-activations ``dgates`` ``(T, B, G)`` and of the initial state, then the weight gradients as
   ONE product each over all steps: ``dW_ih = dgates^T x``, ``dW_hh = dgates^T h_prev``, biases
   as sums, ``dx = dgates W_ih``.

It saves only what the backward needs: the gate activations, the output sequence (which is
``h_prev`` shifted by one step), the inputs, and for the LSTM the cell states and ``tanh(c)``,
for the GRU ``W_hn h + b_hn``. Double backward is not supported (``once_differentiable``).

The time loops come in two backends with one calling convention (arrays updated in place):

- ``"torch"``: readable per-step tensor ops; runs on any device. Below.
- ``"numba"``: the whole loop in one compiled call (:mod:`._numba_kernels`), CPU only; the
  per-step cost of ~15 tensor-op dispatches would otherwise dominate at small sizes. Large
  enough loops run on every thread of torch's own OpenMP team (:mod:`._team`): the LSTM cuts
  its hidden units into per-thread blocks (gate rows reordered so each block's are contiguous,
  a barrier per step) or its batch into per-thread ranges; GRU and RNN cut the batch (see
  ``_NumbaLoops``). ``"numba_scipy"`` is the same kernels with ``np.dot`` (SciPy's BLAS)
  instead of torch's BLAS.

``run`` picks ``numba`` on the CPU when Numba imports, else ``torch``; tests force each one.

Shapes: ``x`` ``(T, B, I)``; ``state`` ``(h0,)`` or ``(h0, c0)`` each ``(B, H)``; ``lengths``
``(B,)`` int64 on the CPU, values in ``[1, T]``, or ``None``. ``G`` = ``H``/``4H``/``3H`` for
RNN/LSTM/GRU.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .common import LayerWeights, State, step_mask

MODES = ("rnn", "lstm", "gru")
BACKENDS = ("numba", "numba_scipy", "torch")
_DTYPES = (torch.float32, torch.float64)


def supports(mode: str, x: Tensor, weights: LayerWeights) -> bool:
    """Whether the fused engine handles this call (any device; float32 or float64)."""
    return (
        mode in MODES
        and x.dtype in _DTYPES
        and all(w is None or (w.dtype == x.dtype and w.device == x.device) for w in weights)
    )


def default_backend(x: Tensor) -> str:
    """``numba`` for CPU tensors when Numba is usable, otherwise ``torch``."""
    if x.device.type == "cpu" and _numba_kernels() is not None:
        return "numba"
    return "torch"


def run(
    mode: str,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: Tensor | None = None,
    nonlinearity: str = "tanh",
    *,
    backend: str | None = None,
) -> tuple[Tensor, State]:
    """Run one direction of one layer over a whole sequence; same contract as the reference engine.

    Shapes: ``x`` ``(T, B, I)``; ``state`` ``(h0,)`` or ``(h0, c0)``, each ``(B, H)``;
    ``lengths`` ``(B,)`` int64 or ``None``. Returns ``output`` ``(T, B, H)`` (zero past each
    sequence's end) and the state at each sequence's last valid step.
    ``backend`` forces one of :data:`BACKENDS` (tests); ``None`` picks :func:`default_backend`.
    """
    if mode not in MODES:
        raise ValueError(f"fused engine: mode must be one of {MODES}, got {mode!r}")
    if not supports(mode, x, weights):
        raise TypeError(
            f"fused engine: expected float32/float64 tensors on one device, got {x.dtype} on {x.device}"
        )
    backend = backend or default_backend(x)
    if backend not in BACKENDS:
        raise ValueError(f"fused engine: backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "torch" and x.device.type != "cpu":
        raise ValueError(f"fused engine: backend {backend!r} runs on the CPU only, got {x.device}")
    loops = _TorchLoops() if backend == "torch" else _NumbaLoops(vendor=backend == "numba")
    if lengths is not None:
        lengths = lengths.to("cpu", torch.int64)
    w_ih, w_hh, b_ih, b_hh = weights
    if mode == "lstm":
        out, h_n, c_n = _LSTMFunction.apply(loops, x, state[0], state[1], w_ih, w_hh, b_ih, b_hh, lengths)
        return out, (h_n, c_n)
    if mode == "gru":
        out, h_n = _GRUFunction.apply(loops, x, state[0], w_ih, w_hh, b_ih, b_hh, lengths)
        return out, (h_n,)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"fused engine: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    out, h_n = _RNNFunction.apply(loops, x, state[0], w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity == "relu")
    return out, (h_n,)


# --- the three Functions -------------------------------------------------------------------------


def _input_projection(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """All steps' ``x W_ih^T + bias`` as one product; a fresh ``(T, B, G)`` tensor the loop may overwrite."""
    T, B, I = x.shape
    x2d = x.reshape(T * B, I)  # (T*B, I)
    gx = torch.mm(x2d, w_ih.t()) if bias is None else torch.addmm(bias, x2d, w_ih.t())
    return gx.view(T, B, -1)  # (T, B, G)


def _add_optional(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


_SCRATCH = threading.local()


def _scratch(tag: str, like: Tensor) -> Tensor:
    """A reusable uninitialised buffer shaped like ``like``, for temporaries of the backward.

    Freshly allocated multi-megabyte tensors come straight from the OS, and the first write to
    each page faults: ~8 ms for 32 MiB on the benchmark machine, 2-9 % of an LSTM training step.
    The backward's temporaries (gate gradients, a contiguous copy of the output gradient) never
    leave it, so each thread keeps the last one per ``tag`` and reuses it when the shape matches.
    This holds one layer's worth of gate gradients between calls, as cuDNN's workspace does.
    """
    cache = _SCRATCH.__dict__
    buf = cache.get(tag)
    if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = torch.empty_like(like, memory_format=torch.contiguous_format)
        cache[tag] = buf
    return buf


def _contiguous(tag: str, t: Tensor) -> Tensor:
    """``t`` if contiguous, else a copy in a reusable buffer (see :func:`_scratch`)."""
    return t if t.is_contiguous() else _scratch(tag, t).copy_(t)


def _fresh(t: Tensor) -> Tensor:
    """A contiguous copy the loops may write into (never write into autograd's tensors)."""
    return t.detach().clone(memory_format=torch.contiguous_format)


def _parameter_grads(
    ctx: Any,
    x: Tensor,
    h0: Tensor,
    out: Tensor,
    w_ih: Tensor,
    dgx: Tensor,
    dgh: Tensor,
    db: Tensor | None = None,
) -> tuple[Tensor | None, ...]:
    """``dx, dW_ih, dW_hh, db_ih, db_hh`` from the gate-gradients of the input and hidden sides.

    Shapes: ``dgx``, ``dgh`` ``(T, B, G)``; each is one product over all ``T*B`` rows. ``db``
    ``(G,)``: the sum of ``dgx`` over all rows if the loop already computed it.
    ``dW_hh = sum_t dgh[t]^T h_{t-1}`` with ``h_{t-1}`` = ``out[t-1]`` (``h0`` at ``t = 0``):
    past a sequence's end ``out`` is zero, not the frozen state, but those steps have zero
    ``dgh``, so they add nothing.
    """
    T, B, I = x.shape
    G = dgx.shape[2]
    H = out.shape[2]
    need = ctx.needs_input_grad  # (loops, x, [h0, c0,] w_ih, w_hh, b_ih, b_hh, lengths, ...)
    k = ctx.first_weight_index
    dgx2d = dgx.view(T * B, G)  # (T*B, G)
    dgh2d = dgh.view(T * B, G)  # (T*B, G)
    dx = torch.mm(dgx2d, w_ih).view(T, B, I) if need[1] else None
    dw_ih = torch.mm(dgx2d.t(), x.reshape(T * B, I)) if need[k] else None
    dw_hh = None
    if need[k + 1]:  # steps 1.. against out[:-1] in one product, step 0 against h0: no shifted copy
        dw_hh = torch.mm(dgh2d[B:].t(), out[:-1].reshape((T - 1) * B, H))
        dw_hh.addmm_(dgh2d[:B].t(), h0.to(dgh2d.dtype))
    db_ih = db_hh = None
    shared = dgh is dgx  # both biases add to the same pre-activation: one sum serves both
    if need[k + 2] or (need[k + 3] and shared):
        db_x = db if db is not None else dgx2d.sum(0)
        db_ih = db_x if need[k + 2] else None
        if need[k + 3] and shared:
            db_hh = db_x.clone() if db_ih is not None else db_x
    if need[k + 3] and not shared:
        db_hh = dgh2d.sum(0)
    return dx, dw_ih, dw_hh, db_ih, db_hh


def _unit_blocks(H: int, blocks: int) -> list[tuple[int, int]]:
    """The ``blocks`` ranges ``[lo, hi)`` the hidden units are cut into (``_block`` in
    :mod:`._numba_kernels`); in the blocked gate layout block ``k`` holds rows ``[gates * lo,
    gates * hi)``."""
    return [(H * k // blocks, H * (k + 1) // blocks) for k in range(blocks)]


def _blocked_order(H: int, gates: int, blocks: int) -> Tensor:
    """Row order of the blocked gate layout (see :mod:`._numba_kernels`): ``W[order]`` is ``W`` blocked.

    Hidden units are cut into ``blocks`` ranges; block ``k`` lists the rows of each gate for its
    units, gate after gate. ``blocks == 1`` is the identity.
    """
    order = []
    for lo, hi in _unit_blocks(H, blocks):
        for q in range(gates):
            order.extend(range(q * H + lo, q * H + hi))
    return torch.tensor(order, dtype=torch.long)


class _LSTMFunction(Function):
    @staticmethod
    def forward(ctx, loops, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        bias = _add_optional(b_ih, b_hh)
        # Threads that split the hidden units want each one's gate columns contiguous: reorder
        # the gate rows of the weights once here, and the weight gradients back in the backward.
        blocks = loops.lstm_blocks(T, B, H)
        order = _blocked_order(H, 4, blocks).to(x.device) if blocks > 1 else None
        if order is not None:
            w_ih, w_hh = w_ih.index_select(0, order), w_hh.index_select(0, order)
            bias = bias.index_select(0, order) if bias is not None else None
        # (T, B, 4H), blocked. The loop adds the bias as it reads each row: addmm would first
        # broadcast it into all T*B rows and make the product read them back.
        act = _input_projection(x, w_ih, None)
        bias = bias.detach().contiguous() if bias is not None else x.new_zeros(4 * H)
        c_seq = x.new_empty(T + 1, B, H)  # c_seq[t + 1] is the cell state after step t
        c_seq[0] = c0
        tanh_c = x.new_empty(T, B, H)
        out = x.new_empty(T, B, H)
        h = _fresh(h0)
        w_hh = w_hh.contiguous()
        loops.lstm_forward(act, w_hh, bias, h, c_seq, tanh_c, out, lengths, blocks)
        ctx.save_for_backward(x, h0, w_ih, w_hh, act, c_seq, tanh_c, out)
        ctx.loops, ctx.lengths, ctx.first_weight_index = loops, lengths, 4
        ctx.blocks, ctx.order = blocks, order
        return out, h, c_seq[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h, d_c):
        x, h0, w_ih, w_hh, act, c_seq, tanh_c, out = ctx.saved_tensors  # weights blocked
        dgates = _scratch("dgates", act)  # (T, B, 4H), blocked
        dh, dc = _fresh(d_h), _fresh(d_c)
        db = ctx.loops.lstm_backward(
            act, c_seq, tanh_c, w_hh, _contiguous("d_out", d_out), dh, dc, dgates, ctx.lengths, ctx.blocks
        )  # the bias gradient too, or None
        dx, *rest = _parameter_grads(ctx, x, h0, out, w_ih, dgates, dgates, db)
        if ctx.order is not None:  # weight gradients back to torch's [i | f | g | o] rows
            inverse = torch.argsort(ctx.order)
            rest = [g.index_select(0, inverse) if g is not None else None for g in rest]
        return None, dx, dh, dc, *rest, None


class _GRUFunction(Function):
    @staticmethod
    def forward(ctx, loops, x, h0, w_ih, w_hh, b_ih, b_hh, lengths):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        act = _input_projection(x, w_ih, b_ih)  # (T, B, 3H)
        gh_n = x.new_empty(T, B, H)
        out = x.new_empty(T, B, H)
        h = _fresh(h0)
        bias_hh = b_hh.detach().contiguous() if b_hh is not None else x.new_zeros(3 * H)
        loops.gru_forward(act, w_hh.contiguous(), bias_hh, h, gh_n, out, lengths)
        ctx.save_for_backward(x, h0, w_ih, w_hh, act, gh_n, out)
        ctx.loops, ctx.lengths, ctx.first_weight_index = loops, lengths, 3
        return out, h

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h):
        x, h0, w_ih, w_hh, act, gh_n, out = ctx.saved_tensors
        dgx, dgh = _scratch("dgates", act), _scratch("dgates_h", act)  # (T, B, 3H) each
        dh = _fresh(d_h)
        h0c = h0.detach().contiguous()
        ctx.loops.gru_backward(
            act, gh_n, out, h0c, w_hh.contiguous(), _contiguous("d_out", d_out), dh, dgx, dgh, ctx.lengths
        )
        dx, *rest = _parameter_grads(ctx, x, h0, out, w_ih, dgx, dgh)
        return None, dx, dh, *rest, None


class _RNNFunction(Function):
    @staticmethod
    def forward(ctx, loops, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, relu):
        out = _input_projection(x, w_ih, _add_optional(b_ih, b_hh))  # (T, B, H), pre-activation for now
        h = _fresh(h0)
        loops.rnn_forward(out, w_hh.contiguous(), h, lengths, relu)
        ctx.save_for_backward(x, h0, w_ih, w_hh, out)
        ctx.loops, ctx.lengths, ctx.relu, ctx.first_weight_index = loops, lengths, relu, 3
        return out, h

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h):
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        dpre = _scratch("dgates", out)  # (T, B, H)
        dh = _fresh(d_h)
        d_out = _contiguous("d_out", d_out)
        ctx.loops.rnn_backward(out, w_hh.contiguous(), d_out, dh, dpre, ctx.lengths, ctx.relu)
        dx, *rest = _parameter_grads(ctx, x, h0, out, w_ih, dpre, dpre)
        return None, dx, dh, *rest, None, None


# --- time loops: compiled (Numba) --------------------------------------------------------------


@functools.cache
def _numba_kernels():
    """The compiled kernels module, or ``None`` if Numba is unavailable (imported lazily: ~0.5 s)."""
    try:
        from . import _numba_kernels as kernels
    except ImportError:
        return None
    return kernels


#: Per-step products below this many multiply-adds run on one BLAS thread when the loop runs on
#: one thread: a per-step thread synchronisation inside BLAS costs more than it saves there.
_SINGLE_THREAD_BELOW = 100_000
#: The LSTM splits its hidden units across threads (a barrier per step, and each step every thread
#: reads the units the others wrote) when a step's recurrent product has at least this many
#: multiply-adds and either the batch is too small to split or ``H >= _LSTM_UNITS_FROM_H``; each
#: thread then gets at least ``_LSTM_MIN_UNITS_PER_THREAD`` units. Splitting the batch shares
#: nothing, but each thread's product then has fewer rows and streams all of ``W_hh``. On a
#: 2-core AMD EPYC VM the LSTM loops at (64, 64, 512, 512) took 7 % less time split by units;
#: at (16, 256, 128, 128) the two were even, and in some processes cross-core traffic made the
#: unit split up to 35 % slower. On a 2-core Intel Xeon VM, with the forward's products reading
#: ``W_hh`` transposed, the batch split was 3-10 % faster at ``H`` = 256 (B = 8-64, training
#: steps), 3 % faster at (64, 64, 512, 512) and 5 % slower at (32, 64, 512, 512); so ``H`` under
#: 512 splits the batch. ``None``: never split units.
#: A call split by units also reorders the weights (and their gradients back) and wakes the
#: thread team, about 1-2 ms a call at ``H`` = 256-1024 on the Xeon VM: one sequence (``B`` = 1)
#: ran 1.15-8.9x slower split by units than on one thread with BLAS's own threads (``T`` = 1 to
#: 128; at ``T`` = 1, a generated token, 2.0 against 0.4 ms at ``H`` = 256), and ``B`` = 2-3
#: 1.2-1.5x slower at ``T`` = 16-64 (``H`` = 256-512), 0.84-0.91x at ``T`` = 128. So where the
#: batch is too small to split, units split only from ``B`` = 2 and ``_LSTM_UNITS_MIN_STEPS``
#: steps, else the loop runs on one thread. Where the batch splits, against that split at ``B``
#: = 32, ``H`` = 512: 2.4x slower at ``T`` = 1 (a decoder's step), 1.7x at 8, even from 32
#: (0.96-1.04, forward alone and training): units split from ``_LSTM_UNITS_MIN_STEPS_BATCHED``.
_LSTM_SPLIT_UNITS_ABOVE: int | None = 100_000
_LSTM_UNITS_FROM_H = 512
_LSTM_MIN_UNITS_PER_THREAD = 16
_LSTM_UNITS_MIN_STEPS = 128
_LSTM_UNITS_MIN_STEPS_BATCHED = 32
#: Cut the batch into per-thread ranges (GRU, RNN, the LSTM unless split by units) when a call's
#: recurrent products have at least this many multiply-adds (``T * B * G * H``) and each thread
#: gets at least ``_MIN_ROWS_PER_THREAD`` sequences. ``None``: never. Waking the thread team costs
#: about 0.2 ms a call on the 2-core Xeon VM: a decoder's single steps (``T`` = 1, ``B`` = 8-32,
#: ``H`` = 128-256, 2-8 M multiply-adds) ran 1.3-1.7x slower split, small training calls (8-17 M)
#: 1.0-1.4x slower; from about 25 M the split was even or faster (0.73-0.95 at 34-268 M).
_BATCH_SPLIT_FROM_MACS: int | None = 20_000_000
_MIN_ROWS_PER_THREAD = 2
#: The forward kernels read ``W_hh`` transposed once per call (``transpose_rows``) when ``B >= 2``
#: and ``T * B`` is at least this: the copy costs about what ~100 rows' products gain.
_TRANSPOSED_FROM_ROWS = 128


#: (kernel, argument types) already compiled for a team run (see ``_on_team``).
_COMPILED: set = set()


def _type_key(a: Any) -> tuple:
    """What Numba's type for ``a`` depends on, cheaply: dtype, rank and C-contiguity of arrays."""
    if hasattr(a, "dtype") and hasattr(a, "ndim"):
        return (a.dtype, a.ndim, a.flags.c_contiguous)
    return (type(a),)


class _NumbaLoops:
    """Adapts tensors to the kernels: zero-copy ``numpy()`` views of contiguous CPU tensors.

    Multi-threading runs the kernels on torch's own OpenMP team (:mod:`._team`), for calls with
    the work to pay for waking it: the LSTM at ``H >= 512`` (or with too few sequences to share
    out, over enough steps) splits its hidden units across threads (a barrier per step); else it,
    GRU and RNN split the batch (sequences never interact, so no synchronisation at all); else
    one thread runs the loop (see the constants above). Inside the team BLAS runs
    single-threaded. The forward kernels get ``W_hh`` transposed per thread block where that
    pays (:meth:`_transposed`).
    """

    def __init__(self, vendor: bool) -> None:
        self.kernels = _numba_kernels()
        if self.kernels is None:
            raise RuntimeError("fused engine: the numba backend needs numba (pip install numba)")
        self.vendor = vendor and self.kernels.HAVE_VENDOR_BLAS
        from . import _team

        self.team = _team

    @staticmethod
    def _np(*tensors: Tensor):
        return [t.detach().numpy() for t in tensors]

    @staticmethod
    def _lengths(lengths: Tensor | None, seq: Tensor):
        T, B = seq.shape[:2]
        if lengths is None:
            return torch.full((B,), T, dtype=torch.int64).numpy()
        return lengths.contiguous().numpy()

    def lstm_blocks(self, T: int, B: int, H: int) -> int:
        """Into how many blocks of hidden units to cut the LSTM (one per thread, or 1: torch's layout)."""
        if _LSTM_SPLIT_UNITS_ABOVE is None or B * 4 * H * H < _LSTM_SPLIT_UNITS_ABOVE:
            return 1
        threads = self.team.team_size()
        if B >= _MIN_ROWS_PER_THREAD * threads:
            if H < _LSTM_UNITS_FROM_H or T < _LSTM_UNITS_MIN_STEPS_BATCHED:
                return 1  # the batch split (see ``_lstm``) is faster here
        elif B < 2 or T < _LSTM_UNITS_MIN_STEPS:
            return 1  # one thread: the split's cost per call would not pay
        return max(1, min(threads, H // _LSTM_MIN_UNITS_PER_THREAD))

    @staticmethod
    def _work(seq: Tensor, w: Tensor) -> tuple[int, int, int]:
        """``B`` and the multiply-adds of one step's recurrent product and of all ``T`` steps' for
        ``seq`` ``(T, B, *)`` and the recurrent weight ``w`` (``G x H`` either way round):
        ``B * G * H`` and ``T`` times that."""
        T, B = seq.shape[:2]
        return B, B * w.numel(), T * B * w.numel()

    def _single(self, kernel, args: tuple, step_macs: int) -> None:
        """The whole loop on the calling thread; BLAS single-threaded for small per-step products."""
        threads = 1 if step_macs < _SINGLE_THREAD_BELOW else 0  # 0: torch's global setting
        previous = self.kernels.set_blas_threads_local(threads) if self.vendor else None
        try:
            kernel(*args)
        finally:
            if previous is not None:
                self.kernels.set_blas_threads_local(previous)

    def _on_team(self, kernel, args: tuple, threads: int, part_args) -> None:
        """``kernel(*args, *part_args(part, parts))`` on each thread of torch's OpenMP team.

        Compiles first, on this thread: nothing may fail inside the region while another thread
        waits at a barrier.
        """
        probe = (*args, *part_args(0, threads))
        key = (kernel, *(_type_key(a) for a in probe))
        if key not in _COMPILED:  # numba.typeof on every argument costs ~90 us a call: once per key
            import numba

            kernel.compile(tuple(numba.typeof(a) for a in probe))
            _COMPILED.add(key)

        def work(part: int, parts: int) -> None:
            previous = self.kernels.set_blas_threads_local(1) if self.vendor else None
            try:
                kernel(*args, *part_args(part, parts))
            finally:
                if previous is not None:
                    self.kernels.set_blas_threads_local(previous)

        self.team.run(work, threads)

    def _lstm(self, kernel, args: tuple, B: int, blocks: int, step_macs: int, call_macs: int, dbias) -> None:
        """Run an LSTM kernel: ``blocks`` threads each owning a block of hidden units, or else as
        :meth:`_batch_split` (torch's gate layout, all units per thread). ``dbias`` (backward only,
        else None): one row of bias-gradient sums per thread, passed before the thread's range."""

        def own(part: int) -> tuple:
            return () if dbias is None else (dbias[part],)

        if blocks > 1:
            self._on_team(
                kernel, args, blocks, lambda part, parts: (*own(part), 0, B, blocks, part, parts, self.vendor)
            )
            return
        self._batch_split(kernel, args, B, step_macs, call_macs, before=own, after=(1, 0, 1))

    def _batch_split(
        self,
        kernel,
        args: tuple,
        B: int,
        step_macs: int,
        call_macs: int,
        before=lambda part: (),
        after: tuple = (),
    ) -> None:
        """Run ``kernel(*args, *before(part), b_lo, b_hi, *after, vendor)``, cutting the batch into
        per-thread ranges when worthwhile (sequences never interact), else on one thread.

        ``step_macs``, ``call_macs``: multiply-adds of one step's recurrent product (``B * G *
        H``) and of the call's (``T`` times that).
        """
        threads = min(self.team.team_size(), B // _MIN_ROWS_PER_THREAD)
        if _BATCH_SPLIT_FROM_MACS is None or call_macs < _BATCH_SPLIT_FROM_MACS or threads <= 1:
            self._single(kernel, (*args, *before(0), 0, B, *after, self.vendor), step_macs)
            return

        def part_args(part: int, parts: int) -> tuple:
            return *before(part), B * part // parts, B * (part + 1) // parts, *after, self.vendor

        self._on_team(kernel, args, threads, part_args)

    def _transposed(self, seq: Tensor, w_hh: Tensor, bounds: list[tuple[int, int]]) -> Tensor:
        """``w_hh``'s row ranges ``bounds`` transposed for the forward's products (the kernels'
        ``w_t``), or empty: where one sequence runs (a vector product, no BLAS) or too few rows
        pay for the copy (a 1 MiB weight takes ~80 us; each step's product gains 5-25 %)."""
        T, B = seq.shape[:2]
        if not self.vendor or B < 2 or T * B < _TRANSPOSED_FROM_ROWS:
            return w_hh.new_empty(0)
        return self.kernels.transpose_rows(w_hh, bounds)

    def lstm_forward(self, act, w_hh, bias, h, c_seq, tanh_c, out, lengths, blocks):
        hbuf = h.new_empty(2, *h.shape)  # (2, B, H): each step reads one, writes the other
        hbuf[0] = h
        H = w_hh.shape[1]
        bounds = [(4 * lo, 4 * hi) for lo, hi in _unit_blocks(H, blocks)]
        arrays = self._np(act, w_hh, self._transposed(act, w_hh, bounds), bias, hbuf, c_seq, tanh_c, out)
        B, step_macs, call_macs = self._work(act, w_hh)
        args = (*arrays, self._lengths(lengths, act))
        self._lstm(self.kernels.lstm_forward, args, B, blocks, step_macs, call_macs, None)
        h.copy_(hbuf[act.shape[0] % 2])

    def lstm_backward(self, act, c_seq, tanh_c, w_hh, dout, dh, dc, dgates, lengths, blocks) -> Tensor:
        """Fills ``dgates``, ``dh``, ``dc``; returns the bias gradient ``(4H,)``."""
        arrays = self._np(act, c_seq, tanh_c, w_hh, dout, dh, dc, dgates)
        dbias = act.new_zeros(max(1, self.team.team_size()), act.shape[2])  # one row per thread
        B, step_macs, call_macs = self._work(act, w_hh)
        args = (*arrays, self._lengths(lengths, act))
        self._lstm(self.kernels.lstm_backward, args, B, blocks, step_macs, call_macs, dbias.numpy())
        return dbias.sum(0)

    def gru_forward(self, act, w_hh, b_hh, h, gh_n, out, lengths):
        arrays = self._np(act, w_hh, self._transposed(act, w_hh, [(0, w_hh.shape[0])]), b_hh, h, gh_n, out)
        self._batch_split(
            self.kernels.gru_forward, (*arrays, self._lengths(lengths, act)), *self._work(act, w_hh)
        )

    def gru_backward(self, act, gh_n, out, h0, w_hh, dout, dh, dgx, dgh, lengths):
        arrays = self._np(act, gh_n, out, h0, w_hh, dout, dh, dgx, dgh)
        self._batch_split(
            self.kernels.gru_backward, (*arrays, self._lengths(lengths, act)), *self._work(act, w_hh)
        )

    def rnn_forward(self, out, w_hh, h, lengths, relu):
        arrays = self._np(out, w_hh, self._transposed(out, w_hh, [(0, w_hh.shape[0])]), h)
        self._batch_split(
            self.kernels.rnn_forward, (*arrays, self._lengths(lengths, out), relu), *self._work(out, w_hh)
        )

    def rnn_backward(self, out, w_hh, dout, dh, dpre, lengths, relu):
        arrays = self._np(out, w_hh, dout, dh, dpre)
        self._batch_split(
            self.kernels.rnn_backward, (*arrays, self._lengths(lengths, out), relu), *self._work(out, w_hh)
        )


# --- time loops: tensor ops (any device) -------------------------------------------------------


class _TorchLoops:
    """The same loops as the kernels, one batched tensor op at a time; the readable twin.

    ``mask[t]`` ``(B, 1)`` is true where sequence ``b`` is still running at step ``t``.
    """

    @staticmethod
    def _mask(lengths: Tensor | None, x: Tensor) -> Tensor | None:
        return step_mask(lengths, x.shape[0], x.device)  # (T, B, 1) or None

    @staticmethod
    def lstm_blocks(T: int, B: int, H: int) -> int:
        return 1  # one thread: torch's own gate layout

    def lstm_forward(self, act, w_hh, bias, h, c_seq, tanh_c, out, lengths, blocks=1):
        mask = self._mask(lengths, act)
        for t in range(act.shape[0]):
            gates = act[t].addmm_(h, w_hh.t()).add_(bias)  # (B, 4H), pre-activation, in place
            i, f, g, o = gates.chunk(4, dim=1)
            i.sigmoid_(), f.sigmoid_(), g.tanh_(), o.sigmoid_()  # act[t] now holds activations
            c = torch.addcmul(f * c_seq[t], i, g)
            h_new = o * torch.tanh(c, out=tanh_c[t])
            if mask is not None:
                c = torch.where(mask[t], c, c_seq[t])
                h_new = torch.where(mask[t], h_new, h)
                out[t] = torch.where(mask[t], h_new, 0.0)
            else:
                out[t] = h_new
            c_seq[t + 1] = c
            h.copy_(h_new)

    def lstm_backward(self, act, c_seq, tanh_c, w_hh, dout, dh, dc, dgates, lengths, blocks=1) -> None:
        """Fills ``dgates``, ``dh``, ``dc``; the bias gradient is left to a sum over ``dgates``."""
        mask = self._mask(lengths, act)
        for t in range(act.shape[0] - 1, -1, -1):
            i, f, g, o = act[t].chunk(4, dim=1)  # each (B, H)
            di, df, dg, do = dgates[t].chunk(4, dim=1)
            tc = tanh_c[t]
            dh_t = dh + dout[t]
            dc_t = dc + dh_t * o * (1 - tc * tc)
            torch.mul(dc_t * g, i * (1 - i), out=di)
            torch.mul(dc_t * c_seq[t], f * (1 - f), out=df)
            torch.mul(dc_t * i, 1 - g * g, out=dg)
            torch.mul(dh_t * tc, o * (1 - o), out=do)
            if mask is not None:
                dgates[t].mul_(mask[t])
                dc.copy_(torch.where(mask[t], dc_t * f, dc))
                dh.copy_(torch.where(mask[t], dgates[t] @ w_hh, dh))
            else:
                dc.copy_(dc_t * f)
                torch.mm(dgates[t], w_hh, out=dh)

    def gru_forward(self, act, w_hh, b_hh, h, gh_n, out, lengths):
        mask = self._mask(lengths, act)
        for t in range(act.shape[0]):
            gh = torch.addmm(b_hh, h, w_hh.t())  # (B, 3H)
            xr, xz, xn = act[t].chunk(3, dim=1)
            hr, hz, hn = gh.chunk(3, dim=1)
            r = torch.sigmoid(xr + hr, out=xr)  # act[t] becomes r, z, n
            z = torch.sigmoid(xz + hz, out=xz)
            n = torch.tanh(xn + r * hn, out=xn)
            gh_n[t] = hn
            h_new = n + z * (h - n)
            if mask is not None:
                h_new = torch.where(mask[t], h_new, h)
                out[t] = torch.where(mask[t], h_new, 0.0)
            else:
                out[t] = h_new
            h.copy_(h_new)

    def gru_backward(self, act, gh_n, out, h0, w_hh, dout, dh, dgx, dgh, lengths):
        mask = self._mask(lengths, act)
        for t in range(act.shape[0] - 1, -1, -1):
            r, z, n = act[t].chunk(3, dim=1)  # each (B, H)
            h_prev = h0 if t == 0 else out[t - 1]
            dh_t = dh + dout[t]
            dn = dh_t * (1 - z) * (1 - n * n)
            dz = dh_t * (h_prev - n) * z * (1 - z)
            dr = dn * gh_n[t] * r * (1 - r)
            torch.cat([dr, dz, dn], dim=1, out=dgx[t])
            torch.cat([dr, dz, dn * r], dim=1, out=dgh[t])
            dh_new = torch.addmm(dh_t * z, dgh[t], w_hh)
            if mask is not None:
                dgx[t].mul_(mask[t])
                dgh[t].mul_(mask[t])
                dh_new = torch.where(mask[t], dh_new, dh)
            dh.copy_(dh_new)

    def rnn_forward(self, out, w_hh, h, lengths, relu):
        mask = self._mask(lengths, out)
        for t in range(out.shape[0]):
            pre = out[t].addmm_(h, w_hh.t())  # (B, H)
            h_new = pre.relu_() if relu else pre.tanh_()
            if mask is not None:
                h.copy_(torch.where(mask[t], h_new, h))
                h_new.mul_(mask[t])
            else:
                h.copy_(h_new)

    def rnn_backward(self, out, w_hh, dout, dh, dpre, lengths, relu):
        mask = self._mask(lengths, out)
        for t in range(out.shape[0] - 1, -1, -1):
            y = out[t]
            slope = (y > 0).to(y.dtype) if relu else 1 - y * y
            torch.mul(dh + dout[t], slope, out=dpre[t])
            if mask is not None:
                dpre[t].mul_(mask[t])
                dh.copy_(torch.where(mask[t], dpre[t] @ w_hh, dh))
            else:
                torch.mm(dpre[t], w_hh, out=dh)
