"""Numba kernels: the whole time loop of one direction, forward and backward, in one compiled call.

Private to :mod:`rnnkit.engine.fused`, which owns the input projection and the weight gradients
(each one large matrix product over all steps) and calls these for the part that must run step
by step: the recurrent product and the gate arithmetic. Each kernel mirrors a cell in
:mod:`rnnkit.cells` and its hand-derived backward; tests keep them equal to the reference engine.

Why it is fast:

- The per-step recurrent product calls the same BLAS ``?gemm_`` that torch itself uses (MKL,
  exported by ``libtorch_cpu``), resolved once through an LLVM symbol so the cached machine code
  stays valid across processes. Where torch does not export it, ``vendor=False`` makes the
  kernels use ``np.dot`` (SciPy's BLAS) instead; same code otherwise.
- Gate arithmetic is written as flat loops over contiguous rows that LLVM vectorises (AVX2). In
  float32, ``tanh`` (and ``sigmoid(x) = (1 + tanh(x/2)) / 2``) is a branch-free rational
  approximation (Eigen's ``generic_fast_tanh_float``, max abs error ~3e-7, i.e. float32 round-off),
  since libm's scalar ``tanhf`` call stops vectorisation and costs ~5 ns per element; float64
  uses ``math.tanh`` so gradcheck sees the exact function.
- ``error_model="numpy"`` drops Python's divide-by-zero check, which would also stop vectorisation.

Shapes: ``T`` time, ``B`` batch, ``H`` hidden, ``G`` gate width. All arrays are C-contiguous and
share one dtype (float32 or float64); ``lengths`` is ``(B,)`` int64 with values in ``[1, T]``
(pass ``T`` everywhere for "no lengths"). Each kernel handles the sequences ``b_lo:b_hi`` only:
sequences never interact, so callers run disjoint batch ranges on separate threads (the kernels
release the GIL) with no synchronisation inside the time loop. For ``t >= lengths[b]`` the state
of sequence ``b`` is frozen, its output is zero and no gradient flows through that step.
"""

from __future__ import annotations

import ctypes
import math
import os

import llvmlite.binding as llvm
import numpy as np
import torch
from numba import njit, types
from numba.extending import overload

# --- vendor BLAS ---------------------------------------------------------------------------------

_GEMM_ARGTYPES = [ctypes.c_void_p] * 13  # Fortran ?gemm_: every argument by pointer


def _register_vendor_gemm() -> bool:
    """Point the LLVM symbols ``rnnkit_sgemm``/``rnnkit_dgemm`` at torch's BLAS; True if found.

    If torch exports no ``sgemm_`` (e.g. a non-MKL build), register a stub instead so that the
    kernels still link; they are then always called with ``vendor=False`` and never reach it.
    """
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    found = {}
    for lib_name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "libtorch.so"):
        path = os.path.join(lib_dir, lib_name)
        if not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
            found = {
                name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in ("sgemm_", "dgemm_")
            }
            break
        except (OSError, AttributeError):
            continue
    if len(found) == 2:
        llvm.add_symbol("rnnkit_sgemm", found["sgemm_"])
        llvm.add_symbol("rnnkit_dgemm", found["dgemm_"])
        return True
    stub = ctypes.CFUNCTYPE(None, *_GEMM_ARGTYPES)(lambda *args: None)
    _STUBS.append(stub)  # keep the callback alive for the life of the process
    address = ctypes.cast(stub, ctypes.c_void_p).value
    llvm.add_symbol("rnnkit_sgemm", address)
    llvm.add_symbol("rnnkit_dgemm", address)
    return False


_STUBS: list = []
#: Whether the kernels can call torch's own BLAS (pass as ``vendor``).
HAVE_VENDOR_BLAS = _register_vendor_gemm()


def _find_thread_setter():
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        setter = lib.MKL_Set_Num_Threads_Local  # C interface, int by value
    except (OSError, AttributeError):
        return None
    setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
    return setter


_SET_THREADS_LOCAL = _find_thread_setter() if HAVE_VENDOR_BLAS else None


