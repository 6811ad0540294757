"""Recurrent layers: drop-ins for ``torch.nn.RNN``, ``LSTM`` and ``GRU``.

Layers compose: each stacks ``L`` layers of ``D`` directions, and each direction of each
layer is one call of an engine (:mod:`rnnkit.engine`) over the whole sequence.

Shapes: ``T`` time, ``B`` batch, ``I`` input size, ``H`` hidden size, ``D`` directions
(2 if bidirectional else 1), ``L`` layers.

- input: ``(T, B, I)``, ``(B, T, I)`` with ``batch_first=True``, ``(T, I)`` unbatched, or a
  ``PackedSequence``
- ``h_0``, ``c_0``: ``(D*L, B, H)`` (``(D*L, H)`` unbatched), whatever ``batch_first`` says
- output: ``(T, B, D*H)`` (or ``(B, T, D*H)``, ``(T, D*H)``, or a ``PackedSequence``)
- ``h_n``, ``c_n``: ``(D*L, B, H)``
- ``lengths``: ``(B,)`` integers in ``[1, T]``, any order
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import engine as engines
from .cells import gate_width
from .engine import LayerWeights, reverse_within_lengths

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "set_engine"]

LengthsLike = Tensor | Sequence[int]


class RNNBase(nn.Module):
    """Stacked, optionally bidirectional recurrent layer; see :class:`RNN`, :class:`LSTM`, :class:`GRU`."""

    mode: str = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        nonlinearity: str = "tanh",
        engine: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: {arg} must be a positive integer, got {value!r}")
        if not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError(f"{name}: num_layers must be a positive integer, got {num_layers!r}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout <= 1) or isinstance(dropout, bool):
            raise ValueError(f"{name}: dropout must be a number in [0, 1], got {dropout!r}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"{name}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self._check_engine(engine)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.nonlinearity = nonlinearity
        self.engine = engine

        factory = {"device": device, "dtype": dtype}
        G = gate_width(self.mode, hidden_size)
        D = 2 if bidirectional else 1
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            for direction in range(D):
                layer_input = input_size if layer == 0 else hidden_size * D
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {"weight_ih": (G, layer_input), "weight_hh": (G, hidden_size)}
                if bias:
                    shapes.update(bias_ih=(G,), bias_hh=(G,))
                for kind, shape in shapes.items():
                    pname = kind + suffix
                    setattr(self, pname, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(pname)
        self.reset_parameters()

    # --- torch.nn compatibility -------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/√H, 1/√H), in PyTorch's order (same seed, same values)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op, kept so code written for ``torch.nn`` (which compacts cuDNN weights) runs."""

    @property
    def all_weights(self) -> list[list[Tensor]]:
        per = 4 if self.bias else 2
        flat = [getattr(self, n) for n in self._flat_weights_names]
        return [flat[i : i + per] for i in range(0, len(flat), per)]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {
            "num_layers": 1,
            "bias": True,
            "batch_first": False,
            "dropout": 0.0,
            "bidirectional": False,
            "engine": "auto",
        }
        if self.mode == "rnn":
            defaults["nonlinearity"] = "tanh"
        for key, default in defaults.items():
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s

    def __setattr__(self, key: str, value: object) -> None:
        if key == "engine":
            self._check_engine(value)
        super().__setattr__(key, value)

    def _check_engine(self, engine: object) -> None:
        if engine not in engines.ENGINES:
            raise ValueError(
                f"{type(self).__name__}: engine must be one of {engines.ENGINES}, got {engine!r}"
            )

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def layer_weights(self, layer: int, direction: int = 0) -> LayerWeights:
        """The parameters of one direction of one layer."""
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        get = lambda kind: getattr(self, kind + suffix) if self.bias or "weight" in kind else None  # noqa: E731
        return LayerWeights(get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"))

    # --- forward --------------------------------------------------------------------------

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | tuple[Tensor, Tensor] | None = None,
        *,
        lengths: LengthsLike | None = None,
    ):
        """Run the stack over a sequence; returns ``(output, h_n)`` (LSTM: ``(output, (h_n, c_n))``).

        Shapes: see the module docstring. ``lengths`` gives each sequence's length (any order);
        outputs past a sequence's end are zero and ``h_n`` is the state at its last valid step.
        """
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError(f"{name}: pass lengths= or a PackedSequence, not both")
            x, lens = pad_packed_sequence(input)  # (T, B, I) in the caller's batch order
            batched, batch_first = True, False
        else:
            if not isinstance(input, Tensor):
                raise TypeError(
                    f"{name}: expected input to be a Tensor or PackedSequence, got {type(input).__name__}"
                )
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{name}: expected input of 3 dimensions (T, B, I) or (B, T, I) with "
                    f"batch_first=True, or 2 dimensions (T, I) unbatched; got shape {tuple(input.shape)}"
                )
            batched, batch_first = input.dim() == 3, self.batch_first
            x = input if batched else input.unsqueeze(1)
            if batched and batch_first:
                x = x.transpose(0, 1)  # (T, B, I)
            lens = None
        T, B = x.shape[0], x.shape[1]
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: expected input feature size {self.input_size}, got {x.shape[-1]} "
                f"(input shape {tuple(input.data.shape if packed else input.shape)})"
            )
        if x.dtype != self.weight_ih_l0.dtype:
            raise TypeError(
                f"{name}: input dtype {x.dtype} does not match the layer's weights "
                f"({self.weight_ih_l0.dtype}); convert one with .to(dtype)"
            )
        if T == 0 or B == 0:
            raise ValueError(f"{name}: expected a non-empty sequence, got T={T}, B={B}")
        if lengths is not None:
            if not batched:
                raise ValueError(f"{name}: lengths= needs batched (3-D) input")
            lens = self._check_lengths(lengths, T, B, x.device)
        state = self._initial_state(hx, x, batched)
        if not torch.is_autocast_enabled(x.device.type):
            output, final = self._run_stack(x, state, lens)
        else:  # the stack in one dtype, chosen here rather than op by op
            low = engines.autocast_dtype(self.engine, x)
            with torch.autocast(x.device.type, enabled=False):
                if low is None:  # the CPU engines: float32 (the fused engine has no bf16 path)
                    output, final = self._run_stack(x, state, lens)
                else:  # Triton's or cuDNN's kernels in autocast's dtype, as torch.nn's under autocast
                    output, final = self._run_stack(x.to(low), [s.to(low) for s in state], lens, low)

        if packed:
            sorted_idx = input.sorted_indices
            out_sorted = output if sorted_idx is None else output.index_select(1, sorted_idx)
            lens_sorted = lens if sorted_idx is None else lens.index_select(0, sorted_idx.cpu())
            data = pack_padded_sequence(out_sorted, lens_sorted.cpu(), enforce_sorted=True).data
            output = PackedSequence(data, input.batch_sizes, sorted_idx, input.unsorted_indices)
        elif not batched:
            output = output.squeeze(1)
            final = tuple(s.squeeze(1) for s in final)
        elif batch_first:
            output = output.transpose(0, 1)
        if self.mode == "lstm":
            return output, (final[0], final[1])
        return output, final[0]

    def _check_lengths(self, lengths: LengthsLike, T: int, B: int, device: torch.device) -> Tensor:
        name = type(self).__name__
        if isinstance(lengths, Tensor):
            if lengths.device.type != "cpu" and lengths.device != device:
                raise ValueError(
                    f"{name}: lengths must be on the CPU or on the input's device ({device}), "
                    f"got {lengths.device}"
                )
            if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
                raise TypeError(f"{name}: lengths must be integers, got dtype {lengths.dtype}")
            lens = lengths.to("cpu", torch.int64)
        else:
            try:
                lens = torch.as_tensor(list(lengths), dtype=torch.int64)
            except (TypeError, ValueError) as err:
                raise TypeError(f"{name}: lengths must be a 1-D sequence of integers ({err})") from None
        if lens.dim() != 1 or lens.numel() != B:
            raise ValueError(
                f"{name}: expected one length per sequence, shape ({B},), got {tuple(lens.shape)}"
            )
        if (lens <= 0).any():
            raise ValueError(f"{name}: lengths must be at least 1, got {lens.tolist()}")
        if (lens > T).any():
            raise ValueError(
                f"{name}: lengths must not exceed the sequence length T={T}, got max {int(lens.max())}"
            )
        return lens

    def _initial_state(
        self, hx: Tensor | tuple[Tensor, Tensor] | None, x: Tensor, batched: bool
    ) -> list[Tensor]:
        """``hx`` as a list of ``(D*L, B, H)`` tensors (one for RNN/GRU, two for LSTM)."""
        name = type(self).__name__
        n_states = 2 if self.mode == "lstm" else 1
        B = x.shape[1]
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if hx is None:
            return [x.new_zeros(shape) for _ in range(n_states)]
        if self.mode == "lstm":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"{name}: expected hx to be a tuple (h_0, c_0)")
            states = list(hx)
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"{name}: expected hx to be a Tensor, got {type(hx).__name__}")
            states = [hx]
        out = []
        for label, s in zip(("h_0", "c_0"), states):
            want = shape if batched else (shape[0], shape[2])
            if not isinstance(s, Tensor) or tuple(s.shape) != want:
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(f"{name}: expected {label} of shape {want}, got {got}")
            if s.dtype != x.dtype:
                raise TypeError(f"{name}: {label} dtype {s.dtype} does not match input dtype {x.dtype}")
            if s.device != x.device:
                raise ValueError(f"{name}: {label} is on {s.device} but input is on {x.device}")
            out.append(s if batched else s.unsqueeze(1))
        return out

    def _run_stack(
        self, x: Tensor, state: list[Tensor], lengths: Tensor | None, dtype: torch.dtype | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Shapes: ``x`` ``(T, B, I)``, ``state`` each ``(D*L, B, H)``; returns ``(T, B, D*H)`` and
        states. ``dtype``: the weights are cast to it (autocast)."""
        D = self.num_directions
        finals: list[list[Tensor]] = [[] for _ in state]
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(D):
                k = layer * D + direction
                s0 = tuple(s[k] for s in state)  # each (B, H)
                inp = layer_input if direction == 0 else reverse_within_lengths(layer_input, lengths)
                weights = self.layer_weights(layer, direction)
                if dtype is not None:
                    weights = LayerWeights(*(None if w is None else w.to(dtype) for w in weights))
                out, s_n = engines.run(
                    self.mode,
                    inp,
                    s0,
                    weights,
                    lengths,
                    self.nonlinearity,
                    self.engine,
                )
                if direction == 1:
                    out = reverse_within_lengths(out, lengths)
                outs.append(out)
                for acc, s in zip(finals, s_n):
                    acc.append(s)
            layer_input = outs[0] if D == 1 else torch.cat(outs, dim=2)  # (T, B, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
        return layer_input, [torch.stack(acc) for acc in finals]


_DOC_ARGS = """
    Args:
        input_size: features per step ``I``.
        hidden_size: features of the hidden state ``H``.
        num_layers: stacked layers ``L``; each feeds its output to the next.
        bias: learn ``bias_ih`` and ``bias_hh``.
        batch_first: input and output as ``(B, T, *)`` instead of ``(T, B, *)`` (states are not affected).
        dropout: dropout on the outputs of every layer but the last, in training.
        bidirectional: add a reverse direction per layer, ``D = 2``.
        engine: ``"auto"`` (fastest correct), ``"fused"`` (hand-written BPTT), ``"reference"``
            (the cell looped over time, autograd BPTT), ``"triton"`` (persistent GPU kernels) or
            ``"native"`` (PyTorch's own kernels: cuDNN on CUDA). Under ``torch.autocast`` a
            float32 layer on CUDA (``auto``, ``triton``, ``native``) runs in autocast's dtype
            (weights, input and state cast; output and final state in that dtype), as torch.nn's
            cuDNN RNNs do; on the CPU the engines keep float32.

    Inputs: ``input, hx=None, *, lengths=None`` (see :mod:`rnnkit.layers` for shapes).
"""


class RNN(RNNBase):
    """Elman RNN layer, a drop-in for ``torch.nn.RNN``: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    ``nonlinearity`` is ``"tanh"`` (default) or ``"relu"``.
    """

    mode = "rnn"
    __doc__ = (__doc__ or "") + _DOC_ARGS + "    Outputs: ``output, h_n``.\n"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        **kwargs,
    ) -> None:
        # torch.nn.RNN takes nonlinearity as its fourth positional argument.
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            nonlinearity=nonlinearity,
            **kwargs,
        )


class LSTM(RNNBase):
    """LSTM layer, a drop-in for ``torch.nn.LSTM`` (gates ``i, f, g, o``; ``h_t = o_t * tanh(c_t)``)."""

    mode = "lstm"
    __doc__ = (__doc__ or "") + _DOC_ARGS + "    Outputs: ``output, (h_n, c_n)``.\n"

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("proj_size", 0):
            raise ValueError("LSTM: proj_size is not supported by rnnkit")
        kwargs.pop("proj_size", None)
        if "nonlinearity" in kwargs:
            raise TypeError("LSTM: unexpected argument 'nonlinearity'")
        super().__init__(*args, **kwargs)


class GRU(RNNBase):
    """GRU layer, a drop-in for ``torch.nn.GRU``.

    PyTorch's formulation: ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``.
    """

    mode = "gru"
    __doc__ = (__doc__ or "") + _DOC_ARGS + "    Outputs: ``output, h_n``.\n"

    def __init__(self, *args, **kwargs) -> None:
        if "nonlinearity" in kwargs:
            raise TypeError("GRU: unexpected argument 'nonlinearity'")
        super().__init__(*args, **kwargs)


def set_engine(module: nn.Module, engine: str) -> int:
    """Use ``engine`` in every rnnkit recurrent layer inside ``module`` (itself included).

    Returns how many layers it set. The engine is not part of a model's weights or architecture,
    so a model built with the default ``"auto"`` can be switched after construction or loading.
    """
    found = [m for m in module.modules() if isinstance(m, RNNBase)]
    for layer in found:
        layer.engine = engine
    return len(found)
