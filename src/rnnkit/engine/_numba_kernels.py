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
- The forward's products ``h W_hh^T`` read ``W_hh`` transposed, copied once per call (MKL's
  ``omatcopy``; ``transpose_rows``) wherever the batch and steps pay for it: MKL's "NN" product
  took 5-25 % less time than its "NT" at these shapes on the 2-core Xeon VM. One-sequence and
  short calls (generation's single steps) keep ``W_hh`` as stored.
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

from . import _team

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


def _find_omatcopy() -> dict:
    """MKL's out-of-place transposes (``MKL_Somatcopy``/``MKL_Domatcopy``, C interface) by dtype,
    where torch exports them; 5-6x faster than a strided ``Tensor.copy_`` on the benchmark VM."""
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        found = {
            torch.float32: (lib.MKL_Somatcopy, ctypes.c_float),
            torch.float64: (lib.MKL_Domatcopy, ctypes.c_double),
        }
    except (OSError, AttributeError):
        return {}
    for fn, scalar in found.values():
        size = ctypes.c_size_t
        fn.argtypes = (
            [ctypes.c_char] * 2 + [size] * 2 + [scalar, ctypes.c_void_p, size, ctypes.c_void_p, size]
        )
        fn.restype = None
    return {dtype: fn for dtype, (fn, _) in found.items()}


_OMATCOPY = _find_omatcopy() if HAVE_VENDOR_BLAS else {}


def transpose_rows(w: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
    """Each row range ``[lo, hi)`` of the C-contiguous weight ``w`` ``(N, K)`` transposed, as a
    C-contiguous ``(K, hi - lo)`` block at offset ``K * lo`` of a flat ``(N * K,)`` buffer: the
    forward kernels' ``w_t``. The per-step product ``h @ w[lo:hi].T`` then reads its weights as
    stored (BLAS "NN"), 5-25 % faster than transposing them on the fly ("NT") on 2 cores, most at
    small ``B``; a range per thread keeps each thread's block contiguous."""
    w = w.detach().contiguous()
    N, K = w.shape
    out = w.new_empty(N * K)
    copy = _OMATCOPY.get(w.dtype)
    for lo, hi in bounds:
        if copy is not None:
            at = w.element_size() * K * lo
            copy(b"R", b"T", hi - lo, K, 1.0, w.data_ptr() + at, K, out.data_ptr() + at, hi - lo)
        else:
            out[K * lo : K * hi].view(K, hi - lo).copy_(w[lo:hi].t())
    return out


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


def _register_barrier() -> None:
    """Point the LLVM symbol ``rnnkit_barrier`` at the OpenMP team barrier (a no-op stub without one).

    Kernels call it only when ``parts > 1``, which callers pass only inside a team (:mod:`._team`).
    """
    address = _team.barrier_address()
    if address is None:
        stub = ctypes.CFUNCTYPE(None)(lambda: None)
        _STUBS.append(stub)
        address = ctypes.cast(stub, ctypes.c_void_p).value
    llvm.add_symbol("rnnkit_barrier", address)


_register_barrier()
_barrier = types.ExternalFunction("rnnkit_barrier", types.void())

_ptr = types.intp  # pointers travel as integers: same registers as ``T*`` in the x86-64/arm64 ABIs
_sgemm = types.ExternalFunction("rnnkit_sgemm", types.void(*[_ptr] * 13))
_dgemm = types.ExternalFunction("rnnkit_dgemm", types.void(*[_ptr] * 13))


def _blas_gemm(scalars, ints, trans, tb, a, b, out):  # pragma: no cover - replaced by the overload
    raise NotImplementedError


@overload(_blas_gemm, jit_options={"cache": True})
def _blas_gemm_impl(scalars, ints, trans, tb, a, b, out):
    gemm = _sgemm if scalars.dtype == types.float32 else _dgemm

    def impl(scalars, ints, trans, tb, a, b, out):
        # Row-major out (M, N) = a (M, K) @ b (K, N) is column-major out^T = b^T @ a^T; the row
        # strides (ints[3:6]) are the column-major leading dimensions. ``tb``: 0 for b given as
        # (K, N), 1 for b given as its transpose (N, K) (``trans[1]`` is ``'T'``).
        gemm(
            trans[tb:].ctypes.data,
            trans.ctypes.data,
            ints[0:].ctypes.data,  # N
            ints[1:].ctypes.data,  # M
            ints[2:].ctypes.data,  # K
            scalars[0:].ctypes.data,  # alpha
            b.ctypes.data,
            ints[4:].ctypes.data,  # ldb: row stride of b
            a.ctypes.data,
            ints[3:].ctypes.data,  # lda: row stride of a
            scalars[1:].ctypes.data,  # beta
            out.ctypes.data,
            ints[5:].ctypes.data,  # ldc: row stride of out
        )

    return impl


@njit(cache=True)
def _vendor_gemm(a, b, ldb, tb, out, lo, width, accumulate, scalars, ints, trans):
    """``out[:, lo:lo + width] = a (M, K) @ b`` through the vendor BLAS, or ``+=`` if
    ``accumulate``: ``b`` ``(K, width)`` (``tb`` 0) or its transpose ``(width, K)`` (``tb`` 1),
    rows ``ldb`` apart. Scratch for the BLAS arguments in ``scalars``/``ints``/``trans``."""
    ints[0] = width
    ints[1] = a.shape[0]
    ints[2] = a.shape[1]
    ints[3] = max(a.shape[1], 1)  # row strides: the column-major leading dimensions
    ints[4] = max(ldb, 1)
    ints[5] = max(out.shape[1], 1)
    scalars[0] = 1.0
    scalars[1] = 1.0 if accumulate else 0.0
    _blas_gemm(scalars, ints, trans, tb, a, b, out[:, lo : lo + width])


# Reassociation lets LLVM vectorise the dot products of the one-sequence path of ``_gemm_nt``.
_FASTMATH_PRODUCT = {"contract", "reassoc"}


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _gemm(a, b, out, lo, hi, accumulate, vendor, scalars, ints, trans):
    """``out[:, lo:hi] = a (M, K) @ b[:, lo:hi]`` (``b`` is ``(K, N)``), or ``+=`` if ``accumulate``.

    All three arrays are C-contiguous; the column range lets a thread compute its block of a
    product without making a strided view its loops would have to index (LLVM does not vectorise
    those). Scratch for the BLAS arguments in ``scalars``/``ints``/``trans`` (see ``_scratch``).
    """
    width = hi - lo
    if a.shape[0] == 1 and b.shape[0] * width <= 65536:
        # One sequence: a vector-matrix product, where BLAS call overhead is ~30% of the work.
        o = out[0]
        o = o[lo:hi]
        if not accumulate:
            o[:] = 0.0
        for k in range(a.shape[1]):
            a_k = a[0, k]
            b_k = b[k]
            b_k = b_k[lo:hi]
            for n in range(width):
                o[n] += a_k * b_k[n]
    elif vendor:
        _vendor_gemm(a, b[:, lo:hi], b.shape[1], 0, out, lo, width, accumulate, scalars, ints, trans)
    elif accumulate:
        out[:, lo:hi] += np.dot(a, np.ascontiguousarray(b[:, lo:hi]))
    else:
        out[:, lo:hi] = np.dot(a, np.ascontiguousarray(b[:, lo:hi]))


@njit(cache=True, fastmath=_FASTMATH_PRODUCT, error_model="numpy")
def _gemm_nt(a, w, out, lo, hi, accumulate, vendor, scalars, ints, trans):
    """``out[:, lo:hi] = a (M, K) @ w[lo:hi].T`` (``w`` is ``(N, K)``, e.g. a weight in torch's
    layout), or ``+=`` if ``accumulate``; like :func:`_gemm` without a transposed copy of ``w``."""
    width = hi - lo
    if a.shape[0] == 1 and w.shape[1] * width <= 65536:
        o = out[0]
        o = o[lo:hi]
        if not accumulate:
            o[:] = 0.0
        x = a[0]
        for n in range(width):
            w_n = w[lo + n]
            acc = o[n]
            for k in range(w.shape[1]):
                acc += x[k] * w_n[k]
            o[n] = acc
    elif vendor:  # w rows are the columns of w.T: leading dimension K
        _vendor_gemm(a, w[lo:hi], w.shape[1], 1, out, lo, width, accumulate, scalars, ints, trans)
    elif accumulate:
        out[:, lo:hi] += np.dot(a, np.ascontiguousarray(w[lo:hi]).T)
    else:
        out[:, lo:hi] = np.dot(a, np.ascontiguousarray(w[lo:hi]).T)


@njit(cache=True, error_model="numpy")
def _gemm_block(a, b, out, lo, vendor, scalars, ints, trans):
    """``out[:, lo:lo + N] += a (M, K) @ b``, ``b`` C-contiguous ``(K, N)``: one block of a
    ``w_t`` (:func:`transpose_rows`), read as stored."""
    width = b.shape[1]
    if vendor:
        _vendor_gemm(a, b, width, 0, out, lo, width, True, scalars, ints, trans)
    else:
        out[:, lo : lo + width] += np.dot(a, b)


@njit(cache=True, error_model="numpy")
def _hidden_product(h, w, w_t, out, lo, hi, vendor, scalars, ints, trans):
    """``out[:, lo:hi] += h (M, K) @ w[lo:hi].T``, ``w`` ``(N, K)`` a recurrent weight in torch's
    layout. ``w_t`` is empty, or ``w``'s row blocks transposed (:func:`transpose_rows`), one of
    them ``[lo, hi)``: then the product reads that block as stored."""
    if w_t.size == 0:
        _gemm_nt(h, w, out, lo, hi, True, vendor, scalars, ints, trans)
    else:
        K = w.shape[1]
        _gemm_block(h, w_t[K * lo : K * hi].reshape((K, hi - lo)), out, lo, vendor, scalars, ints, trans)


@njit(cache=True)
def _scratch(dtype_like):
    """Argument buffers for the products: alpha/beta, N/M/K/lda/ldb/ldc, and ``'N'``, ``'T'``."""
    trans = np.empty(2, np.uint8)
    trans[0] = 78  # ord("N")
    trans[1] = 84  # ord("T")
    return np.empty(2, dtype_like.dtype), np.empty(6, np.int32), trans


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
#
# Hidden units are cut into ``blocks`` ranges ``[u_k, u_k+1)``, ``u_k = H * k // blocks``; gate
# arrays use the *blocked* layout: column block ``k`` starts at ``4 u_k`` and holds the ``i, f, g, o``
# pre-activations of those units, each ``n_k = u_k+1 - u_k`` wide. ``blocks == 1`` is torch's own
# ``[i | f | g | o]`` layout. Thread ``part`` of ``parts`` owns blocks ``[part * blocks // parts,
# (part + 1) * blocks // parts)``: a contiguous range of gate columns and of hidden units, so each
# step it does one product for its columns and the gate arithmetic for its units, then waits at a
# barrier for the others (the next step's product reads every unit of ``h``). Threads can
# instead split the batch (``b_lo:b_hi``, ``parts == 1``): no barrier, nothing shared.


@njit(inline="always", cache=True)
def _owned_units(H, blocks, part, parts):
    """First and last block, and first and last hidden unit, that thread ``part`` owns."""
    k_lo = part * blocks // parts
    k_hi = (part + 1) * blocks // parts
    return k_lo, k_hi, H * k_lo // blocks, H * k_hi // blocks


@njit(inline="always", cache=True)
def _block(H, blocks, k):
    """First hidden unit ``u0`` and width ``n`` of block ``k``; its gates start at column ``4 u0``."""
    u0 = H * k // blocks
    return u0, H * (k + 1) // blocks - u0


@njit(inline="always", cache=True)
def _gates(row, u0, n):
    """The ``i, f, g, o`` views of block ``(u0, n)`` in a blocked gate row, indexed from 0: LLVM then
    proves the indices non-negative and vectorises (an offset index keeps a wraparound select per
    element and stays scalar)."""
    i0 = 4 * u0
    return (
        row[i0 : i0 + n],
        row[i0 + n : i0 + 2 * n],
        row[i0 + 2 * n : i0 + 3 * n],
        row[i0 + 3 * n : i0 + 4 * n],
    )


@njit(**_JIT)
def lstm_forward(
    act, w_hh, w_t, bias, hbuf, c_seq, tanh_c, out, lengths, b_lo, b_hi, blocks, part, parts, vendor
):
    """LSTM over time, in place: sequences ``b_lo:b_hi``, the hidden units thread ``part`` owns.

    In: ``act`` ``(T, B, 4H)`` holding ``x W_ih^T`` with columns, ``w_hh`` ``(4H, H)`` with rows
    and ``bias`` ``(4H,)`` = ``b_ih + b_hh`` in the blocked layout above; ``hbuf`` ``(2, B, H)``
    with ``hbuf[0]`` holding ``h0``; ``c_seq[0]`` ``(B, H)`` holding ``c0``; ``w_t`` empty, or
    ``w_hh``'s rows of each block transposed (:func:`transpose_rows`, ranges ``[4 u_k, 4 u_k+1)``).
    Out: ``act`` = gate activations; ``c_seq`` ``(T+1, B, H)`` the cell states (frozen past each
    end); ``tanh_c`` ``(T, B, H)`` = ``tanh(c_t)``; ``out`` ``(T, B, H)``; the final hidden state
    in ``hbuf[T % 2]`` (each step reads one buffer and writes the other, so no thread overwrites
    a state another still reads).
    """
    T, B, G = act.shape
    H = G // 4
    half = _constant(0.5, act)
    scalars, ints, trans = _scratch(act)
    k_lo, k_hi, u_lo, u_hi = _owned_units(H, blocks, part, parts)
    for t in range(T):
        h_cur = hbuf[t % 2]
        h_next = hbuf[(t + 1) % 2]
        h_rows = h_cur[b_lo:b_hi]
        for k in range(k_lo, k_hi):  # the product for each owned block of gate columns
            u0, n = _block(H, blocks, k)
            _hidden_product(
                h_rows, w_hh, w_t, act[t, b_lo:b_hi], 4 * u0, 4 * (u0 + n), vendor, scalars, ints, trans
            )
        for b in range(b_lo, b_hi):
            c_prev = c_seq[t, b]
            c_next = c_seq[t + 1, b]
            out_row = out[t, b]
            hc_row = h_cur[b]
            hn_row = h_next[b]
            if t >= lengths[b]:
                c_next[u_lo:u_hi] = c_prev[u_lo:u_hi]
                hn_row[u_lo:u_hi] = hc_row[u_lo:u_hi]
                out_row[u_lo:u_hi] = 0.0
                continue
            row = act[t, b]
            tc_row = tanh_c[t, b]
            for k in range(k_lo, k_hi):
                u0, n = _block(H, blocks, k)
                # Views indexed from 0 (see _gates) and short loops touching one or two arrays
                # each (fewer runtime alias checks): both keep LLVM vectorising.
                i_g, f_g, g_g, o_g = _gates(row, u0, n)
                i_b, f_b, g_b, o_b = _gates(bias, u0, n)
                cp, cn, tc = c_prev[u0 : u0 + n], c_next[u0 : u0 + n], tc_row[u0 : u0 + n]
                ho, hn = out_row[u0 : u0 + n], hn_row[u0 : u0 + n]
                for j in range(n):
                    i_g[j] = _sigmoid(i_g[j] + i_b[j], half)
                for j in range(n):
                    f_g[j] = _sigmoid(f_g[j] + f_b[j], half)
                for j in range(n):
                    g_g[j] = _tanh(g_g[j] + g_b[j])
                for j in range(n):
                    o_g[j] = _sigmoid(o_g[j] + o_b[j], half)
                for j in range(n):
                    c = f_g[j] * cp[j] + i_g[j] * g_g[j]
                    cn[j] = c
                    tc[j] = _tanh(c)
                for j in range(n):
                    v = o_g[j] * tc[j]
                    ho[j] = v
                    hn[j] = v
        if parts > 1:
            _barrier()


@njit(**_JIT)
def lstm_backward(
    act, c_seq, tanh_c, w_hh, dout, dh, dc, dgates, lengths, dbias, b_lo, b_hi, blocks, part, parts, vendor
):
    """Backward of :func:`lstm_forward`, last step to first: sequences ``b_lo:b_hi``, owned units.

    In: ``act``, ``c_seq``, ``tanh_c`` as saved; ``w_hh`` ``(4H, H)`` with rows in the blocked
    layout; ``dout`` ``(T, B, H)``; ``dh``, ``dc`` ``(B, H)`` holding the gradients of the final
    state; ``dbias`` ``(4H,)`` zeros, private to this thread. Out: ``dgates`` ``(T, B, 4H)``
    (blocked), the gradient of the gate pre-activations (zero past each end); ``dbias`` += its sum
    over this thread's steps and sequences (the bias gradient, without another pass over
    ``dgates``); ``dh``, ``dc`` those of ``h0``, ``c0``. Each step every thread needs all of
    ``dgates[t]`` for its columns of ``dh = dgates[t] W_hh``, hence the barrier before the product.
    """
    T, B, G = act.shape
    H = G // 4
    one = _constant(1.0, act)
    scalars, ints, trans = _scratch(act)
    k_lo, k_hi, u_lo, u_hi = _owned_units(H, blocks, part, parts)
    for t in range(T - 1, -1, -1):
        for b in range(b_lo, b_hi):
            drow = dgates[t, b]
            if t >= lengths[b]:
                drow[4 * u_lo : 4 * u_hi] = 0.0  # frozen: dh, dc pass through; the product adds zero
                continue
            row = act[t, b]
            for k in range(k_lo, k_hi):
                u0, n = _block(H, blocks, k)
                i0 = 4 * u0
                i_g, f_g, g_g, o_g = _gates(row, u0, n)
                di, df, dg, do = _gates(drow, u0, n)
                tc, cp = tanh_c[t, b, u0 : u0 + n], c_seq[t, b, u0 : u0 + n]
                dh_u, dc_u, dout_u = dh[b, u0 : u0 + n], dc[b, u0 : u0 + n], dout[t, b, u0 : u0 + n]
                for j in range(n):
                    dh_u[j] += dout_u[j]  # now the total gradient of h_t
                for j in range(n):
                    dc_u[j] += dh_u[j] * o_g[j] * (one - tc[j] * tc[j])
                for j in range(n):
                    o = o_g[j]
                    do[j] = dh_u[j] * tc[j] * o * (one - o)
                for j in range(n):
                    i = i_g[j]
                    f = f_g[j]
                    g = g_g[j]
                    dcj = dc_u[j]
                    di[j] = dcj * g * i * (one - i)
                    df[j] = dcj * cp[j] * f * (one - f)
                    dg[j] = dcj * i * (one - g * g)
                for j in range(n):
                    dc_u[j] *= f_g[j]
                d_all, db_all = drow[i0 : i0 + 4 * n], dbias[i0 : i0 + 4 * n]
                for j in range(4 * n):
                    db_all[j] += d_all[j]
            dh[b, u_lo:u_hi] = 0.0  # refilled by the product below
        if parts > 1:
            _barrier()
        _gemm(dgates[t, b_lo:b_hi], w_hh, dh[b_lo:b_hi], u_lo, u_hi, True, vendor, scalars, ints, trans)


# --- GRU -----------------------------------------------------------------------------------------


@njit(**_JIT)
def gru_forward(act, w_hh, w_t, b_hh, h, gh_n, out, lengths, b_lo, b_hi, vendor):
    """GRU over time, in place.

    In: ``act`` ``(T, B, 3H)`` holding ``x W_ih^T + b_ih``; ``w_hh`` ``(3H, H)``; ``b_hh``
    ``(3H,)`` (zeros for no bias); ``h`` ``(B, H)`` holding ``h0``; ``w_t`` empty, or ``w_hh``
    transposed (:func:`transpose_rows`, one range).
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
        _hidden_product(h[b_lo:b_hi], w_hh, w_t, gh[b_lo:b_hi], 0, G, vendor, scalars, ints, trans)
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
        _gemm(dgh[t, b_lo:b_hi], w_hh, dh[b_lo:b_hi], 0, H, True, vendor, scalars, ints, trans)


# --- Elman RNN -----------------------------------------------------------------------------------


@njit(**_JIT)
def rnn_forward(out, w_hh, w_t, h, lengths, relu, b_lo, b_hi, vendor):
    """Elman RNN over time, in place.

    In: ``out`` ``(T, B, H)`` holding ``x W_ih^T + b_ih + b_hh``; ``w_hh`` ``(H, H)``; ``w_t`` as
    in :func:`gru_forward`; ``h`` ``(B, H)`` holding ``h0``. Out: ``out`` the outputs (zero past
    each end), ``h`` the final state.
    """
    T, B, H = out.shape
    zero = _constant(0.0, out)
    scalars, ints, trans = _scratch(out)
    for t in range(T):
        pre = out[t]
        _hidden_product(h[b_lo:b_hi], w_hh, w_t, pre[b_lo:b_hi], 0, H, vendor, scalars, ints, trans)
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
        _gemm(dpre[t, b_lo:b_hi], w_hh, dh[b_lo:b_hi], 0, H, True, vendor, scalars, ints, trans)