def set_blas_threads_local(n: int) -> int:
    """Threads the vendor BLAS may use on this thread (0: torch's global setting); returns the old value.

    The per-step products are small; splitting one across threads costs a synchronisation per
    step, which at small sizes costs more than it saves (and on a busy machine far more).
    """
    return _SET_THREADS_LOCAL(n) if _SET_THREADS_LOCAL is not None else 0


_ptr = types.intp  # pointers travel as integers: same registers as ``T*`` in the x86-64/arm64 ABIs
_sgemm = types.ExternalFunction("rnnkit_sgemm", types.void(*[_ptr] * 13))
_dgemm = types.ExternalFunction("rnnkit_dgemm", types.void(*[_ptr] * 13))


def _blas_gemm(scalars, ints, trans, a, b, out):  # pragma: no cover - replaced by the overload
    raise NotImplementedError


@overload(_blas_gemm, jit_options={"cache": True})
def _blas_gemm_impl(scalars, ints, trans, a, b, out):
    gemm = _sgemm if scalars.dtype == types.float32 else _dgemm

    def impl(scalars, ints, trans, a, b, out):
        # Row-major out (M, N) = a (M, K) @ b (K, N) is column-major out^T = b^T @ a^T.
        gemm(
            trans.ctypes.data,
            trans.ctypes.data,
            ints[0:].ctypes.data,  # N
            ints[1:].ctypes.data,  # M
            ints[2:].ctypes.data,  # K
            scalars[0:].ctypes.data,  # alpha
            b.ctypes.data,
            ints[0:].ctypes.data,  # ldb = N
            a.ctypes.data,
            ints[2:].ctypes.data,  # lda = K
            scalars[1:].ctypes.data,  # beta
            out.ctypes.data,
            ints[0:].ctypes.data,  # ldc = N
        )

    return impl


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _gemm(a, b, out, accumulate, vendor, scalars, ints, trans):
    """``out (M, N) = a (M, K) @ b (K, N)``, or ``+=`` if ``accumulate``; scratch in scalars/ints/trans."""
    if a.shape[0] == 1 and b.size <= 65536:
        # One sequence: a vector-matrix product, where BLAS call overhead is ~30% of the work.
        o = out[0]
        if not accumulate:
            o[:] = 0.0
        for k in range(a.shape[1]):
            a_k = a[0, k]
            b_k = b[k]
            for n in range(b.shape[1]):
                o[n] += a_k * b_k[n]
    elif vendor:
        ints[0] = b.shape[1]
        ints[1] = a.shape[0]
        ints[2] = a.shape[1]
        scalars[0] = 1.0
        scalars[1] = 1.0 if accumulate else 0.0
        _blas_gemm(scalars, ints, trans, a, b, out)
    elif accumulate:
        out += np.dot(a, b)
    else:
        out[:] = np.dot(a, b)


@njit(cache=True)
def _scratch(dtype_like):
    """Argument buffers for ``_gemm``: alpha/beta, N/M/K, and the transpose flag ``'N'``."""
    trans = np.empty(1, np.uint8)
    trans[0] = 78  # ord("N")
    return np.empty(2, dtype_like.dtype), np.empty(3, np.int32), trans


# --- activations ---------------------------------------------------------------------------------

# Fast-math without "nnan"/"ninf": NaN and inf must propagate as in torch (and the clamp in
# ``_tanh`` relies on comparisons with NaN being false).
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_JIT = dict(cache=True, fastmath=_FASTMATH, error_model="numpy", nogil=True)

_CLAMP = np.float32(7.90531110763549805)  # tanh(x) rounds to ±1 in float32 beyond this
_A1, _A3, _A5, _A7, _A9, _A11, _A13 = (
    np.float32(v)
    for v in (
        4.89352455891786e-03,
        6.37261928875436e-04,
        1.48572235717979e-05,
        5.12229709037114e-08,
        -8.60467152213735e-11,
        2.00018790482477e-13,
        -2.76076847742355e-16,
    )
)
_B0, _B2, _B4, _B6 = (
    np.float32(v)
    for v in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
)


def _tanh(x):  # pragma: no cover - replaced by the overload
    return math.tanh(x)


