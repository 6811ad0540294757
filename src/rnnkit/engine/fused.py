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
  per-step cost of ~15 tensor-op dispatches would otherwise dominate at small sizes. Per-step
  products use torch's BLAS threads when large enough (see ``_NumbaLoops._call``).
  ``"numba_scipy"`` is the same kernels with ``np.dot`` (SciPy's BLAS) instead of torch's BLAS.

``run`` picks ``numba`` on the CPU when Numba imports, else ``torch``; tests force each one.

Shapes: ``x`` ``(T, B, I)``; ``state`` ``(h0,)`` or ``(h0, c0)`` each ``(B, H)``; ``lengths``
``(B,)`` int64 on the CPU, values in ``[1, T]``, or ``None``. ``G`` = ``H``/``4H``/``3H`` for
RNN/LSTM/GRU.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
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


def _fresh(t: Tensor) -> Tensor:
    """A contiguous copy the loops may write into (never write into autograd's tensors)."""
    return t.detach().clone(memory_format=torch.contiguous_format)


def _shifted(h0: Tensor, out: Tensor) -> Tensor:
    """``h_prev`` ``(T, B, H)``: the state entering each step. Past a sequence's end ``out`` is zero,
    not the frozen state, but those steps have zero ``dgates`` so they add nothing to ``dW_hh``."""
    return torch.cat([h0.unsqueeze(0), out[:-1]])


def _parameter_grads(
    ctx: Any, x: Tensor, h0: Tensor, out: Tensor, w_ih: Tensor, dgx: Tensor, dgh: Tensor
) -> tuple[Tensor | None, ...]:
    """``dx, dW_ih, dW_hh, db_ih, db_hh`` from the gate-gradients of the input and hidden sides.

    Shapes: ``dgx``, ``dgh`` ``(T, B, G)``; each is one product over all ``T*B`` rows.
    """
    T, B, I = x.shape
    G = dgx.shape[2]
    need = ctx.needs_input_grad  # (loops, x, [h0, c0,] w_ih, w_hh, b_ih, b_hh, lengths, ...)
    k = ctx.first_weight_index
    dgx2d = dgx.view(T * B, G)  # (T*B, G)
    dgh2d = dgh.view(T * B, G)  # (T*B, G)
    dx = torch.mm(dgx2d, w_ih).view(T, B, I) if need[1] else None
    dw_ih = torch.mm(dgx2d.t(), x.reshape(T * B, I)) if need[k] else None
    dw_hh = None
    if need[k + 1]:
        h_prev = _shifted(h0, out).view(T * B, -1)  # (T*B, H)
        dw_hh = torch.mm(dgh2d.t(), h_prev)
    db_ih = dgx2d.sum(0) if need[k + 2] else None
    db_hh = None
    if need[k + 3]:  # the same sum as db_ih when both biases add to the same pre-activation
        db_hh = db_ih.clone() if db_ih is not None and dgh is dgx else dgh2d.sum(0)
    return dx, dw_ih, dw_hh, db_ih, db_hh


class _LSTMFunction(Function):
    @staticmethod
    def forward(ctx, loops, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        act = _input_projection(x, w_ih, _add_optional(b_ih, b_hh))  # (T, B, 4H)
        c_seq = x.new_empty(T + 1, B, H)  # c_seq[t + 1] is the cell state after step t
        c_seq[0] = c0
        tanh_c = x.new_empty(T, B, H)
        out = x.new_empty(T, B, H)
        h = _fresh(h0)
        loops.lstm_forward(act, w_hh.t().contiguous(), h, c_seq, tanh_c, out, lengths)
        ctx.save_for_backward(x, h0, w_ih, w_hh, act, c_seq, tanh_c, out)
        ctx.loops, ctx.lengths, ctx.first_weight_index = loops, lengths, 4
        return out, h, c_seq[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h, d_c):
        x, h0, w_ih, w_hh, act, c_seq, tanh_c, out = ctx.saved_tensors
        dgates = torch.empty_like(act)  # (T, B, 4H)
        dh, dc = _fresh(d_h), _fresh(d_c)
        w = w_hh.contiguous()
        ctx.loops.lstm_backward(act, c_seq, tanh_c, w, d_out.contiguous(), dh, dc, dgates, ctx.lengths)
        dx, *rest = _parameter_grads(ctx, x, h0, out, w_ih, dgates, dgates)
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
        loops.gru_forward(act, w_hh.t().contiguous(), bias_hh, h, gh_n, out, lengths)
        ctx.save_for_backward(x, h0, w_ih, w_hh, act, gh_n, out)
        ctx.loops, ctx.lengths, ctx.first_weight_index = loops, lengths, 3
        return out, h

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h):
        x, h0, w_ih, w_hh, act, gh_n, out = ctx.saved_tensors
        dgx, dgh = torch.empty_like(act), torch.empty_like(act)  # (T, B, 3H) each
        dh = _fresh(d_h)
        h0c = h0.detach().contiguous()
        ctx.loops.gru_backward(
            act, gh_n, out, h0c, w_hh.contiguous(), d_out.contiguous(), dh, dgx, dgh, ctx.lengths
        )
        dx, *rest = _parameter_grads(ctx, x, h0, out, w_ih, dgx, dgh)
        return None, dx, dh, *rest, None


class _RNNFunction(Function):
    @staticmethod
    def forward(ctx, loops, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, relu):
        out = _input_projection(x, w_ih, _add_optional(b_ih, b_hh))  # (T, B, H), pre-activation for now
        h = _fresh(h0)
        loops.rnn_forward(out, w_hh.t().contiguous(), h, lengths, relu)
        ctx.save_for_backward(x, h0, w_ih, w_hh, out)
        ctx.loops, ctx.lengths, ctx.relu, ctx.first_weight_index = loops, lengths, relu, 3
        return out, h

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h):
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        dpre = torch.empty_like(out)  # (T, B, H)
        dh = _fresh(d_h)
        ctx.loops.rnn_backward(out, w_hh.contiguous(), d_out.contiguous(), dh, dpre, ctx.lengths, ctx.relu)
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


