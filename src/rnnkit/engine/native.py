"""The native engine: PyTorch's own recurrent kernels, the ones ``torch.nn.LSTM`` runs.

cuDNN on CUDA; oneDNN or ATen's loop on the CPU. One direction of one layer per call, so the
layers compose it like every other engine (stacking, directions, dropout and lengths stay theirs).
It is ``engine="auto"``'s choice on CUDA where cuDNN was measured faster than the Triton kernels
(:func:`preferred`), where Triton is missing, and for dtypes the kernels lack (float64).

Variable lengths go through a ``PackedSequence``, as in ``torch.nn``: the batch is sorted by
length, packed, run, unpacked and put back in order, so the output is zero past each sequence's
end and the final state is each sequence's state at its last valid step.

Shapes: ``x`` ``(T, B, I)``; ``state`` ``(h0,)`` or ``(h0, c0)`` each ``(B, H)``; ``lengths``
``(B,)`` int64 or ``None``; output ``(T, B, H)``.
"""

from __future__ import annotations

import warnings

import torch
from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .common import LayerWeights, State

__all__ = ["run", "supports", "preferred"]

MODES = ("rnn", "lstm", "gru")

#: cuDNN warns on every call whose weights are not one flat buffer (``flatten_parameters``);
#: rnnkit's layers keep torch.nn's separate parameters, and the compaction it warns about is one
#: copy of the weights per call.
_FLAT_WEIGHTS_WARNING = "RNN module weights are not part of single contiguous chunk of memory"


def supports(mode: str, x: Tensor, weights: LayerWeights) -> bool:
    """Whether this engine runs the call: a known mode, floating-point weights like ``x``."""
    return (
        mode in MODES
        and x.dim() == 3
        and x.dtype.is_floating_point
        and all(w is None or (w.dtype == x.dtype and w.device == x.device) for w in weights)
    )


def preferred(mode: str, batch: int, hidden_size: int, dtype: torch.dtype) -> bool:
    """Whether cuDNN beats rnnkit's Triton kernels for this call, by the H100 measurements in
    ``benchmarks/results/gpu.md`` (forward + backward; Triton / cuDNN):

    - float32 (TF32 products) with ``H <= 128``: cuDNN's fp32 kernels take 1-7 µs a step, the
      Triton kernels 1.01-3.3x that (the RNN cell also at ``H = 256``: 1.53x);
    - ``B * H >= 256 * 1024``: large products, where cuDNN's GEMMs lead (Triton 1.35-1.39x).

    Everywhere else measured the Triton kernels take 0.04-0.88x cuDNN's time. With
    ``torch.backends.cudnn.benchmark`` set, ``auto`` times both instead of using this rule.
    """
    if dtype == torch.float32 and (hidden_size <= 128 or (mode == "rnn" and hidden_size <= 256)):
        return True
    return batch * hidden_size >= 256 * 1024


def run(
    mode: str,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> tuple[Tensor, State]:
    """Run one direction of one layer over ``x`` with PyTorch's kernels; the engines' contract.

    Returns ``output`` ``(T, B, H)`` (zero past each sequence's end) and the final state.
    """
    if mode not in MODES:
        raise ValueError(f"native engine: mode must be one of {MODES}, got {mode!r}")
    if mode == "rnn" and nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"native engine: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    T, B, _ = x.shape
    has_biases = weights.bias_ih is not None
    params = [w for w in weights if w is not None]
    # cuDNN keeps what its backward needs only in training mode: ask for it whenever autograd records
    train = torch.is_grad_enabled()
    hx = [s.unsqueeze(0) for s in state]  # (1, B, H) each: one layer, one direction
    if lengths is not None and lengths.device.type == "cpu" and bool((lengths == T).all()):
        lengths = None  # every sequence full: no packing
    sorted_idx = unsorted_idx = None
    if lengths is not None:
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        sorted_idx, unsorted_idx = packed.sorted_indices, packed.unsorted_indices
        hx = [h.index_select(1, sorted_idx) for h in hx]
        head: tuple = (packed.data, packed.batch_sizes)
        tail: tuple = (has_biases, 1, 0.0, train, False)
    else:
        head, tail = (x,), (has_biases, 1, 0.0, train, False, False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FLAT_WEIGHTS_WARNING)
        if mode == "lstm":
            out, h_n, c_n = _VF.lstm(*head, hx, params, *tail)
            final = [h_n, c_n]
        else:
            fn = {"gru": _VF.gru, "rnn": _VF.rnn_relu if nonlinearity == "relu" else _VF.rnn_tanh}[mode]
            out, h_n = fn(*head, hx[0], params, *tail)
            final = [h_n]
    if lengths is not None:
        packed_out = PackedSequence(out, packed.batch_sizes, sorted_idx, unsorted_idx)
        out, _ = pad_packed_sequence(packed_out, total_length=T)  # (T, B, H), original order
        final = [s.index_select(1, unsorted_idx) for s in final]
    return out, tuple(s.squeeze(0) for s in final)