@overload(_tanh, jit_options={"cache": True, "fastmath": _FASTMATH, "error_model": "numpy"})
def _tanh_impl(x):
    if x != types.float32:
        return lambda x: math.tanh(x)

    def impl(x):
        # min/max written so that NaN passes through (a comparison with NaN is false).
        y = _CLAMP if x > _CLAMP else x
        y = -_CLAMP if y < -_CLAMP else y
        y2 = y * y
        p = y2 * _A13 + _A11
        p = p * y2 + _A9
        p = p * y2 + _A7
        p = p * y2 + _A5
        p = p * y2 + _A3
        p = p * y2 + _A1
        q = y2 * _B6 + _B4
        q = q * y2 + _B2
        q = q * y2 + _B0
        return p * y / q

    return impl


@njit(inline="always", cache=True)
def _constant(value, like):
    """``value`` in the dtype of array ``like`` (a bare literal would promote float32 math to float64)."""
    box = np.empty(1, like.dtype)
    box[0] = value
    return box[0]


@njit(**_JIT)
def _sigmoid(x, half):
    return half * _tanh(half * x) + half


# --- LSTM ----------------------------------------------------------------------------------------


@njit(**_JIT)
def lstm_forward(act, w_hh_t, h, c_seq, tanh_c, out, lengths, b_lo, b_hi, vendor):
    """LSTM over time, in place.

    In: ``act`` ``(T, B, 4H)`` holding ``x W_ih^T + b_ih + b_hh``; ``w_hh_t`` ``(H, 4H)``;
    ``h`` ``(B, H)`` holding ``h0``; ``c_seq[0]`` ``(B, H)`` holding ``c0``.
    Out: ``act`` = gate activations ``i, f, g, o``; ``c_seq`` ``(T+1, B, H)`` the cell states
    (frozen past each end); ``tanh_c`` ``(T, B, H)`` = ``tanh(c_t)``; ``out`` ``(T, B, H)``;
    ``h`` the final hidden state.
    """
    T, B, G = act.shape
    H = G // 4
    half = _constant(0.5, act)
    scalars, ints, trans = _scratch(act)
    for t in range(T):
        _gemm(h[b_lo:b_hi], w_hh_t, act[t, b_lo:b_hi], True, vendor, scalars, ints, trans)
        for b in range(b_lo, b_hi):
            c_prev = c_seq[t, b]
            c_next = c_seq[t + 1, b]
            out_row = out[t, b]
            if t >= lengths[b]:
                c_next[:] = c_prev
                out_row[:] = 0.0
                continue
            # Short loops touching one or two arrays each: LLVM vectorises these (one long loop
            # over all gates needs more runtime alias checks than it will emit, and stays scalar).
            row = act[t, b]
            for j in range(2 * H):
                row[j] = _sigmoid(row[j], half)  # i, f
            for j in range(2 * H, 3 * H):
                row[j] = _tanh(row[j])  # g
            for j in range(3 * H, G):
                row[j] = _sigmoid(row[j], half)  # o
            tc_row = tanh_c[t, b]
            for j in range(H):
                c = row[H + j] * c_prev[j] + row[j] * row[2 * H + j]
                c_next[j] = c
                tc_row[j] = _tanh(c)
            for j in range(H):
                out_row[j] = row[3 * H + j] * tc_row[j]
            h[b] = out_row