#: Per-step products below this many multiply-adds run on one BLAS thread (see ``_NumbaLoops._call``):
#: a per-step thread synchronisation costs more than it saves there.
_SINGLE_THREAD_BELOW = 100_000
#: Split the batch across threads when the whole loop has at least this many multiply-adds.
#: Off (None) by default: on the 2-core benchmark machine torch's OpenMP workers keep spinning
#: after each parallel region and compete with our threads, so LSTM (16, 256, 128, 128) measured
#: 1.26x torch.nn split vs 1.02x unsplit with multi-threaded per-step BLAS. Kept (and tested) for
#: machines with more cores than torch uses.
_SPLIT_ABOVE: int | None = None


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """One pool per size, reused across calls; per process, as a forked child has no threads."""
    return _thread_pool_for(workers, os.getpid())


@functools.cache
def _thread_pool_for(workers: int, _pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rnnkit-fused")


class _NumbaLoops:
    """Adapts tensors to the kernels: zero-copy ``numpy()`` views of contiguous CPU tensors."""

    def __init__(self, vendor: bool) -> None:
        self.kernels = _numba_kernels()
        if self.kernels is None:
            raise RuntimeError("fused engine: the numba backend needs numba (pip install numba)")
        self.vendor = vendor and self.kernels.HAVE_VENDOR_BLAS

    @staticmethod
    def _np(*tensors: Tensor):
        return [t.detach().numpy() for t in tensors]

    @staticmethod
    def _lengths(lengths: Tensor | None, seq: Tensor):
        T, B = seq.shape[:2]
        if lengths is None:
            return torch.full((B,), T, dtype=torch.int64).numpy()
        return lengths.contiguous().numpy()

    def _call(self, kernel, seq: Tensor, w: Tensor, *args) -> None:
        """Run ``kernel(*args, b_lo, b_hi, vendor)`` over the batch, split across threads if worthwhile.

        Sequences never interact, so when ``_SPLIT_ABOVE`` allows it (off by default, see there) the
        batch is cut into ``torch.get_num_threads()`` ranges run concurrently (the kernels release
        the GIL), each with single-threaded BLAS. Unsplit, per-step products below
        ``_SINGLE_THREAD_BELOW`` multiply-adds run on one BLAS thread, larger ones on torch's.

        ``seq`` ``(T, B, *)`` and the recurrent weight ``w`` (``G x H`` either way round) size the
        work: ``B * G * H`` multiply-adds per step.
        """
        T, B = seq.shape[0], seq.shape[1]
        step_macs = B * w.numel()
        split = _SPLIT_ABOVE is not None and T * step_macs >= _SPLIT_ABOVE
        parts = min(torch.get_num_threads(), B) if split else 1
        if parts <= 1:
            threads = 1 if step_macs < _SINGLE_THREAD_BELOW else 0  # 0: torch's global setting
            self._run(kernel, args, 0, B, threads)
            return
        bounds = [B * k // parts for k in range(parts + 1)]
        pool = _thread_pool(parts - 1)
        futures = [pool.submit(self._run, kernel, args, bounds[k], bounds[k + 1], 1) for k in range(1, parts)]
        self._run(kernel, args, bounds[0], bounds[1], 1)
        for future in futures:
            future.result()

    def _run(self, kernel, args, b_lo: int, b_hi: int, blas_threads: int) -> None:
        previous = self.kernels.set_blas_threads_local(blas_threads) if self.vendor else None
        try:
            kernel(*args, b_lo, b_hi, self.vendor)
        finally:
            if previous is not None:
                self.kernels.set_blas_threads_local(previous)

    def lstm_forward(self, act, w_hh_t, h, c_seq, tanh_c, out, lengths):
        arrays = self._np(act, w_hh_t, h, c_seq, tanh_c, out)
        self._call(self.kernels.lstm_forward, act, w_hh_t, *arrays, self._lengths(lengths, act))

    def lstm_backward(self, act, c_seq, tanh_c, w_hh, dout, dh, dc, dgates, lengths):
        arrays = self._np(act, c_seq, tanh_c, w_hh, dout, dh, dc, dgates)
        self._call(self.kernels.lstm_backward, act, w_hh, *arrays, self._lengths(lengths, act))

    def gru_forward(self, act, w_hh_t, b_hh, h, gh_n, out, lengths):
        arrays = self._np(act, w_hh_t, b_hh, h, gh_n, out)
        self._call(self.kernels.gru_forward, act, w_hh_t, *arrays, self._lengths(lengths, act))

    def gru_backward(self, act, gh_n, out, h0, w_hh, dout, dh, dgx, dgh, lengths):
        arrays = self._np(act, gh_n, out, h0, w_hh, dout, dh, dgx, dgh)
        self._call(self.kernels.gru_backward, act, w_hh, *arrays, self._lengths(lengths, act))

    def rnn_forward(self, out, w_hh_t, h, lengths, relu):
        arrays = self._np(out, w_hh_t, h)
        self._call(self.kernels.rnn_forward, out, w_hh_t, *arrays, self._lengths(lengths, out), relu)

    def rnn_backward(self, out, w_hh, dout, dh, dpre, lengths, relu):
        arrays = self._np(out, w_hh, dout, dh, dpre)
        self._call(self.kernels.rnn_backward, out, w_hh, *arrays, self._lengths(lengths, out), relu)


# --- time loops: tensor ops (any device) -------------------------------------------------------


class _TorchLoops:
    """The same loops as the kernels, one batched tensor op at a time; the readable twin.

    ``mask[t]`` ``(B, 1)`` is true where sequence ``b`` is still running at step ``t``.
    """

    @staticmethod
    def _mask(lengths: Tensor | None, x: Tensor) -> Tensor | None:
        return step_mask(lengths, x.shape[0], x.device)  # (T, B, 1) or None

    def lstm_forward(self, act, w_hh_t, h, c_seq, tanh_c, out, lengths):
        mask = self._mask(lengths, act)
        for t in range(act.shape[0]):
            gates = act[t].addmm_(h, w_hh_t)  # (B, 4H), pre-activation, in place
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

    def lstm_backward(self, act, c_seq, tanh_c, w_hh, dout, dh, dc, dgates, lengths):
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

    def gru_forward(self, act, w_hh_t, b_hh, h, gh_n, out, lengths):
        mask = self._mask(lengths, act)
        for t in range(act.shape[0]):
            gh = torch.addmm(b_hh, h, w_hh_t)  # (B, 3H)
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

    def rnn_forward(self, out, w_hh_t, h, lengths, relu):
        mask = self._mask(lengths, out)
        for t in range(out.shape[0]):
            pre = out[t].addmm_(h, w_hh_t)  # (B, H)
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
