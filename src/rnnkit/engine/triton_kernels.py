"""Triton kernels for the recurrent part of RNN, LSTM and GRU layers (forward and backward).

The input projections of every step are one large matrix product done by the caller
(:mod:`.triton_engine`), so these kernels only walk the dependent chain over time.
``MODE`` selects the cell: 0 RNN (``RELU`` picks relu over tanh), 1 LSTM, 2 GRU; ``NG`` is the
number of gate blocks (1, 4, 3) so ``G = NG * H``.

Four families, sharing one cell's arithmetic (:func:`_fwd_cell`, :func:`_bwd_cell`):

- ``*_resident_kernel``: the fast path when the whole ``W_hh`` fits in one program. One launch
  covers all ``T`` steps; each program owns ``BLOCK_B`` batch rows, loads ``W_hh`` once before
  the time loop and keeps ``h`` (and ``c``, ``dh``, ``dc``) in registers, so a step costs ``NG``
  small matrix products plus fused gate arithmetic and no global round trip.
- ``*_split_kernel``: the hidden dimension split over programs that each keep a column slice of
  ``W_hh`` on chip and meet at a barrier after every step (one launch on a GPU). With ``NK`` > 1
  a step's product is one 3-d product over ``NK`` slices of its reduction, summed on chip, so
  that a program's warps share its small output instead of each computing all of it.
- ``*_blocked_kernel``: any hidden size. ``h`` lives in a small fp32 workspace and ``W_hh`` is
  read tile by tile (from L2) every step. With ``sync`` the programs of a batch tile share its
  hidden blocks and walk all steps, meeting at a barrier after each (one launch); without it
  the host launches one step at a time on a grid split over the hidden dimension.
- ``*_cell_kernel``: one step's gate arithmetic alone, for the ``gemm`` path, whose host makes
  each step's recurrent product a library matrix product.

The interpreter runs programs one after another, so no program may wait for another there: the
host then launches the split and blocked kernels one step at a time (``sync`` off).

The loads a step needs that do not depend on the recurrence (the input projections forward; the
saved activations and the output gradient backward) are issued one step ahead in the resident
and split kernels, so their latency hides behind the current step's arithmetic.

Compiled variants are kept few, since each costs seconds to build: the time bounds, ``B`` and
the launch options (``hb_per_prog``, ``n_h``, ``sync``, ``epilogue``) are runtime arguments that
Triton does not specialise on (``do_not_specialize``).

Layouts: ``w`` ``(G, H)`` = ``weight_hh``; ``out`` ``(T, B, H)``, preceded in memory by a row
``(B, H)`` that the resident and split forwards fill with ``h0`` (so that the weight gradient of
``W_hh`` is one product over ``h0, out[:-1]``); ``cs`` ``(T, B, H)`` LSTM cell states. The
gate-shaped buffers share one layout, ``(T, B, GW * H)`` with gate ``k`` in slot ``k`` of each
row (``GW`` 4 for LSTM and GRU, 1 for the RNN), so that one buffer serves all three in turn
(:mod:`.triton_engine`): ``xg`` the input projections with biases folded in (GRU keeps ``b_hn``
apart, the reset gate scales it; slot 3 unused); ``save`` the gate activations the forward
writes over them (LSTM ``i, f, g, o``, GRU ``r, z, n, W_hn h + b_hn``; the RNN saves nothing but
``out``); ``dgi`` the pre-activation gradients the backward writes over those (GRU: the input
side's in slots 0-2, the hidden side's third gate in slot 3, its first two being the input
side's). Each kernel reads a slot of a step before it writes that slot of that step, on the same
program. Steps ``t >= lens[b]`` freeze the state, write a zero output and a zero gate gradient.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh from the sigmoid: exact enough in fp32 and free of libdevice, so the interpreter runs it
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _mm(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` in fp32. ``UPCAST`` works around the interpreter's bf16 dot (it multiplies
    the raw uint16 bits); bf16 values are exact in fp32, so the result is the same product."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _rec_mm(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` for the recurrent product. 3-d operands ``a`` ``(NK, M, KC)`` and ``b``
    ``(NK, KC, N)`` hold the reduction in ``NK`` slices: one product per slice (the warps split
    over them, each holding a ``KC``-deep operand instead of the whole ``K``), summed on chip."""
    if len(a.shape) == 3:
        part = tl.zeros((a.shape[0], a.shape[1], b.shape[2]), tl.float32)
        out = acc + tl.sum(_mm(a, b, part, PRECISION, UPCAST), axis=0)
    else:
        out = _mm(a, b, acc, PRECISION, UPCAST)
    return out


@triton.jit
def _unfolded_zero(lens, like):
    """A zero tile shaped like ``like`` that Triton cannot see is zero. Triton rewrites
    ``dot(a, b, 0) + c`` as ``dot(a, b, c)``, which would chain separately accumulated products
    back into one; a product started from this zero stays a chain of its own. (``lens``: any
    finite runtime values, one per row.)"""
    return (lens.to(tl.float32) * 0.0)[:, None] + tl.zeros_like(like)


@triton.jit
def _gate_grad_products(
    a0, a1, a2, a3, w0, w1, w2, w3, acc, zero, NG: tl.constexpr, APART: tl.constexpr, PRECISION, UPCAST
):
    """``acc + sum_k a_k @ w_k`` over the ``NG`` gates. ``APART``: each gate's product accumulated
    apart (from ``zero``, :func:`_unfolded_zero`) and the products summed after; else one chain,
    each gate's product accumulating onto the last's. A product's mma instructions chain through
    their accumulator, one per 8 of the reduction (TF32; 16 in bf16), each waiting for the last;
    one accumulator for all gates makes that one chain ``NG`` times as long, the backward step's
    longest wait."""
    out = _mm(a0, w0, acc, PRECISION, UPCAST)
    if APART:
        if NG > 1:
            p1 = _mm(a1, w1, zero, PRECISION, UPCAST)
            p2 = _mm(a2, w2, zero, PRECISION, UPCAST)
            if NG > 3:
                p2 = p2 + _mm(a3, w3, zero, PRECISION, UPCAST)
            out = (out + p1) + p2
    else:
        if NG > 1:
            out = _mm(a1, w1, out, PRECISION, UPCAST)
            out = _mm(a2, w2, out, PRECISION, UPCAST)
        if NG > 3:
            out = _mm(a3, w3, out, PRECISION, UPCAST)
    return out


@triton.jit
def _k_range(
    rows, rmask, cols, cmask, H, row_stride, K0: tl.constexpr, KC: tl.constexpr, W_OUT: tl.constexpr
):
    """:func:`_k_slices`' 2-d operands over the reduction's part ``K0 <= k < K0 + KC``: ``a``
    ``(M, KC)`` and ``w`` ``(KC, N)``."""
    ks = K0 + tl.arange(0, KC)
    a_off = rows[:, None] * row_stride + ks[None, :]
    a_mask = rmask[:, None] & (ks < H)[None, :]
    if W_OUT:
        w_off = ks[:, None] * H + cols[None, :]
    else:
        w_off = cols[None, :] * H + ks[:, None]
    w_mask = (ks < H)[:, None] & cmask[None, :]
    return a_off, a_mask, w_off, w_mask