@njit(**_JIT)
def lstm_backward(act, c_seq, tanh_c, w_hh, dout, dh, dc, dgates, lengths, b_lo, b_hi, vendor):
    """Backward of :func:`lstm_forward`, last step to first.

    In: ``act``, ``c_seq``, ``tanh_c`` as saved; ``w_hh`` ``(4H, H)``; ``dout`` ``(T, B, H)``;
    ``dh``, ``dc`` ``(B, H)`` holding the gradients of the final state. Out: ``dgates``
    ``(T, B, 4H)``, the gradient of the gate pre-activations (zero past each end); ``dh``, ``dc``
    those of ``h0``, ``c0``.
    """
    T, B, G = act.shape
    H = G // 4
    one = _constant(1.0, act)
    scalars, ints, trans = _scratch(act)
    for t in range(T - 1, -1, -1):
        for b in range(b_lo, b_hi):
            drow = dgates[t, b]
            if t >= lengths[b]:
                drow[:] = 0.0  # frozen: dh, dc pass through; the product below adds zero
                continue
            row = act[t, b]
            tc = tanh_c[t, b]
            c_prev = c_seq[t, b]
            dh_row = dh[b]
            dc_row = dc[b]
            dout_row = dout[t, b]
            for j in range(H):
                dh_row[j] += dout_row[j]  # now the total gradient of h_t
            for j in range(H):
                dc_row[j] += dh_row[j] * row[3 * H + j] * (one - tc[j] * tc[j])
            for j in range(H):
                o = row[3 * H + j]
                drow[3 * H + j] = dh_row[j] * tc[j] * o * (one - o)
            for j in range(H):
                i = row[j]
                f = row[H + j]
                g = row[2 * H + j]
                drow[j] = dc_row[j] * g * i * (one - i)
                drow[H + j] = dc_row[j] * c_prev[j] * f * (one - f)
                drow[2 * H + j] = dc_row[j] * i * (one - g * g)
            for j in range(H):
                dc_row[j] *= row[H + j]
            dh_row[:] = 0.0  # refilled by the product below
        _gemm(dgates[t, b_lo:b_hi], w_hh, dh[b_lo:b_hi], True, vendor, scalars, ints, trans)


# --- GRU -----------------------------------------------------------------------------------------


@njit(**_JIT)
def gru_forward(act, w_hh_t, b_hh, h, gh_n, out, lengths, b_lo, b_hi, vendor):
    """GRU over time, in place.

    In: ``act`` ``(T, B, 3H)`` holding ``x W_ih^T + b_ih``; ``w_hh_t`` ``(H, 3H)``; ``b_hh``
    ``(3H,)`` (zeros for no bias); ``h`` ``(B, H)`` holding ``h0``.
    Out: ``act`` = gate activations ``r, z, n``; ``gh_n`` ``(T, B, H)`` = ``W_hn h + b_hn`` (the
    reset gate's operand, needed for its gradient); ``out`` ``(T, B, H)``; ``h`` the final state.
    """
    T, B, G = act.shape
    H = G // 3
    half = _constant(0.5, act)
    scalars, ints, trans = _scratch(act)
    gh = np.empty((B, G), act.dtype)  # rows b_lo:b_hi used
    for t in range(T):
        for b in range(b_lo, b_hi):
            gh[b] = b_hh
        _gemm(h[b_lo:b_hi], w_hh_t, gh[b_lo:b_hi], True, vendor, scalars, ints, trans)
        for b in range(b_lo, b_hi):
            out_row = out[t, b]
            if t >= lengths[b]:
                out_row[:] = 0.0
                continue
            # Short loops writing one or two arrays each, so that LLVM vectorises them.
            row = act[t, b]
            gh_row = gh[b]
            for j in range(2 * H):
                row[j] = _sigmoid(row[j] + gh_row[j], half)  # r, z
            ghn_row = gh_n[t, b]
            for j in range(H):
                ghn = gh_row[2 * H + j]
                ghn_row[j] = ghn
                row[2 * H + j] = _tanh(row[2 * H + j] + row[j] * ghn)  # n
            h_row = h[b]
            for j in range(H):
                n = row[2 * H + j]
                out_row[j] = n + row[H + j] * (h_row[j] - n)
            h_row[:] = out_row