@triton.jit
def _k_slices(
    rows, rmask, cols, cmask, H, row_stride, HP: tl.constexpr, NK: tl.constexpr, W_OUT: tl.constexpr
):
    """Offsets and masks ``(a_off, a_mask, w_off, w_mask)`` of a split program's recurrent
    product ``a @ w`` over the reduction ``k < HP``: ``a`` rows ``rows`` at ``rows * row_stride +
    k``; ``w`` gate 0's ``W_hh`` slice as ``(k, cols)``, read transposed (``W_OUT`` false, the
    forward: ``k`` indexes ``W_hh``'s inputs) or as stored (``W_OUT``, the backward: its output
    rows). ``NK`` 1: 2-d operands ``(M, HP)`` and ``(HP, N)``; else 3-d, ``(NK, M, HP / NK)`` and
    ``(NK, HP / NK, N)``, the reduction in ``NK`` slices (``Plan.k_slices``)."""
    if NK == 1:
        a_off, a_mask, w_off, w_mask = _k_range(rows, rmask, cols, cmask, H, row_stride, 0, HP, W_OUT)
    else:
        kk = (tl.arange(0, NK) * (HP // NK))[:, None] + tl.arange(0, HP // NK)[None, :]  # (NK, KC)
        a_off = rows[None, :, None] * row_stride + kk[:, None, :]
        a_mask = rmask[None, :, None] & (kk < H)[:, None, :]
        if W_OUT:
            w_off = kk[:, :, None] * H + cols[None, None, :]
        else:
            w_off = cols[None, None, :] * H + kk[:, :, None]
        w_mask = (kk < H)[:, :, None] & cmask[None, None, :]
    return a_off, a_mask, w_off, w_mask


@triton.jit
def _load_prev(first_ptr, seq_ptr, t, off, mask, BH):
    """State before step ``t``: ``first`` at ``t == 0``, else ``seq[t - 1]`` (two masked loads, no branch)."""
    tt = t + tl.zeros_like(off)  # scalar conditions as tensors: the interpreter rejects scalar masks
    a = tl.load(first_ptr + off, mask=mask & (tt == 0), other=0.0).to(tl.float32)
    b = tl.load(seq_ptr + (t - 1) * BH + off, mask=mask & (tt > 0), other=0.0).to(tl.float32)
    return a + b


@triton.jit
def _gate_tiles(ptr, mask, stride, NG: tl.constexpr):
    """The ``NG`` gate tiles at ``ptr + k * stride``, as stored (absent gates repeat gate 0)."""
    x0 = tl.load(ptr, mask=mask, other=0.0)
    x1 = x0
    x2 = x0
    x3 = x0
    if NG > 1:
        x1 = tl.load(ptr + stride, mask=mask, other=0.0)
        x2 = tl.load(ptr + 2 * stride, mask=mask, other=0.0)
    if NG > 3:
        x3 = tl.load(ptr + 3 * stride, mask=mask, other=0.0)
    return x0, x1, x2, x3


@triton.jit
def _load4(ptr, mask, H):
    """The four slots at ``ptr + k * H`` of a gate buffer's row block as one load of a ``(.., ..,
    4)`` tile split in registers (compiled for sm_90 the split tiles still need a layout
    conversion each; the packed stores save three)."""
    v = tl.load(ptr[:, :, None] + (tl.arange(0, 4) * H)[None, None, :], mask=mask[:, :, None], other=0.0)
    v = tl.reshape(v, (v.shape[0], v.shape[1], 2, 2))  # [.., i, j]: slot 2 i + j
    even, odd = tl.split(v)
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return x0, x1, x2, x3


@triton.jit
def _store4(ptr, v0, v1, v2, v3, mask, H):
    """Store four tiles to the slots at ``ptr + k * H`` as one ``(.., .., 2, 2)`` tile."""
    v = tl.join(tl.join(v0, v1), tl.join(v2, v3))  # [.., k, m]: slot 2 m + k
    k = tl.arange(0, 2)
    off = (k * H)[None, None, :, None] + (k * (2 * H))[None, None, None, :]
    tl.store(ptr[:, :, None, None] + off, v.to(ptr.dtype.element_ty), mask=mask[:, :, None, None])


@triton.jit
def _store_slots(ptr, v0, v1, v2, v3, mask, H, PACK: tl.constexpr):
    """Store four tiles to a gate buffer's slots ``ptr + k * H``: one ``(.., .., 2, 2)`` tile with
    ``PACK``, else four."""
    if PACK:
        _store4(ptr, v0, v1, v2, v3, mask, H)
    else:
        dt = ptr.dtype.element_ty
        tl.store(ptr, v0.to(dt), mask=mask)
        tl.store(ptr + H, v1.to(dt), mask=mask)
        tl.store(ptr + 2 * H, v2.to(dt), mask=mask)
        tl.store(ptr + 3 * H, v3.to(dt), mask=mask)


@triton.jit
def _load_gates(ptr, mask, H, NG: tl.constexpr, PACK: tl.constexpr):
    """The ``NG`` gate tiles of a gate buffer's row block at ``ptr + k * H`` in fp32, absent gates
    repeating gate 0 (``PACK``: all four slots in one load; GRU's fourth, unwritten in the
    projections, is dropped)."""
    if PACK and NG > 1:
        x0, x1, x2, x3 = _load4(ptr, mask, H)
        if NG < 4:
            x3 = x0
    else:
        x0, x1, x2, x3 = _gate_tiles(ptr, mask, H, NG)
    return x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)


@triton.jit
def _hidden_products(
    hb, w0, w1, w2, w3, x0, x1, x2, x3, NG: tl.constexpr, MODE: tl.constexpr, PRECISION, UPCAST
):
    """Pre-activations ``x_k + h W_k^T`` of each gate on a tile (``hb`` cast for the product,
    ``w*`` the transposed weight tiles); GRU's third is ``h W_hn^T`` alone."""
    p0 = _rec_mm(hb, w0, x0, PRECISION, UPCAST)
    p1 = p0
    p2 = p0
    p3 = p0
    if NG > 1:
        p1 = _rec_mm(hb, w1, x1, PRECISION, UPCAST)
        if MODE == 2:
            p2 = _rec_mm(hb, w2, tl.zeros_like(x2), PRECISION, UPCAST)
        else:
            p2 = _rec_mm(hb, w2, x2, PRECISION, UPCAST)
    if NG > 3:
        p3 = _rec_mm(hb, w3, x3, PRECISION, UPCAST)
    return p0, p1, p2, p3


@triton.jit
def _gates_side_by_side(w0, w1, w2, w3):
    """The four ``(NK, KC, N)`` weight tiles as one ``(NK, KC, 4 N)`` (or ``(KC, N)`` as one
    ``(KC, 4 N)``), gate ``2 i + j`` of column ``n`` at ``4 n + 2 j + i`` (as
    :func:`_gates_apart` splits them)."""
    w = tl.join(tl.join(w0, w1), tl.join(w2, w3))
    if len(w0.shape) == 2:
        out = tl.reshape(w, (w.shape[0], 4 * w.shape[1]))
    else:
        out = tl.reshape(w, (w.shape[0], w.shape[1], 4 * w.shape[2]))
    return out


@triton.jit
def _gates_apart(s, x0, x1, x2, x3, MODE: tl.constexpr):
    """The pre-activations of each gate from ``s`` ``(M, 4 N)``, the side-by-side product
    (:func:`_gates_side_by_side`), plus the input projections; GRU's third is ``h W_hn^T`` alone."""
    a, b = tl.split(tl.reshape(s, (x0.shape[0], x0.shape[1], 2, 2)))
    p0, p1 = tl.split(a)
    p2, p3 = tl.split(b)
    if MODE != 2:
        p2 = p2 + x2
    return p0 + x0, p1 + x1, p2, p3 + x3


@triton.jit
def _side_products(
    ha,
    wa,
    hb,
    wb,
    zero,
    x0,
    x1,
    x2,
    x3,
    NG: tl.constexpr,
    MODE: tl.constexpr,
    HALVES: tl.constexpr,
    PRECISION,
    UPCAST,
):
    """:func:`_hidden_products` as one 2-d product, the gates side by side: ``ha`` ``(M, K)`` @
    ``wa`` ``(K, 4 N)`` (:func:`_gates_side_by_side`; the RNN's one gate ``(K, N)``). ``HALVES``:
    the reduction in two halves, ``ha @ wa + hb @ wb``, each accumulated apart from ``zero``
    ``(M, 4 N)`` (:func:`_unfolded_zero`) so that each is a chain of mma half as long, side by
    side in each warp."""
    if HALVES:
        s = _mm(ha, wa, zero, PRECISION, UPCAST) + _mm(hb, wb, zero, PRECISION, UPCAST)
    else:
        s = _mm(ha, wa, zero, PRECISION, UPCAST)
    if NG == 1:
        p0 = s + x0
        p1 = p0
        p2 = p0
        p3 = p0
    else:  # four names, not one tuple: Triton 3.2 does not unpack a tuple returned by name
        p0, p1, p2, p3 = _gates_apart(s, x0, x1, x2, x3, MODE)
    return p0, p1, p2, p3


@triton.jit
def _sliced_products(hk, w, x0, x1, x2, x3, MODE: tl.constexpr, PRECISION, UPCAST):
    """:func:`_hidden_products` for ``NK``-sliced operands, the gates side by side: one 3-d
    product ``hk`` ``(NK, M, KC)`` @ ``w`` ``(NK, KC, 4 N)`` (:func:`_gates_side_by_side`), one sum
    over the slices, then the gates split apart. GRU's absent fourth gate costs a quarter more
    product."""
    part = tl.zeros((hk.shape[0], hk.shape[1], w.shape[2]), tl.float32)
    s = tl.sum(_mm(hk, w, part, PRECISION, UPCAST), axis=0)
    return _gates_apart(s, x0, x1, x2, x3, MODE)


@triton.jit
def _fwd_cell(p0, p1, p2, p3, x2, h, c, bhn, MODE: tl.constexpr, RELU: tl.constexpr):
    """One step's cell arithmetic on a tile. ``p*`` the gate pre-activations (input and hidden
    parts with biases), except GRU's ``p2``: ``h W_hn^T`` alone, ``x2`` being its input part.
    Returns ``(h_new, c_new, s0, s1, s2, s3)``, ``s*`` what the backward reads back (LSTM
    ``i, f, g, o``; GRU ``r, z, n, h W_hn^T + b_hn``; RNN none: ``h_new``)."""
    if MODE == 0:
        if RELU:
            h_new = tl.maximum(p0, 0.0)
        else:
            h_new = _tanh(p0)
        c_new = c
        s0 = h_new
        s1 = h_new
        s2 = h_new
        s3 = h_new
    elif MODE == 1:
        s0 = _sigmoid(p0)
        s1 = _sigmoid(p1)
        s2 = _tanh(p2)
        s3 = _sigmoid(p3)
        c_new = s1 * c + s0 * s2
        h_new = s3 * _tanh(c_new)
    else:
        s0 = _sigmoid(p0)
        s1 = _sigmoid(p1)
        s3 = p2 + bhn[None, :]
        s2 = _tanh(x2 + s0 * s3)
        h_new = (1.0 - s1) * s2 + s1 * h
        c_new = c
    return h_new, c_new, s0, s1, s2, s3


@triton.jit
def _store_saved(save_ptr, off, s0, s1, s2, s3, mask, H, MODE: tl.constexpr, PACK: tl.constexpr):
    """Store what the backward reads back of one step (LSTM and GRU; the RNN keeps only ``out``)."""
    if MODE != 0:
        _store_slots(save_ptr + off, s0, s1, s2, s3, mask, H, PACK)


@triton.jit
def _bwd_loads(
    t,
    m2,
    st,
    gt,
    h0_ptr,
    c0_ptr,
    out_ptr,
    cs_ptr,
    save_ptr,
    dout_ptr,
    B,
    H,
    MODE: tl.constexpr,
    GW: tl.constexpr,
    PACK: tl.constexpr,
):
    """What the backward of step ``t`` reads besides the state gradients, in fp32 (all zero for
    ``t < 0``, so a loop may fetch step ``t - 1`` while it works on step ``t``):
    ``(dout_t, s0, s1, s2, s3, a, b)``, ``s*`` as :func:`_fwd_cell` saved them and ``a, b``:
    LSTM ``c_t, c_{t-1}``; GRU ``h_{t-1}``; RNN ``h_t``."""
    BH = B * H
    m = m2 & ((t + tl.zeros_like(st)) >= 0)
    dout = tl.load(dout_ptr + t * BH + st, mask=m, other=0.0).to(tl.float32)
    if MODE == 0:
        a = tl.load(out_ptr + t * BH + st, mask=m, other=0.0).to(tl.float32)
        s0 = a
        s1 = a
        s2 = a
        s3 = a
        b = a
    else:
        s0, s1, s2, s3 = _load_gates(save_ptr + t * (GW * BH) + gt, m, H, 4, PACK)
        if MODE == 1:
            a = tl.load(cs_ptr + t * BH + st, mask=m, other=0.0).to(tl.float32)
            b = _load_prev(c0_ptr, cs_ptr, t, st, m, BH)
        else:
            a = _load_prev(h0_ptr, out_ptr, t, st, m, BH)
            b = a
    return dout, s0, s1, s2, s3, a, b


@triton.jit
def _bwd_cell(
    dh,
    dc,
    t,
    valid,
    dout,
    s0,
    s1,
    s2,
    s3,
    a,
    b,
    m2,
    gt,
    dgi_ptr,
    B,
    H,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
):
    """Backward of step ``t`` on one tile from :func:`_bwd_loads`' values: stores the gate
    gradients over the saved values of step ``t`` (LSTM and GRU: ``dgi`` is the ``save`` buffer;
    each slot's stored value depends on the value loaded from that slot, which orders the load
    before the store whichever threads hold them) and returns ``(d0, d1, d2, d3, direct,
    dc_prev)`` where ``d*`` are the hidden-side pre-activation gradients (cast for the ``W_hh``
    product) and ``direct`` the part of ``dh_prev`` that does not go through ``W_hh``. Invalid
    rows get zero gate gradients and pass ``dh``/``dc`` through."""
    dht = dh + dout
    gi = dgi_ptr + t * (GW * B * H) + gt
    cdt = dgi_ptr.dtype.element_ty
    if MODE == 0:
        if RELU:
            dp = tl.where(a > 0.0, dht, 0.0)
        else:
            dp = dht * (1.0 - a * a)
        d0 = tl.where(valid, dp, 0.0).to(cdt)
        tl.store(gi, d0, mask=m2)
        d1 = d0
        d2 = d0
        d3 = d0
        direct = tl.where(valid, 0.0, dh)
        dc_prev = dc
    elif MODE == 1:
        i = s0
        f = s1
        g = s2
        o = s3
        c_p = b
        tc = _tanh(a)  # a: c_t
        dct = dc + dht * o * (1.0 - tc * tc)
        d0 = tl.where(valid, dct * g * i * (1.0 - i), 0.0).to(cdt)
        d1 = tl.where(valid, dct * c_p * f * (1.0 - f), 0.0).to(cdt)
        d2 = tl.where(valid, dct * i * (1.0 - g * g), 0.0).to(cdt)
        d3 = tl.where(valid, dht * tc * o * (1.0 - o), 0.0).to(cdt)
        _store_slots(gi, d0, d1, d2, d3, m2, H, PACK)
        direct = tl.where(valid, 0.0, dh)
        dc_prev = tl.where(valid, dct * f, dc)
    else:
        r = s0
        z = s1
        n = s2
        hn = s3
        hp = a
        dpn = dht * (1.0 - z) * (1.0 - n * n)
        d0 = tl.where(valid, dpn * hn * r * (1.0 - r), 0.0).to(cdt)
        d1 = tl.where(valid, dht * (hp - n) * z * (1.0 - z), 0.0).to(cdt)
        d2 = tl.where(valid, dpn * r, 0.0).to(cdt)  # through W_hn h + b_hn
        d3 = d2
        dn = tl.where(valid, dpn, 0.0).to(cdt)  # through W_in x + b_in
        # the hidden side's third gate (through W_hn h + b_hn) goes to slot 3, over the saved
        # ``W_hn h + b_hn``; the select on ``hn`` makes the store depend on that slot's load
        dhn = tl.where(hn == hn, d2, hn.to(cdt))
        _store_slots(gi, d0, d1, dn, dhn, m2, H, PACK)
        direct = tl.where(valid, dht * z, dh)
        dc_prev = dc
    return d0, d1, d2, d3, direct, dc_prev


# ----------------------------------------------------------------------------------------------
# Fast path: W_hh resident in one program
# ----------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["T", "B"])
def fwd_resident_kernel(
    xg_ptr,
    w_ptr,
    bhn_ptr,
    h0_ptr,
    c0_ptr,
    lens_ptr,
    out_ptr,
    cs_ptr,
    save_ptr,
    hn_ptr,
    cn_ptr,
    T,
    B,
    H,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    rmask = rows < B
    cmask = cols < H
    m2 = rmask[:, None] & cmask[None, :]
    lens = tl.load(lens_ptr + rows, mask=rmask, other=0)
    st = rows[:, None] * H + cols[None, :]  # (BLOCK_B, BLOCK_H) offsets into (B, H)
    gt = rows[:, None] * (GW * H) + cols[None, :]  # gate-0 offsets into a gate buffer's (B, GW * H)
    # W_hh^T per gate, (BLOCK_H in, BLOCK_H out): loaded once, reused by every step
    wt = cols[None, :] * H + cols[:, None]
    wm = cmask[None, :] & cmask[:, None]
    w0, w1, w2, w3 = _gate_tiles(w_ptr + wt, wm, H * H, NG)
    bhn = tl.load(bhn_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    h = tl.load(h0_ptr + st, mask=m2, other=0.0).to(tl.float32)
    c = h
    if MODE == 1:
        c = tl.load(c0_ptr + st, mask=m2, other=0.0).to(tl.float32)
    BH = B * H
    x0, x1, x2, x3 = _load_gates(xg_ptr + gt, m2, H, NG, PACK)
    for t in range(T):
        valid = (t < lens)[:, None]
        # the next step's input projections, fetched while this step computes
        nm = m2 & ((t + 1 + tl.zeros_like(rows)) < T)[:, None]
        n0, n1, n2, n3 = _load_gates(xg_ptr + (t + 1) * (GW * BH) + gt, nm, H, NG, PACK)
        hb = h.to(w_ptr.dtype.element_ty)
        p0, p1, p2, p3 = _hidden_products(hb, w0, w1, w2, w3, x0, x1, x2, x3, NG, MODE, PRECISION, UPCAST)
        h_new, c_new, s0, s1, s2, s3 = _fwd_cell(p0, p1, p2, p3, x2, h, c, bhn, MODE, RELU)
        _store_saved(save_ptr, t * (GW * BH) + gt, s0, s1, s2, s3, m2, H, MODE, PACK)
        if MODE == 1:
            c = tl.where(valid, c_new, c)
            tl.store(cs_ptr + t * BH + st, c.to(cs_ptr.dtype.element_ty), mask=m2)
        h = tl.where(valid, h_new, h)
        tl.store(out_ptr + t * BH + st, tl.where(valid, h_new, 0.0).to(out_ptr.dtype.element_ty), mask=m2)
        x0 = n0
        x1 = n1
        x2 = n2
        x3 = n3
    tl.store(hn_ptr + st, h.to(hn_ptr.dtype.element_ty), mask=m2)
    if MODE == 1:
        tl.store(cn_ptr + st, c.to(cn_ptr.dtype.element_ty), mask=m2)
    # the row before out: h0 (read again here: stored before the loop, it cost the loop cycles)
    h0 = tl.load(h0_ptr + st, mask=m2, other=0.0)
    tl.store(out_ptr - BH + st, h0.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["T", "B"])
def bwd_resident_kernel(
    w_ptr,
    h0_ptr,
    c0_ptr,
    lens_ptr,
    out_ptr,
    cs_ptr,
    save_ptr,
    dout_ptr,
    dhn_ptr,
    dcn_ptr,
    dgi_ptr,
    dh0_ptr,
    dc0_ptr,
    T,
    B,
    H,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    rmask = rows < B
    cmask = cols < H
    m2 = rmask[:, None] & cmask[None, :]
    lens = tl.load(lens_ptr + rows, mask=rmask, other=0)
    st = rows[:, None] * H + cols[None, :]
    gt = rows[:, None] * (GW * H) + cols[None, :]
    # W_hh per gate as stored, (BLOCK_H out, BLOCK_H in): dh_prev = sum_k d_k @ W_k
    wo = cols[:, None] * H + cols[None, :]
    wm = cmask[:, None] & cmask[None, :]
    w0, w1, w2, w3 = _gate_tiles(w_ptr + wo, wm, H * H, NG)
    dh = tl.load(dhn_ptr + st, mask=m2, other=0.0).to(tl.float32)
    dc = tl.load(dcn_ptr + st, mask=m2, other=0.0).to(tl.float32)
    # each gate's product apart in float32 (TF32: mma chains twice as long as bf16's, whose
    # short ones gain less than the sums cost)
    APART: tl.constexpr = w_ptr.dtype.element_ty == tl.float32
    zero = _unfolded_zero(lens, dh)
    l0, l1, l2, l3, l4, l5, l6 = _bwd_loads(
        T - 1, m2, st, gt, h0_ptr, c0_ptr, out_ptr, cs_ptr, save_ptr, dout_ptr, B, H, MODE, GW, PACK
    )
    for s in range(T):
        t = T - 1 - s
        valid = (t < lens)[:, None]
        # the previous step's reads, fetched while this step computes
        n0, n1, n2, n3, n4, n5, n6 = _bwd_loads(
            t - 1, m2, st, gt, h0_ptr, c0_ptr, out_ptr, cs_ptr, save_ptr, dout_ptr, B, H, MODE, GW, PACK
        )
        d0, d1, d2, d3, direct, dc = _bwd_cell(
            dh, dc, t, valid, l0, l1, l2, l3, l4, l5, l6, m2, gt, dgi_ptr, B, H, MODE, NG, GW, RELU, PACK
        )
        dh = _gate_grad_products(d0, d1, d2, d3, w0, w1, w2, w3, direct, zero, NG, APART, PRECISION, UPCAST)
        l0 = n0
        l1 = n1
        l2 = n2
        l3 = n3
        l4 = n4
        l5 = n5
        l6 = n6
    tl.store(dh0_ptr + st, dh.to(dh0_ptr.dtype.element_ty), mask=m2)
    if MODE == 1:
        tl.store(dc0_ptr + st, dc.to(dc0_ptr.dtype.element_ty), mask=m2)


# ----------------------------------------------------------------------------------------------
# Any hidden size: W_hh streamed tile by tile, state through an fp32 workspace
# ----------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["tile0", "t_begin", "t_end", "B", "hb_per_prog", "n_hp", "sync"])
def fwd_blocked_kernel(
    xg_ptr,
    w_ptr,
    bhn_ptr,
    lens_ptr,
    hbuf_ptr,
    cbuf_ptr,
    out_ptr,
    cs_ptr,
    save_ptr,
    bar_ptr,
    tile0,
    t_begin,
    t_end,
    B,
    H,
    hb_per_prog,
    n_hp,
    sync,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Steps ``t_begin <= t < t_end`` on a 1-d grid of ``n_b * n_hp`` programs. Launch options
    are runtime arguments (one compiled variant serves both blocked paths): ``hb_per_prog``
    hidden blocks per program, ``sync`` the programs of a batch tile meet at a barrier (``bar``,
    as for :func:`fwd_split_kernel`) after each step. ``hbuf`` ``(2, B, H)`` fp32
    double-buffers ``h`` (step ``t`` reads slot ``t % 2``); ``cbuf`` ``(B, H)`` fp32 holds ``c``,
    which only its own block touches. Program ``(pid_b, pid_h)`` owns batch tile ``pid_b`` and
    hidden blocks ``pid_h * hb_per_prog ...``."""
    pid_b, pid_h = _ticket(bar_ptr, n_hp, sync)
    failed = 0
    rows = (tile0 + pid_b) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    lens = tl.load(lens_ptr + rows, mask=rmask, other=0)
    kk = tl.arange(0, BLOCK_K)
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    BH = B * H
    for t in range(t_begin, t_end):
        src = hbuf_ptr + (t % 2) * BH
        dst = hbuf_ptr + ((t + 1) % 2) * BH
        valid = (t < lens)[:, None]
        for jj in range(hb_per_prog):
            cols = (pid_h * hb_per_prog + jj) * BLOCK_H + tl.arange(0, BLOCK_H)
            cmask = cols < H
            m2 = rmask[:, None] & cmask[None, :]
            st = rows[:, None] * H + cols[None, :]
            gt = rows[:, None] * (GW * H) + cols[None, :]
            x0, x1, x2, x3 = _load_gates(xg_ptr + t * (GW * BH) + gt, m2, H, NG, PACK)
            acc0 = x0
            acc1 = x1
            acc2 = x2
            if MODE == 2:
                acc2 = zero  # GRU: W_hn h stays apart from its input part
            acc3 = x3
            for k0 in range(0, H, BLOCK_K):
                ks = k0 + kk
                kmask = ks < H
                hk = tl.load(
                    src + rows[:, None] * H + ks[None, :],
                    mask=rmask[:, None] & kmask[None, :],
                    other=0.0,
                    cache_modifier=".cg",
                ).to(w_ptr.dtype.element_ty)
                wt = w_ptr + cols[None, :] * H + ks[:, None]  # W^T tile (BLOCK_K, BLOCK_H) of gate 0
                wm = kmask[:, None] & cmask[None, :]
                acc0 = _mm(hk, tl.load(wt, mask=wm, other=0.0), acc0, PRECISION, UPCAST)
                if NG > 1:
                    acc1 = _mm(hk, tl.load(wt + H * H, mask=wm, other=0.0), acc1, PRECISION, UPCAST)
                    acc2 = _mm(hk, tl.load(wt + 2 * H * H, mask=wm, other=0.0), acc2, PRECISION, UPCAST)
                if NG > 3:
                    acc3 = _mm(hk, tl.load(wt + 3 * H * H, mask=wm, other=0.0), acc3, PRECISION, UPCAST)
            h = tl.load(src + st, mask=m2, other=0.0, cache_modifier=".cg")
            c = h
            if MODE == 1:
                c = tl.load(cbuf_ptr + st, mask=m2, other=0.0)
            bhn = tl.load(bhn_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            h_new, c_new, s0, s1, s2, s3 = _fwd_cell(acc0, acc1, acc2, acc3, x2, h, c, bhn, MODE, RELU)
            _store_saved(save_ptr, t * (GW * BH) + gt, s0, s1, s2, s3, m2, H, MODE, PACK)
            if MODE == 1:
                c = tl.where(valid, c_new, c)
                tl.store(cbuf_ptr + st, c, mask=m2)
                tl.store(cs_ptr + t * BH + st, c.to(cs_ptr.dtype.element_ty), mask=m2)
            tl.store(dst + st, tl.where(valid, h_new, h), mask=m2)
            y = tl.where(valid, h_new, 0.0)
            if failed:
                y = y + float("nan")
            tl.store(out_ptr + t * BH + st, y.to(out_ptr.dtype.element_ty), mask=m2)
        if sync:
            # the next step reads h blocks that other programs (and threads) just wrote
            failed = _step_barrier(bar_ptr + 2 + pid_b, (t - t_begin + 1) * n_hp, failed)
    if failed:
        tl.atomic_max(bar_ptr + 1, 1)


@triton.jit
def _hidden_grad_block(
    dg_ptr,
    w_ptr,
    direct_ptr,
    u,
    T,
    B,
    H,
    rows,
    rmask,
    cols,
    cmask,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``dh`` flowing into step ``u - 1`` on one tile: ``direct + sum_k dg[u, :, k] @ W_k`` (the
    hidden-side gate gradients; GRU's third in slot 3)
    (``dg[u]`` is zero past the last step, ``u == T``)."""
    st = rows[:, None] * H + cols[None, :]
    acc = tl.load(direct_ptr + st, mask=rmask[:, None] & cmask[None, :], other=0.0, cache_modifier=".cg")
    live = (u + tl.zeros_like(rows)) < T  # a tensor: the interpreter rejects scalar masks
    kk = tl.arange(0, BLOCK_K)
    base = dg_ptr + u * (B * GW * H) + rows[:, None] * (GW * H)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + kk
        kmask = ks < H
        am = (rmask & live)[:, None] & kmask[None, :]
        wm = kmask[:, None] & cmask[None, :]
        for gate in tl.static_range(NG):
            slot = gate
            if MODE == 2:
                if gate == 2:
                    slot = 3  # GRU's hidden-side third gate (see _bwd_cell)
            a = tl.load(base + slot * H + ks[None, :], mask=am, other=0.0, cache_modifier=".cg")
            w = tl.load(w_ptr + (gate * H + ks)[:, None] * H + cols[None, :], mask=wm, other=0.0)
            acc = _mm(a, w, acc, PRECISION, UPCAST)
    return acc


@triton.jit(do_not_specialize=["tile0", "u_hi", "u_lo", "T", "B", "hb_per_prog", "n_hp", "sync", "epilogue"])
def bwd_blocked_kernel(
    w_ptr,
    h0_ptr,
    c0_ptr,
    lens_ptr,
    out_ptr,
    cs_ptr,
    save_ptr,
    dout_ptr,
    direct_ptr,
    dc_ptr,
    dgi_ptr,
    dh0_ptr,
    bar_ptr,
    tile0,
    u_hi,
    u_lo,
    T,
    B,
    H,
    hb_per_prog,
    n_hp,
    sync,
    epilogue,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Stages ``u_hi >= u > u_lo``; stage ``u`` finishes ``dh`` for step ``u - 1`` from the gate
    gradients of step ``u`` and then runs the backward of step ``u - 1`` on its own hidden block.
    ``direct`` ``(B, H)`` fp32 holds the part of ``dh`` that skips ``W_hh`` (start: ``dh_n``);
    ``dc`` ``(B, H)`` fp32 the cell gradient. ``epilogue`` runs stage 0, which writes ``dh0``.
    Grid, ``hb_per_prog``, ``n_hp``, ``sync`` and ``bar`` as for :func:`fwd_blocked_kernel`."""
    pid_b, pid_h = _ticket(bar_ptr, n_hp, sync)
    failed = 0
    rows = (tile0 + pid_b) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    lens = tl.load(lens_ptr + rows, mask=rmask, other=0)
    for s in range(u_hi - u_lo):
        u = u_hi - s
        t = u - 1
        valid = (t < lens)[:, None]
        for jj in range(hb_per_prog):
            cols = (pid_h * hb_per_prog + jj) * BLOCK_H + tl.arange(0, BLOCK_H)
            cmask = cols < H
            m2 = rmask[:, None] & cmask[None, :]
            st = rows[:, None] * H + cols[None, :]
            gt = rows[:, None] * (GW * H) + cols[None, :]
            dh = _hidden_grad_block(
                dgi_ptr,
                w_ptr,
                direct_ptr,
                u,
                T,
                B,
                H,
                rows,
                rmask,
                cols,
                cmask,
                MODE,
                NG,
                GW,
                BLOCK_K,
                PRECISION,
                UPCAST,
            )
            l0, l1, l2, l3, l4, l5, l6 = _bwd_loads(
                t, m2, st, gt, h0_ptr, c0_ptr, out_ptr, cs_ptr, save_ptr, dout_ptr, B, H, MODE, GW, PACK
            )
            dc = tl.load(dc_ptr + st, mask=m2, other=0.0)
            d0, d1, d2, d3, direct, dc = _bwd_cell(
                dh, dc, t, valid, l0, l1, l2, l3, l4, l5, l6, m2, gt, dgi_ptr, B, H, MODE, NG, GW, RELU, PACK
            )
            tl.store(direct_ptr + st, direct, mask=m2)
            if MODE == 1:
                tl.store(dc_ptr + st, dc, mask=m2)
        if sync:
            # the next stage reads gate gradients of every hidden block of this step
            failed = _step_barrier(bar_ptr + 2 + pid_b, (s + 1) * n_hp, failed)
    if epilogue:
        for jj in range(hb_per_prog):
            cols = (pid_h * hb_per_prog + jj) * BLOCK_H + tl.arange(0, BLOCK_H)
            cmask = cols < H
            dh = _hidden_grad_block(
                dgi_ptr,
                w_ptr,
                direct_ptr,
                u_lo,
                T,
                B,
                H,
                rows,
                rmask,
                cols,
                cmask,
                MODE,
                NG,
                GW,
                BLOCK_K,
                PRECISION,
                UPCAST,
            )
            if failed:
                dh = dh + float("nan")
            tl.store(dh0_ptr + rows[:, None] * H + cols[None, :], dh, mask=rmask[:, None] & cmask[None, :])
    if failed:
        tl.atomic_max(bar_ptr + 1, 1)


# ----------------------------------------------------------------------------------------------
# Hidden dimension split over programs that synchronise each step (persistent RNNs)
# ----------------------------------------------------------------------------------------------

#: Polls (about a second) a program waits at a step barrier before it gives up, stops waiting
#: at later barriers and poisons its outputs with NaN: a guard against a hang should the
#: programs of one batch tile not all be resident at once.
SPIN_LIMIT = tl.constexpr(1 << 20)
#: the most bytes of shared memory a split backward program's ``W_hh`` slices and all its gates'
#: gradient operands may take together for it to read those operands all at once (an H100
#: block has 227 KiB; Triton's layout conversions take some of the rest)
READ_FIRST_MAX_BYTES = tl.constexpr(192 * 1024)


@triton.jit
def _ticket(bar_ptr, n_h, sync):
    """``(pid_b, pid_h)`` of this program: batch tile ``tile0 + pid_b`` of the launch, hidden
    part ``pid_h``. With ``sync`` the ids are handed out in the order the programs start (an
    atomic ticket), so a program that waits at a barrier only waits for programs that have
    started or can start (the host launches no more programs at once than the GPU holds)."""
    pid = tl.program_id(0)
    if sync:
        pid = tl.atomic_add(bar_ptr, 1)
    return pid // n_h, pid % n_h


@triton.jit
def _step_barrier(bar_ptr, target, failed):
    """Arrive at ``bar_ptr`` (a monotone counter per batch tile) and wait until it reaches
    ``target``; the writes of every program before its arrival are then visible (through L2).
    Returns ``failed``, or 1 if the wait gave up after ``SPIN_LIMIT`` polls (once failed, a
    program no longer waits). Scalar atomics run on one thread; the CTA barriers order the
    other threads' stores before it and their loads after it."""
    tl.debug_barrier()  # every thread of this program has issued its stores
    tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
    spins = 0
    limit = SPIN_LIMIT * (1 - failed)
    while (seen < target) & (spins < limit):
        seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    tl.debug_barrier()
    return failed | (seen < target).to(tl.int32)


@triton.jit(do_not_specialize=["tile0", "t_begin", "t_end", "B", "n_h", "sync"])
def fwd_split_kernel(
    xg_ptr,
    w_ptr,
    bhn_ptr,
    lens_ptr,
    h0_ptr,
    c0_ptr,
    hfirst_ptr,
    hx_ptr,
    hn_ptr,
    cn_ptr,
    out_ptr,
    cs_ptr,
    save_ptr,
    bar_ptr,
    tile0,
    t_begin,
    t_end,
    B,
    H,
    n_h,
    sync,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HP: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    NK: tl.constexpr = 1,
    SIDE: tl.constexpr = False,
):
    """Steps ``t_begin <= t < t_end`` on a 1-d grid of ``n_b * n_h`` programs; program
    ``(pid_b, pid_h)`` owns batch tile ``pid_b`` and hidden columns ``pid_h * BLOCK_H ...`` of every
    gate, and keeps its slice of ``W_hh`` (``NG`` tiles ``(HP, BLOCK_H)``) on chip for all steps.
    Each step reads the whole previous ``h`` of its batch tile from ``hx`` ``(2, B, H)`` (dtype
    of ``W_hh``; step ``t`` reads slot ``t % 2``) and writes its own columns to the other slot.
    With ``sync`` the programs of a batch tile meet at a barrier after every step (one launch for
    the sequence; needs them all resident at once); without it the host launches one step at a
    time. ``h0``/``c0`` ``(B, H)``: the initial state, read by the launch that starts at step 0
    (the own columns' exact ``h``/``c``), and ``hfirst`` the whole ``h`` that step 0 multiplies
    (``h0`` itself, or its copy in ``W_hh``'s dtype). ``hn``/``cn`` ``(B, H)`` hold the final
    state (the caller's dtype), and between launches that do not end the sequence carry the own
    columns' exact ``h``/``c`` to the next (fp32, the interpreter's step by step launches).
    So the host copies nothing in or out. ``bar`` int32 ``(2 + n_b,)``: ticket, error flag, one
    barrier counter per batch tile of the launch (zeroed by the host); ``tile0`` the launch's
    first batch tile (the host launches no more tiles at once than the GPU holds). ``NK`` > 1:
    the recurrent product's reduction in ``NK`` slices (``Plan.k_slices``). ``SIDE``: the
    recurrent product of every gate as one 2-d product, the gates side by side, in two
    independent halves of the reduction (``Plan.side_gates``, :func:`_side_products`)."""
    pid_b, pid_h = _ticket(bar_ptr, n_h, sync)
    rows = (tile0 + pid_b) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    m2 = rmask[:, None] & cmask[None, :]
    lens = tl.load(lens_ptr + rows, mask=rmask, other=0)
    st = rows[:, None] * H + cols[None, :]
    # h's rows, and W^T's slice (HP in, BLOCK_H out) of gate 0; in NK slices of the reduction,
    # or (SIDE) in two halves, each its own 2-d operands
    SIDE2D: tl.constexpr = SIDE and NK == 1
    HALVES: tl.constexpr = SIDE2D and HP >= 32
    if HALVES:
        hrow, hm, wt, wm = _k_range(rows, rmask, cols, cmask, H, H, 0, HP // 2, False)
        hrow2, hm2, wt2, wm2 = _k_range(rows, rmask, cols, cmask, H, H, HP // 2, HP // 2, False)
    else:
        hrow, hm, wt, wm = _k_slices(rows, rmask, cols, cmask, H, H, HP, NK, False)
    w0, w1, w2, w3 = _gate_tiles(w_ptr + wt, wm, H * H, NG)
    # sliced or side-by-side gates: one product, the gates apart after it
    JOINED: tl.constexpr = (NK > 1 or SIDE) and NG > 1
    # the gates come apart from one tile already: the packed stores would join them again
    # (compiled for sm_90, LSTM fp32 H = 512: 6 layout conversions a step instead of 14)
    IO_PACK: tl.constexpr = PACK and not JOINED
    # every tile loaded before any is joined: Triton 3.6 compiles the other order's loop (LSTM
    # fp32 H = 512) to a quarter more cycles a step, 4999 against 4044 (3.9: 5174 against 3596)
    v0, v1, v2, v3 = w0, w1, w2, w3
    if HALVES:
        v0, v1, v2, v3 = _gate_tiles(w_ptr + wt2, wm2, H * H, NG)
    w_all = w0
    w_all2 = v0
    if JOINED:
        w_all = _gates_side_by_side(w0, w1, w2, w3)
        w_all2 = _gates_side_by_side(v0, v1, v2, v3)
    zero = 0.0
    if SIDE2D:  # each half's product starts from a zero Triton cannot fold into the other's chain
        zero = _unfolded_zero(lens, tl.zeros((BLOCK_B, w_all.shape[1]), tl.float32))
    bhn = tl.load(bhn_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    if t_begin == 0:
        h = tl.load(h0_ptr + st, mask=m2, other=0.0).to(tl.float32)
        c = h
        if MODE == 1:
            c = tl.load(c0_ptr + st, mask=m2, other=0.0).to(tl.float32)
    else:
        h = tl.load(hn_ptr + st, mask=m2, other=0.0).to(tl.float32)
        c = h
        if MODE == 1:
            c = tl.load(cn_ptr + st, mask=m2, other=0.0).to(tl.float32)
    failed = 0
    BH = B * H
    gt = rows[:, None] * (GW * H) + cols[None, :]
    x0, x1, x2, x3 = _load_gates(xg_ptr + t_begin * (GW * BH) + gt, m2, H, NG, IO_PACK)
    for t in range(t_begin, t_end):
        valid = (t < lens)[:, None]
        # the next step's input projections, fetched while this step waits and computes
        nm = m2 & ((t + 1 + tl.zeros_like(rows)) < t_end)[:, None]
        n0, n1, n2, n3 = _load_gates(xg_ptr + (t + 1) * (GW * BH) + gt, nm, H, NG, IO_PACK)
        hsrc = hx_ptr + (t % 2) * BH  # step t reads slot t % 2, step 0 the initial h
        if t == 0:
            hsrc = hfirst_ptr
        hk = tl.load(hsrc + hrow, mask=hm, other=0.0, cache_modifier=".cg")
        hk2 = hk
        if HALVES:
            hk2 = tl.load(hsrc + hrow2, mask=hm2, other=0.0, cache_modifier=".cg")
        if SIDE2D:
            p0, p1, p2, p3 = _side_products(
                hk, w_all, hk2, w_all2, zero, x0, x1, x2, x3, NG, MODE, HALVES, PRECISION, UPCAST
            )
        elif JOINED:
            p0, p1, p2, p3 = _sliced_products(hk, w_all, x0, x1, x2, x3, MODE, PRECISION, UPCAST)
        else:
            p0, p1, p2, p3 = _hidden_products(hk, w0, w1, w2, w3, x0, x1, x2, x3, NG, MODE, PRECISION, UPCAST)
        h_new, c_new, s0, s1, s2, s3 = _fwd_cell(p0, p1, p2, p3, x2, h, c, bhn, MODE, RELU)
        _store_saved(save_ptr, t * (GW * BH) + gt, s0, s1, s2, s3, m2, H, MODE, IO_PACK)
        if MODE == 1:
            c = tl.where(valid, c_new, c)
            tl.store(cs_ptr + t * BH + st, c.to(cs_ptr.dtype.element_ty), mask=m2)
        h = tl.where(valid, h_new, h)
        tl.store(hx_ptr + ((t + 1) % 2) * BH + st, h.to(hx_ptr.dtype.element_ty), mask=m2)
        y = tl.where(valid, h_new, 0.0)
        if sync:
            failed = _step_barrier(bar_ptr + 2 + pid_b, (t - t_begin + 1) * n_h, failed)
            y = tl.where(failed + tl.zeros_like(rows)[:, None] > 0, float("nan"), y)
        tl.store(out_ptr + t * BH + st, y.to(out_ptr.dtype.element_ty), mask=m2)
        x0 = n0
        x1 = n1
        x2 = n2
        x3 = n3
    tl.store(hn_ptr + st, h.to(hn_ptr.dtype.element_ty), mask=m2)
    if MODE == 1:
        tl.store(cn_ptr + st, c.to(cn_ptr.dtype.element_ty), mask=m2)
    if t_begin == 0:  # the row before out: h0 (stored before the loop, it costs the loop cycles)
        h0 = tl.load(h0_ptr + st, mask=m2, other=0.0)
        tl.store(out_ptr - BH + st, h0.to(out_ptr.dtype.element_ty), mask=m2)
    if failed:
        tl.atomic_max(bar_ptr + 1, 1)


@triton.jit(do_not_specialize=["tile0", "u_hi", "u_lo", "T", "B", "n_h", "sync", "epilogue"])
def bwd_split_kernel(
    w_ptr,
    h0_ptr,
    c0_ptr,
    lens_ptr,
    out_ptr,
    cs_ptr,
    save_ptr,
    dout_ptr,
    dhn_ptr,
    dcn_ptr,
    direct_ptr,
    dc_ptr,
    dgi_ptr,
    dh0_ptr,
    dc0_ptr,
    bar_ptr,
    tile0,
    u_hi,
    u_lo,
    T,
    B,
    H,
    n_h,
    sync,
    epilogue,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HP: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    NK: tl.constexpr = 1,
):
    """Stages ``u_hi >= u > u_lo`` of the backward on the grid of :func:`fwd_split_kernel`; stage
    ``u`` finishes ``dh`` for step ``u - 1`` on the own columns, ``direct + sum_k dg[u, :, k] @
    W_k[:, cols]`` (``W_hh`` column slices kept on chip), then runs the backward of step ``u - 1``
    there; with ``sync`` a barrier follows each stage, since the next one reads the gate
    gradients of every column. The launch that starts at ``u_hi == T`` reads the upstream state
    gradients ``dhn``/``dcn`` ``(B, H)`` (the caller's dtype; zeros where none came);
    ``direct``/``dc`` ``(B, H)`` fp32 carry the part of ``dh`` that skips ``W_hh`` and the cell
    gradient from one launch to the next: every launch stores them at its end, and a launch that
    starts below ``T`` reads them (the interpreter's, a step each). ``epilogue`` writes ``dh0``
    and (LSTM) ``dc0`` ``(B, H)``, in their own dtypes."""
    pid_b, pid_h = _ticket(bar_ptr, n_h, sync)
    rows = (tile0 + pid_b) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    m2 = rmask[:, None] & cmask[None, :]
    lens = tl.load(lens_ptr + rows, mask=rmask, other=0)
    st = rows[:, None] * H + cols[None, :]
    gt = rows[:, None] * (GW * H) + cols[None, :]
    if u_hi == T:
        direct = tl.load(dhn_ptr + st, mask=m2, other=0.0).to(tl.float32)
        dc = tl.load(dcn_ptr + st, mask=m2, other=0.0).to(tl.float32)
    else:
        direct = tl.load(direct_ptr + st, mask=m2, other=0.0)
        dc = tl.load(dc_ptr + st, mask=m2, other=0.0)
    # gate gradients' rows, and gate 0's W slice as stored (HP out, BLOCK_H in); NK slices
    grow, gm0, wo, wm = _k_slices(rows, rmask, cols, cmask, H, GW * H, HP, NK, True)
    w0, w1, w2, w3 = _gate_tiles(w_ptr + wo, wm, H * H, NG)
    # Each stage reads every gate's gradients first (one wait on the L2 instead of one per gate)
    # and multiplies each gate apart (_gate_grad_products), where those operands fit in shared
    # memory beside the W_hh slices; else gate by gate in one chain, as the operands then take
    # turns there (all four LSTM fp32 H = 512 operands with its slices: 256 KiB)
    W_BYTES: tl.constexpr = NG * HP * BLOCK_H * w_ptr.dtype.element_ty.primitive_bitwidth // 8
    A_BYTES: tl.constexpr = NG * HP * BLOCK_B * dgi_ptr.dtype.element_ty.primitive_bitwidth // 8
    READ_FIRST: tl.constexpr = W_BYTES + A_BYTES <= READ_FIRST_MAX_BYTES
    zero = _unfolded_zero(lens, direct)
    if NK > 1:
        zero = tl.broadcast_to(zero[None, :, :], (NK, BLOCK_B, BLOCK_H))
    failed = 0
    BH = B * H
    l0, l1, l2, l3, l4, l5, l6 = _bwd_loads(
        u_hi - 1, m2, st, gt, h0_ptr, c0_ptr, out_ptr, cs_ptr, save_ptr, dout_ptr, B, H, MODE, GW, PACK
    )
    for s in range(u_hi - u_lo + epilogue):
        u = u_hi - s
        # the next stage's reads, fetched while this one waits and computes (none past u_lo)
        nt = u - 2
        if u - 1 <= u_lo:
            nt = -1
        n0, n1, n2, n3, n4, n5, n6 = _bwd_loads(
            nt, m2, st, gt, h0_ptr, c0_ptr, out_ptr, cs_ptr, save_ptr, dout_ptr, B, H, MODE, GW, PACK
        )
        # dg[u] is zero past the last step (u == T): mask its loads off
        live = (u + tl.zeros_like(rows)) < T
        if NK == 1:  # the unsliced mask as it was
            gm = (rmask & live)[:, None] & (tl.arange(0, HP) < H)[None, :]
        else:
            gm = gm0 & live[None, :, None]
        base = dgi_ptr + u * (GW * BH) + grow
        if NK == 1:
            dh = direct
        else:
            dh = tl.zeros((NK, BLOCK_B, BLOCK_H), tl.float32)
        if READ_FIRST:  # every gate's gradients, then each gate's product apart
            a0 = tl.load(base, mask=gm, other=0.0, cache_modifier=".cg")
            a1 = a0
            a2 = a0
            a3 = a0
            if NG > 1:
                a1 = tl.load(base + H, mask=gm, other=0.0, cache_modifier=".cg")
                a2 = tl.load(base + (3 if MODE == 2 else 2) * H, mask=gm, other=0.0, cache_modifier=".cg")
            if NG > 3:
                a3 = tl.load(base + 3 * H, mask=gm, other=0.0, cache_modifier=".cg")
            dh = _gate_grad_products(a0, a1, a2, a3, w0, w1, w2, w3, dh, zero, NG, True, PRECISION, UPCAST)
        else:  # gate by gate, one chain
            dh = _mm(tl.load(base, mask=gm, other=0.0, cache_modifier=".cg"), w0, dh, PRECISION, UPCAST)
            if NG > 1:
                a1 = tl.load(base + H, mask=gm, other=0.0, cache_modifier=".cg")
                dh = _mm(a1, w1, dh, PRECISION, UPCAST)
                a2 = tl.load(base + (3 if MODE == 2 else 2) * H, mask=gm, other=0.0, cache_modifier=".cg")
                dh = _mm(a2, w2, dh, PRECISION, UPCAST)
            if NG > 3:
                a3 = tl.load(base + 3 * H, mask=gm, other=0.0, cache_modifier=".cg")
                dh = _mm(a3, w3, dh, PRECISION, UPCAST)
        if NK > 1:
            dh = direct + tl.sum(dh, axis=0)
        if u > u_lo:
            t = u - 1
            valid = (t < lens)[:, None]
            d0, d1, d2, d3, direct, dc = _bwd_cell(
                dh, dc, t, valid, l0, l1, l2, l3, l4, l5, l6, m2, gt, dgi_ptr, B, H, MODE, NG, GW, RELU, PACK
            )
            if sync:
                failed = _step_barrier(bar_ptr + 2 + pid_b, (s + 1) * n_h, failed)
        else:
            if failed:
                dh = dh + float("nan")
            tl.store(dh0_ptr + st, dh.to(dh0_ptr.dtype.element_ty), mask=m2)
        l0 = n0
        l1 = n1
        l2 = n2
        l3 = n3
        l4 = n4
        l5 = n5
        l6 = n6
    tl.store(direct_ptr + st, direct, mask=m2)
    tl.store(dc_ptr + st, dc, mask=m2)
    if MODE == 1 and epilogue:
        tl.store(dc0_ptr + st, dc.to(dc0_ptr.dtype.element_ty), mask=m2)
    if failed:
        tl.atomic_max(bar_ptr + 1, 1)


# ----------------------------------------------------------------------------------------------
# Large sizes: the recurrent product of each step is a library matrix product (cuBLAS) made by
# the host; these kernels fuse the rest of the step
# ----------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["t", "B"])
def fwd_cell_kernel(
    xg_ptr,
    gh_ptr,
    bhn_ptr,
    lens_ptr,
    hst_ptr,
    cst_ptr,
    out_ptr,
    cs_ptr,
    save_ptr,
    t,
    B,
    H,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Step ``t`` on a ``(batch tiles, hidden blocks)`` grid from ``gh`` ``(B, G)`` = ``h_{t-1}
    W_hh^T``: gate arithmetic, saved values, ``out[t]``; ``hst``/``cst`` ``(B, H)`` fp32 hold the
    state (frozen past each sequence's end)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < B
    cmask = cols < H
    m2 = rmask[:, None] & cmask[None, :]
    st = rows[:, None] * H + cols[None, :]
    gt = rows[:, None] * (GW * H) + cols[None, :]
    BH = B * H
    valid = (t < tl.load(lens_ptr + rows, mask=rmask, other=0))[:, None]
    x0, x1, x2, x3 = _load_gates(xg_ptr + t * (GW * BH) + gt, m2, H, NG, PACK)
    g0, g1, g2, g3 = _load_gates(gh_ptr + gt, m2, H, NG, PACK)
    p2 = x2 + g2
    if MODE == 2:
        p2 = g2  # GRU: W_hn h stays apart from its input part
    bhn = tl.load(bhn_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    h = tl.load(hst_ptr + st, mask=m2, other=0.0)
    c = h
    if MODE == 1:
        c = tl.load(cst_ptr + st, mask=m2, other=0.0)
    h_new, c_new, s0, s1, s2, s3 = _fwd_cell(x0 + g0, x1 + g1, p2, x3 + g3, x2, h, c, bhn, MODE, RELU)
    _store_saved(save_ptr, t * (GW * BH) + gt, s0, s1, s2, s3, m2, H, MODE, PACK)
    if MODE == 1:
        c = tl.where(valid, c_new, c)
        tl.store(cst_ptr + st, c, mask=m2)
        tl.store(cs_ptr + t * BH + st, c.to(cs_ptr.dtype.element_ty), mask=m2)
    tl.store(hst_ptr + st, tl.where(valid, h_new, h), mask=m2)
    tl.store(out_ptr + t * BH + st, tl.where(valid, h_new, 0.0).to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["t", "B", "has_rec"])
def bwd_cell_kernel(
    rec_ptr,
    h0_ptr,
    c0_ptr,
    lens_ptr,
    out_ptr,
    cs_ptr,
    save_ptr,
    dout_ptr,
    direct_ptr,
    dc_ptr,
    dgi_ptr,
    t,
    B,
    H,
    has_rec,
    MODE: tl.constexpr,
    NG: tl.constexpr,
    GW: tl.constexpr,
    RELU: tl.constexpr,
    PACK: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """The backward of step ``t`` on a ``(batch tiles, hidden blocks)`` grid: ``dh`` is
    ``direct`` plus, with ``has_rec``, ``rec`` ``(B, H)`` from the host (the hidden-side gate
    gradients of step ``t + 1`` times ``W_hh``); writes the gate gradients of step ``t`` and
    updates ``direct``/``dc`` ``(B, H)`` fp32."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < B
    cmask = cols < H
    m2 = rmask[:, None] & cmask[None, :]
    st = rows[:, None] * H + cols[None, :]
    gt = rows[:, None] * (GW * H) + cols[None, :]
    valid = (t < tl.load(lens_ptr + rows, mask=rmask, other=0))[:, None]
    l0, l1, l2, l3, l4, l5, l6 = _bwd_loads(
        t, m2, st, gt, h0_ptr, c0_ptr, out_ptr, cs_ptr, save_ptr, dout_ptr, B, H, MODE, GW, PACK
    )
    rm = m2 & ((has_rec + tl.zeros_like(rows)) > 0)[:, None]
    dh = tl.load(direct_ptr + st, mask=m2, other=0.0) + tl.load(rec_ptr + st, mask=rm, other=0.0).to(
        tl.float32
    )
    dc = tl.load(dc_ptr + st, mask=m2, other=0.0)
    d0, d1, d2, d3, direct, dc = _bwd_cell(
        dh, dc, t, valid, l0, l1, l2, l3, l4, l5, l6, m2, gt, dgi_ptr, B, H, MODE, NG, GW, RELU, PACK
    )
    tl.store(direct_ptr + st, direct, mask=m2)
    tl.store(dc_ptr + st, dc, mask=m2)