@njit(**_JIT)
def gru_backward(act, gh_n, out, h0, w_hh, dout, dh, dgx, dgh, lengths, b_lo, b_hi, vendor):
    """Backward of :func:`gru_forward`, last step to first.

    In: ``act``, ``gh_n``, ``out`` as saved, ``h0`` ``(B, H)``; ``w_hh`` ``(3H, H)``; ``dout``
    ``(T, B, H)``; ``dh`` ``(B, H)`` holding the gradient of the final state.
    Out: ``dgx``, ``dgh`` ``(T, B, 3H)``: gradients of ``x W_ih^T + b_ih`` and ``h W_hh^T + b_hh``
    (they differ in the ``n`` block, where the reset gate scales the hidden side); ``dh`` that of ``h0``.
    """
    T, B, G = act.shape
    H = G // 3
    one = _constant(1.0, act)
    scalars, ints, trans = _scratch(act)
    for t in range(T - 1, -1, -1):
        for b in range(b_lo, b_hi):
            dx_row = dgx[t, b]
            dh_gates = dgh[t, b]
            if t >= lengths[b]:
                dx_row[:] = 0.0
                dh_gates[:] = 0.0
                continue
            row = act[t, b]
            dh_row = dh[b]
            dout_row = dout[t, b]
            for j in range(H):
                dh_row[j] += dout_row[j]  # now the total gradient of h_t
            ghn_row = gh_n[t, b]
            for j in range(H):
                r = row[j]
                z = row[H + j]
                n = row[2 * H + j]
                dn = dh_row[j] * (one - z) * (one - n * n)
                dr = dn * ghn_row[j] * r * (one - r)
                dx_row[j] = dr
                dx_row[2 * H + j] = dn
                dh_gates[j] = dr
                dh_gates[2 * H + j] = dn * r
            h_prev = h0[b] if t == 0 else out[t - 1, b]
            for j in range(H):
                z = row[H + j]
                dz = dh_row[j] * (h_prev[j] - row[2 * H + j]) * z * (one - z)
                dx_row[H + j] = dz
                dh_gates[H + j] = dz
            for j in range(H):
                dh_row[j] *= row[H + j]  # the direct path; the product below adds the rest
        _gemm(dgh[t, b_lo:b_hi], w_hh, dh[b_lo:b_hi], True, vendor, scalars, ints, trans)


# --- Elman RNN -----------------------------------------------------------------------------------


@njit(**_JIT)
def rnn_forward(out, w_hh_t, h, lengths, relu, b_lo, b_hi, vendor):
    """Elman RNN over time, in place.

    In: ``out`` ``(T, B, H)`` holding ``x W_ih^T + b_ih + b_hh``; ``w_hh_t`` ``(H, H)``; ``h``
    ``(B, H)`` holding ``h0``. Out: ``out`` the outputs (zero past each end), ``h`` the final state.
    """
    T, B, H = out.shape
    zero = _constant(0.0, out)
    scalars, ints, trans = _scratch(out)
    for t in range(T):
        pre = out[t]
        _gemm(h[b_lo:b_hi], w_hh_t, pre[b_lo:b_hi], True, vendor, scalars, ints, trans)
        for b in range(b_lo, b_hi):
            row = pre[b]
            h_row = h[b]
            if t < lengths[b]:
                if relu:
                    for j in range(H):
                        v = row[j] if row[j] > zero else zero
                        row[j] = v
                        h_row[j] = v
                else:
                    for j in range(H):
                        v = _tanh(row[j])
                        row[j] = v
                        h_row[j] = v
            else:
                row[:] = 0.0


@njit(**_JIT)
def rnn_backward(out, w_hh, dout, dh, dpre, lengths, relu, b_lo, b_hi, vendor):
    """Backward of :func:`rnn_forward`.

    Out: ``dpre`` ``(T, B, H)``, the gradient of the pre-activation; ``dh`` that of ``h0``.
    """
    T, B, H = out.shape
    one = _constant(1.0, out)
    zero = _constant(0.0, out)
    scalars, ints, trans = _scratch(out)
    for t in range(T - 1, -1, -1):
        for b in range(b_lo, b_hi):
            drow = dpre[t, b]
            if t < lengths[b]:
                y = out[t, b]
                dout_row = dout[t, b]
                dh_row = dh[b]
                if relu:
                    for j in range(H):
                        drow[j] = (dh_row[j] + dout_row[j]) if y[j] > zero else zero
                        dh_row[j] = 0.0
                else:
                    for j in range(H):
                        drow[j] = (dh_row[j] + dout_row[j]) * (one - y[j] * y[j])
                        dh_row[j] = 0.0
            else:
                drow[:] = 0.0
        _gemm(dpre[t, b_lo:b_hi], w_hh, dh[b_lo:b_hi], True, vendor, scalars, ints, trans)
