"""The Triton engine: persistent GPU kernels for one direction of one layer.

Forward: the input projections of all steps are one large matrix product, then one kernel walks
the time loop (:mod:`.triton_kernels`), fusing ``h @ W_hh^T`` with the gate arithmetic and saving
the gate activations. Backward: one kernel walks from the last step to the first producing the
pre-activation gradients of every step and ``dh0``/``dc0``, then the weight and input gradients
are large matrix products again.

Five paths (see :class:`Plan`), chosen by :func:`plan_for`:

- ``resident``: ``W_hh`` fits in one program, which keeps it on chip for all steps; one launch.
- ``split``: the hidden dimension is split over programs that each keep a column slice of
  ``W_hh`` on chip and meet at a barrier after every step (persistent RNNs, Diamos et al. 2016);
  one launch on a GPU. Under the interpreter (programs run one after another, so none could wait
  for another) the host launches the same kernel one step at a time, except where a launch has
  one program, which runs the whole sequence as on a GPU (barriers and all).
- ``gemm``: any size; each step's recurrent product is one library matrix product (cuBLAS) and
  one kernel fuses the rest of the step. For large batches and hidden sizes, where a step is a
  real matrix product rather than a latency chain.
- ``persistent``: any ``H``; one launch; the hidden blocks of each batch tile are shared by as
  many programs as fit one wave, which stream ``W_hh`` from L2 each step and meet at a barrier
  after it (under the interpreter: one program per batch tile).
- ``stepwise``: any ``H``; one launch per step with programs split over batch tiles and hidden
  blocks (no program waits on another, so it is correct on every backend, the interpreter too).

Few launches a call: on a GPU, a call whose kernels are short waits for the host to issue its
work (about 1 ms of a forward + backward's fixed cost on the lent H100 was host time). The
resident and split kernels read ``h0``/``c0`` and the final state's gradients where they are and
write the final state, ``dh0`` and ``dc0`` in the caller's dtype (no copies in or out); GRU's
``b_hn`` is read in place; both biases' gradients come from one product, and the ``W_hh``
gradient from one product over the state before each step (``out`` is preceded in memory by a
row holding ``h0``); outputs that no loss uses reach the backward as ``None``, not as zeros; the
forward zeroes its backward's step counters with its own. A split LSTM forward + backward
launches 9 kernels (17, or 19 in bf16, before).

With ``Plan.graph`` a call's launches, on any path, are captured as a CUDA graph the second time
the same call (same buffers) comes, and replayed after (:mod:`._graphs`). Every tensor is
allocated before the launches, so the graph never owns a result.

Works on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (for tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import statistics
import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._graphs import CallGraphs, call_key
from .common import LayerWeights, State

#: :data:`MISSING` where Triton cannot be imported at all
NOT_INSTALLED = "Triton is not installed (pip install 'rnnkit[gpu]')"
#: The oldest Triton the kernels were checked with: the interpreter's tests, and every kernel
#: variant compiled for sm_90a (``benchmarks/compile_check.py``). torch 2.6 pins it. torch 2.4 and
#: 2.5 pin 3.0 and 3.1, which go unchecked: their interpreter cannot run the kernels (it takes
#: ``tl.arange(0, BLOCK)``'s literal 0 for a run-time value), so no test could cover them.
MIN_TRITON = (3, 2)


def triton_too_old(version: str) -> bool:
    """Whether Triton ``version`` (``"3.1.0"``, ``"3.6.0+git1a2b"``) is older than
    :data:`MIN_TRITON`."""
    parts = re.findall(r"\d+", version)[:2]
    return tuple(int(p) for p in parts) < MIN_TRITON


class _TritonTooOld(ImportError):
    """Triton is importable but older than :data:`MIN_TRITON`."""


try:
    import triton

    if triton_too_old(triton.__version__):
        _need = ".".join(map(str, MIN_TRITON))
        raise _TritonTooOld(
            f"Triton {triton.__version__} is installed and rnnkit's kernels need Triton >= {_need} "
            f"(torch 2.6 or newer brings one; or pip install 'triton>={_need}')"
        )
    from triton.runtime.interpreter import InterpretedFunction

    from . import triton_kernels as K

    #: Triton was imported with ``TRITON_INTERPRET=1``: kernels run in numpy on CPU tensors.
    INTERPRETED = isinstance(K.fwd_resident_kernel, InterpretedFunction)
    AVAILABLE = True
    #: why the kernels cannot run here ("" where they can): Triton missing, or too old
    MISSING = ""
except ImportError as e:  # pragma: no cover - triton is an optional extra
    AVAILABLE = False
    INTERPRETED = False
    MISSING = str(e) if isinstance(e, _TritonTooOld) else NOT_INSTALLED

__all__ = [
    "AVAILABLE",
    "INTERPRETED",
    "MIN_TRITON",
    "MISSING",
    "PATHS",
    "TUNED",
    "Plan",
    "candidate_plans",
    "plan_for",
    "default_path",
    "refined_split",
    "w16_plan",
    "graph_plan",
    "backward_plan",
    "narrow_backward",
    "side_by_side",
    "GRAPHS",
    "run",
    "supports",
    "tune",
]

MODE_CODE = {"rnn": 0, "lstm": 1, "gru": 2}
NUM_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
PATHS = ("resident", "split", "gemm", "persistent", "stepwise")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: ``W_hh`` bytes one program may hold for the whole sequence (shared memory): LSTM bf16 and GRU
#: fp32 up to H = 64, bf16 up to H = 128. Above it the split path with 32-column slices was
#: faster on an H100 (GRU fp32 H = 128, B = 32: 6.6 us/step against 8.0 resident).
RESIDENT_MAX_BYTES = 128 * 1024
#: On-chip bytes one ``split`` program may hold: its ``W_hh`` slice (``NG * HP * block_h``) and
#: one step's ``h`` (or gate gradient) tile (``block_b * HP``); H100: 227 KiB of shared memory.
SPLIT_MAX_BYTES = 192 * 1024
_INT32_MAX = 2**31 - 1


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _sm_count() -> int:
    """Multiprocessors of the current CUDA device (132 on an H100 SXM when there is none: the
    interpreter never waits, so the number only shapes the plan)."""
    if torch.cuda.is_available():
        return _sm_count_of(torch.cuda.current_device())
    return 132


@functools.cache
def _sm_count_of(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@dataclass(frozen=True)
class Plan:
    """How to launch the kernels for one problem size.

    ``path`` one of :data:`PATHS`; ``block_b`` batch rows per program; ``block_h`` hidden columns
    per block (``resident``: all of ``H``, padded to a power of two; ``split``: the columns one
    program owns); ``block_k`` reduction tile of the ``persistent``/``stepwise`` kernels;
    ``num_warps`` per program; ``num_stages`` software-pipelining depth (1: none; the blocked
    kernels' reduction loop runs 1.3-1.6x faster two deep on an H100 although it then spills a
    few registers); ``packed_io`` LSTM and GRU load and store the four gate slots of a step as
    one tile (compiled for sm_90 the stores then take one layout conversion through shared memory
    instead of four: 9 conversions and 24 barriers a step in the resident forward, against 12 and
    28; not yet timed on a GPU, so off by default). ``half_w`` (float32 only, ``resident`` and
    ``split``, not the ReLU RNN): the forward reads ``W_hh``, and ``h`` as the recurrent
    product's operand, in float16 (:func:`w16_plan`). float16 keeps TF32's 10-bit mantissa, so
    the products round as the TF32 ones do, on half the on-chip memory per weight slice (wider
    slices, fewer programs); its range holds ``|W_hh|`` and ``|h|`` up to 65504 (LSTM and GRU
    states stay in [-1, 1] after the first step; the initial state and weights must too). The
    backward keeps TF32: gate gradients need float32's range. Not a default. Its results equal an
    exact float64 emulation of that rounding to ~1e-6, the emulation starting each step from the
    kernels' own ``h``; left to run on its own, the emulation's ``h`` rounds to another float16
    value wherever float32's and float64's straddle a rounding point (a few element steps in 10^4),
    and the RNN carries that on undamped: 2e-4 to 1e-3 apart at ``B`` = 37, ``T`` = 29 (seen on the
    H100 in session 17, and in the interpreter alike). ``graph``: each call's launches (forward:
    bias folding, input projection, state copies, kernels; backward: kernels and the gradient
    products) are captured once as a CUDA graph and replayed on later calls over the same buffers
    (:mod:`._graphs`). It takes the host's per-call work off the GPU's critical path: about 1 ms a
    forward + backward on the lent H100 (run 5b's times fit ``T`` x per-step + 0.8-1.3 ms), a third
    of the call at ``T`` = 64-256; and, for ``gemm``, its ~40 us a step of host launches.
    Timed over the same tensors call after call (run 6), it cut the default's time at 52 of 54
    points (median 0.86x). But a graph replays only a call whose tensors sit where the captured
    ones did, and in a training loop they do not: a language model's 12 steps replayed none of
    their 24 calls on the H100 (the embeddings, the carried state and the engine's own buffers
    land elsewhere each step), and a capture keeps 64 MiB of library workspace. So not a default,
    and :func:`tune` does not try it. ``k_slices`` (``split`` only): each step's recurrent
    product, forward and backward, with its reduction over ``H`` in that many slices: one 3-d
    product whose warps split over the slices, summed on chip (forward LSTM and GRU: the gates
    side by side in it; :func:`k_sliced`). A ``split`` program's product is
    ``(block_b, H) @ (H, block_h)`` per gate; on 8 warps Triton's mma layout spreads the warps
    over that 16-row by ``block_h``-column output alone, so at ``block_h`` 16 all eight warps
    compute the same tile, gate arithmetic included (32: two copies of each), each holding the
    whole ``H``-deep operands. Sliced, no warp repeats another's work. Compiled for sm_90
    (``benchmarks/compile_check.py``; SASS per thread and step), LSTM fp32 ``H`` = 512: forward
    1248 instructions instead of 2600 (64 mma instead of 512, no spill instead of 16 bytes),
    backward 1608 instead of 3256 (64 mma instead of 512, 116 bytes spilled instead of 132); GRU
    fp32 ``H`` = 512's forward spills nothing instead of 544 bytes. The default's backward where a
    program's slice is 16 columns (:func:`refined_split`). ``bwd_warps``: the backward's warps per
    program (0: ``num_warps``; :func:`narrow_backward`). ``side_gates`` (``split`` only): the
    forward's recurrent product of every gate as one 2-d product, the gates' weight slices side
    by side, ``(block_b, H) @ (H, 4 block_h)``, in two independent halves of the reduction
    (:func:`side_by_side`); ``k_slices`` is then the backward's alone. The default's LSTM forward
    (:func:`refined_split`). Block sizes are powers of two >= 16
    (``tl.dot``'s minimum).
    """

    path: str
    block_b: int = 16
    block_h: int = 32
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 1
    packed_io: bool = False
    half_w: bool = False
    graph: bool = False
    k_slices: int = 1
    bwd_warps: int = 0
    side_gates: bool = False

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"Plan: path must be one of {PATHS}, got {self.path!r}")
        if self.half_w and self.path not in ("resident", "split"):
            raise ValueError(f"Plan: half_w needs the resident or split path, got {self.path!r}")
        for name in ("block_b", "block_h", "block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"Plan: {name} must be a power of two >= 16, got {v}")
        if self.k_slices < 1 or self.k_slices & (self.k_slices - 1):
            raise ValueError(f"Plan: k_slices must be a power of two >= 1, got {self.k_slices}")
        if self.k_slices > 1 and self.path != "split":
            raise ValueError(f"Plan: k_slices needs the split path, got {self.path!r}")
        if self.side_gates and self.path != "split":
            raise ValueError(f"Plan: side_gates needs the split path, got {self.path!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"Plan: num_warps must be a power of two <= 16, got {self.num_warps}")
        if self.bwd_warps not in (0, 1, 2, 4, 8, 16):
            raise ValueError(f"Plan: bwd_warps must be 0 or a power of two <= 16, got {self.bwd_warps}")
        if not 1 <= self.num_stages <= 4:
            raise ValueError(f"Plan: num_stages must be in [1, 4], got {self.num_stages}")


def split_plan(
    mode: str,
    batch: int,
    hidden_size: int,
    dtype: torch.dtype,
    block_h: int | None = None,
    block_b: int | None = None,
) -> Plan | None:
    """The ``split`` plan for this size, or ``None`` where a program's slice does not fit on chip
    or one batch tile would need more programs than the GPU has multiprocessors. Batch tiles grow
    (up to 64 rows) until all programs fit in one wave where they can (``block_b`` fixes them).
    ``block_h`` columns per program; by default 32 for LSTM and GRU where that fits (half the
    programs, so half the L2 reads of ``h`` per step: 20-25 % faster than 16 on an H100 at
    H = 128-512), else 16."""
    if block_h is None:
        if NUM_GATES[mode] >= 3:
            plan = split_plan(mode, batch, hidden_size, dtype, 32, block_b)
            if plan is not None:
                return plan
        block_h = 16
    HP = _hp(hidden_size)
    elt = torch.empty(0, dtype=dtype).element_size()
    n_h = _cdiv(hidden_size, block_h)
    sms = _sm_count()
    if n_h > sms:
        return None
    if block_b is None:
        block_b = 16
        while _cdiv(batch, block_b) * n_h > sms and block_b < 64:
            block_b *= 2
    if (NUM_GATES[mode] * block_h + block_b) * HP * elt > SPLIT_MAX_BYTES:
        return None
    # 8 warps: 4 spill registers at H = 256 (benchmarks/compile_check.py)
    return Plan("split", block_b, block_h, block_k=16, num_warps=8, num_stages=1)


def default_path(mode: str, batch: int, hidden_size: int, dtype: torch.dtype) -> str:
    """The path :func:`plan_for` picks: ``resident`` where ``W_hh`` fits one program, else
    ``split`` where its slices fit, else ``persistent``."""
    if _w_hh_bytes(mode, hidden_size, dtype) <= RESIDENT_MAX_BYTES:
        return "resident"
    return "split" if split_plan(mode, batch, hidden_size, dtype) is not None else "persistent"


#: :func:`plan_for`'s plans by its arguments and what else shapes them (the GPU's multiprocessors,
#: the on-chip limits): it runs every call that is given no plan
_PLANS: dict[tuple, Plan] = {}


def plan_for(mode: str, batch: int, hidden_size: int, dtype: torch.dtype, path: str | None = None) -> Plan:
    """The default :class:`Plan` for ``mode`` at batch ``batch`` and hidden size ``hidden_size``;
    ``path`` forces a path (the block sizes still follow the size; a forced ``split`` plan is the
    plain one, without :func:`refined_split`'s changes).

    Defaults, from benchmarks/bench_gpu.py on an H100 (benchmarks/results/gpu.json): ``resident``
    where ``W_hh`` fits one program, else ``split`` where its slices fit (as
    :func:`refined_split` makes it), else ``persistent`` (1.2-1.8x faster than ``gemm`` at B =
    256, H = 1024, whose per-step launches cost about 40 us a step; ``gemm`` and ``stepwise`` are
    never the default)."""
    key = (mode, batch, hidden_size, dtype, path, _sm_count(), RESIDENT_MAX_BYTES, SPLIT_MAX_BYTES)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan_for(mode, batch, hidden_size, dtype, path)
    return plan


def _plan_for(mode: str, batch: int, hidden_size: int, dtype: torch.dtype, path: str | None) -> Plan:
    HP = _hp(hidden_size)
    block_b = 16 if batch <= 128 else 32
    if path is None:
        plain = plan_for(mode, batch, hidden_size, dtype, default_path(mode, batch, hidden_size, dtype))
        return refined_split(plain, mode, batch, hidden_size, dtype)
    if path == "resident":
        # the time loop's loads (next step's projections) may be pipelined
        return Plan("resident", block_b, HP, HP, num_warps=4 if HP <= 64 else 8, num_stages=2)
    if path == "split":
        plan = split_plan(mode, batch, hidden_size, dtype)
        # forced where it does not fit well: the smallest slices, batch tiles in several waves
        plan = plan if plan is not None else Plan("split", 16, 16, 16, num_warps=8)
        if mode == "lstm" and plan.block_h == 16:
            # the four 16-column gate tiles as one 64-column tile: 1.2-1.4x faster on an H100 at
            # fp32 H = 512 (run 5); no gain at 32 columns, slower for GRU
            plan = dataclasses.replace(plan, packed_io=True)
        return plan
    if path == "gemm":  # elementwise cell kernels: (32, 64) tiles
        return Plan("gemm", 32, min(64, HP), 16, num_warps=4, num_stages=1)
    # 64x32 tiles, 8 warps, the reduction loop pipelined two deep: 1.3-1.6x faster than unpipelined
    # on an H100 despite a few spilled registers (benchmarks/compile_check.py)
    return Plan(path, block_b, block_h=min(64, HP), block_k=min(32, HP), num_warps=8, num_stages=2)


def refined_split(plan: Plan, mode: str, batch: int, hidden_size: int, dtype: torch.dtype) -> Plan:
    """The default's form of ``plan`` (a ``split`` plan on 16-row batch tiles): LSTM with its
    forward's gates side by side and its backward on 4 warps (:func:`side_by_side`,
    :func:`narrow_backward`); GRU with that backward alone; where the slices are too narrow for
    the 4-warp backward (16 columns: ``H`` >= 512 in float32), both with the forward side by side
    and the backward's products in reduction slices (:func:`k_sliced`). The RNN's plan, and plans
    on wider batch tiles (not measured), stay as they are. Measured on the lent H100 (Triton 3.6,
    cuDNN 9.19; benchmarks/results/gpu_notes.md, run 6), forward + backward per step against
    cuDNN: LSTM fp32 ``H`` = 256, ``T`` = 512 0.25-0.29 against the plain plan's 0.33-0.35;
    ``H`` = 512 0.37 against 0.60 (GRU: 0.32 against 0.61); faster at 22 of the 23 split points
    of the benchmark's grid (LSTM bf16 ``B`` = 64, ``T`` = 64, ``H`` = 512: 0.46 against 0.44).
    On the GRU the forward side by side gained nothing beside the 4-warp backward."""
    if mode == "rnn" or plan.path != "split" or plan.block_b != 16:
        return plan
    narrow = narrow_backward(plan, mode, batch, hidden_size, dtype)
    if narrow is not None:
        return side_by_side(narrow, mode) if mode == "lstm" else narrow
    return side_by_side(k_sliced(plan, hidden_size), mode) or plan


def w16_plan(mode: str, batch: int, hidden_size: int) -> Plan | None:
    """The float32 plan whose forward reads ``W_hh`` in float16 (``Plan.half_w``), sized for
    float16 slices: ``resident`` where the float16 ``W_hh`` fits one program, else ``split``
    where its slices fit; ``None`` beyond. The plan runs only float32 tanh cells (a ReLU RNN's
    states are unbounded, so the kernels refuse it)."""
    half = torch.float16
    plan = plan_for(mode, batch, hidden_size, half)
    if plan.path == "split":  # where slices do not fit, None, not plan_for's forced fallback
        plan = split_plan(mode, batch, hidden_size, half)
    if plan is None or plan.path not in ("resident", "split"):
        return None
    return dataclasses.replace(plan, half_w=True)


def k_sliced(plan: Plan, hidden_size: int) -> Plan:
    """``plan`` (a ``split`` plan) with its recurrent products in ``k_slices`` slices of the
    reduction: as many as leave no warp repeating another's product (``num_warps * 8 /
    block_h``, mma tiles being 8 columns wide), each at least 16 deep; ``plan`` itself where that
    is one slice."""
    k = max(1, min(plan.num_warps * 8 // plan.block_h, _hp(hidden_size) // 16))
    return dataclasses.replace(plan, k_slices=k) if k > 1 else plan


def backward_plan(plan: Plan, mode: str, batch: int, hidden_size: int, dtype: torch.dtype) -> Plan:
    """The plan a call's backward runs: ``plan``, except for a ``half_w`` forward, whose backward
    reads ``W_hh`` in float32 (TF32 products) on the default's slices, sliced where the forward
    was; on ``plan.bwd_warps`` warps where that is set. ``side_gates`` is the forward's alone."""
    out = dataclasses.replace(plan, side_gates=False) if plan.side_gates else plan
    if plan.half_w:
        plain = plan_for(mode, batch, hidden_size, dtype, default_path(mode, batch, hidden_size, dtype))
        out = dataclasses.replace(plain, graph=plan.graph)
        out = k_sliced(out, hidden_size) if plan.k_slices > 1 and out.path == "split" else out
    return dataclasses.replace(out, num_warps=plan.bwd_warps) if plan.bwd_warps else out


def side_by_side(plan: Plan | None, mode: str) -> Plan | None:
    """``plan`` (an LSTM or GRU ``split`` plan) with its forward's gate products as one 2-d
    product in two halves of the reduction (``Plan.side_gates``; a ``k_sliced`` plan's slices
    then serve its backward alone); else ``None``. The RNN's one gate gains nothing side by side,
    and its halves alone are slower (modelled: 10-25 % more cycles a forward step). A program's
    product is ``(16, H) @ (H, block_h)`` per gate: 2-4 mma tiles wide, so on 8 warps two to four
    warps compute each tile, each gate apart. Side by side the product is ``4 block_h`` columns
    wide, one or two tiles a warp, none repeated, and each warp's halves are two independent mma
    chains half as long. Compiled for sm_90a with the lent H100's Triton (3.6), modelled cycles a
    step of the forward, default against side by side: LSTM fp32 ``H`` = 256 6032 against 3793,
    ``H`` = 512 15882 against 4044; LSTM bf16 ``H`` = 512 6013 against 3889; GRU fp32 ``H`` = 512
    15574 against 3866 (Triton 3.9: alike); the k-sliced forward at ``H`` = 512: 5329 (LSTM), 5248
    (GRU). Measured on the H100 (run 6), forward + backward per step: LSTM fp32 ``H`` = 256 with
    the 4-warp backward 0.25-0.29x cuDNN's time against the default's 0.33-0.35; the GRU gained
    nothing over the 4-warp backward alone. The LSTM's default (:func:`refined_split`)."""
    if plan is None or plan.path != "split" or mode == "rnn":
        return None
    return dataclasses.replace(plan, side_gates=True)


def narrow_backward(plan: Plan, mode: str, batch: int, hidden_size: int, dtype: torch.dtype) -> Plan | None:
    """``plan`` with its backward on 4 warps a program instead of 8, where that backward is a
    ``split`` one on slices of 32 or more columns; else ``None``. A slice's gate-gradient product
    is ``(16, block_h)`` per gate, four mma tiles wide at 32 columns: on 4 warps no warp repeats
    another's. Compiled for sm_90a with the lent H100's Triton (3.6), modelled cycles a step of the
    backward: LSTM fp32 ``H`` = 256 5122 against 8880, GRU fp32 ``H`` = 256 4374 against 5456,
    LSTM bf16 ``H`` = 512 4859 against 7331; on 3.9 4-20 % fewer. Worse where the slices are 16
    columns (fp32 ``H`` = 512). Measured on the H100 (run 6): faster than the 8-warp backward at 18
    of 20 points, median 0.91x its time; the default where offered (:func:`refined_split`)."""
    back = backward_plan(plan, mode, batch, hidden_size, dtype)
    if back.path != "split" or back.block_h < 32 or back.num_warps <= 4:
        return None
    return dataclasses.replace(plan, bwd_warps=4)


def wide_resident(mode: str, batch: int, hidden_size: int, dtype: torch.dtype) -> Plan | None:
    """The ``resident`` plan on one warp per 8 of the padded hidden columns (``H`` = 64: 8 warps,
    128: 16), or ``None`` where that is the default's count or ``W_hh`` does not fit one program.
    Each gate's product is ``(16, H)``, and mma tiles are 8 columns wide, so the default's warps
    (4 up to ``H`` = 64, else 8) each hold two or more tiles and their gate arithmetic, in one
    dependent chain a step. Compiled for sm_90, per thread and step: LSTM fp32 ``H`` = 64 forward
    752 instructions instead of 1360, backward 800 instead of 1312; bf16 ``H`` = 128, 824 and 872
    instead of 1320 and 1328, in at most 128 registers (16 warps' share of the register file). The
    same instructions in all, in chains half as long. Measured on the H100 (run 6): faster than
    the default at 11 of 19 points, median 0.97x its time, slower at the others; not a default."""
    if _w_hh_bytes(mode, hidden_size, dtype) > SPLIT_MAX_BYTES:
        return None
    plan = plan_for(mode, batch, hidden_size, dtype, "resident")
    warps = min(16, _hp(hidden_size) // 8)
    return dataclasses.replace(plan, num_warps=warps) if warps > plan.num_warps else None


def graph_plan(mode: str, batch: int, hidden_size: int, dtype: torch.dtype) -> Plan:
    """The ``gemm`` plan whose calls replay as CUDA graphs (``Plan.graph``): each step one
    library matrix product and one cell kernel, without the host's launch work. Meant for steps
    that are real matrix products (B = 256, H = 1024: about 2 GFLOP a step), where the one-launch
    ``persistent`` kernels' mma.sync products fall behind cuBLAS. Over the same tensors call
    after call it ran 0.65-0.96x cuDNN's time there on the H100 (run 6), but in a training loop,
    where the tensors move and nothing replays, it is the launch-bound ``gemm`` path."""
    return dataclasses.replace(plan_for(mode, batch, hidden_size, dtype, "gemm"), graph=True)


def candidate_plans(mode: str, batch: int, hidden_size: int, dtype: torch.dtype) -> list[Plan]:
    """The distinct plans :func:`tune` times at this size, the default first: ``resident`` where
    ``W_hh`` fits one program (also on 2 warps up to ``H`` = 64, and on one warp per 8 columns,
    :func:`wide_resident`), ``split`` with 16- and 32-column
    slices and, for ``B`` >= 64, 64-row batch tiles (wgmma-sized products) where they fit,
    ``persistent`` with 16/32- and 64-row tiles, the packed gate I/O of LSTM and GRU, each
    ``split`` plan with its forward's gates side by side (:func:`side_by_side`), that with its
    backward's products in reduction slices (:func:`k_sliced`; the RNN's forward sliced too),
    and each with its backward on 4 warps (:func:`narrow_backward`). Not ``gemm`` launched step
    by step, or ``stepwise``: launch-bound, slower at every size measured. No graph plans
    (``Plan.graph``): :func:`tune` times a call over the same tensors, where they replay, but a
    training loop's tensors move from call to call, where they would run eagerly."""
    HP = _hp(hidden_size)
    plans = [plan_for(mode, batch, hidden_size, dtype)]
    if _w_hh_bytes(mode, hidden_size, dtype) <= SPLIT_MAX_BYTES:  # W_hh on chip, past the default's bound
        resident = plan_for(mode, batch, hidden_size, dtype, "resident")
        plans.append(resident)
        if HP <= 64:
            plans.append(dataclasses.replace(resident, num_warps=2))
        plans.append(wide_resident(mode, batch, hidden_size, dtype))
    for block_h in (16, 32):
        plans.append(split_plan(mode, batch, hidden_size, dtype, block_h))
        if batch >= 64:
            plans.append(split_plan(mode, batch, hidden_size, dtype, block_h, block_b=64))
    persistent = plan_for(mode, batch, hidden_size, dtype, "persistent")
    plans.append(persistent)
    if batch >= 64:
        plans.append(dataclasses.replace(persistent, block_b=64))
    if mode != "rnn":
        plans += [
            dataclasses.replace(p, packed_io=True) for p in plans if p and p.path in ("resident", "split")
        ]
    splits = [p for p in plans if p and p.path == "split"]
    plans += [side_by_side(p, mode) for p in splits]
    # the backward in k slices, the forward side by side: modelled faster than the k-sliced
    # forward at every size (Triton 3.6 and 3.9), except for the RNN, which has no gates to join
    plans += [side_by_side(p, mode) or p for p in (k_sliced(p, hidden_size) for p in splits)]
    plans += [narrow_backward(p, mode, batch, hidden_size, dtype) for p in plans if p and p.path == "split"]
    # no graph plans: timed over the same tensors call after call they replay, but a training
    # loop's tensors move (Plan.graph), so the plan tune picks would run eagerly there
    return list(dict.fromkeys(p for p in plans if p is not None))


#: Plans :func:`tune` measured fastest, by ``(device, mode, nonlinearity, dtype, H, B and T
#: rounded up to powers of two, with backward)``.
TUNED: dict[tuple, Plan] = {}
_log = logging.getLogger("rnnkit.triton")


def _tune_key(mode: str, nonlinearity: str, x: Tensor, hidden_size: int, backward: bool) -> tuple:
    T, B, _ = x.shape
    device = torch.cuda.get_device_name(x.device) if x.is_cuda else "interpreter"
    return (device, mode, nonlinearity, x.dtype, hidden_size, _next_pow2(B), _next_pow2(T), backward)


def _seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up (which compiles)."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wants_backward(x: Tensor, state: State, weights: LayerWeights) -> bool:
    """Whether autograd will want a backward through this call (what :func:`tune` times)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *state, *weights))


def time_candidates(
    mode: str,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: Tensor | None,
    nonlinearity: str,
    runners: dict,
    *,
    backward: bool,
    repeats: int = 3,
) -> dict:
    """Median seconds of each ``runners[label](mode, x, state, weights, lengths, nonlinearity)``
    on copies of the call's inputs: the forward, and with ``backward`` the backward too under
    random upstream gradients. A runner that fails (say, a plan out of shared memory) is left out."""
    T, B, _ = x.shape
    H = weights.weight_hh.shape[1]
    # copies outside inference mode (its tensors cannot be saved for a backward); gradients
    # only where the backward is timed
    with torch.inference_mode(False), torch.set_grad_enabled(backward):

        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone().requires_grad_(backward)

        xs, st = copy(x), tuple(copy(s) for s in state)
        ws = LayerWeights(*(copy(w) for w in weights))
        lens = None if lengths is None else lengths.clone()
        leaves = [xs, *st, *(w for w in ws if w is not None)]
        ups = [torch.randn(T, B, H, device=x.device, dtype=x.dtype)]
        ups += [torch.randn_like(s) for s in st]

        def step(runner) -> None:
            out, fin = runner(mode, xs, st, ws, lens, nonlinearity)
            if backward:
                torch.autograd.grad([out, *fin], leaves, ups)

        timed = {}
        for label, runner in runners.items():
            try:
                timed[label] = _seconds(lambda runner=runner: step(runner), repeats)
            except Exception as e:  # e.g. a variant the compiler cannot fit: not a candidate here
                _log.info("timing %s failed: %s", label, e)
    return timed


def tune(
    mode: str,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: Tensor | None = None,
    nonlinearity: str = "tanh",
    *,
    backward: bool = True,
    repeats: int = 3,
) -> Plan:
    """The fastest of :func:`candidate_plans` for this call, timed on copies of its inputs
    (:func:`time_candidates`), and remembered in :data:`TUNED` for calls of the same kind.
    :func:`run` tunes by itself when ``torch.backends.cudnn.benchmark`` is set, as cuDNN does
    for its algorithms; the first call of each kind then compiles and times every candidate
    (tens of seconds on a GPU whose Triton cache is cold). A candidate that fails (say, out of
    shared memory) is skipped."""
    T, B, _ = x.shape
    H = weights.weight_hh.shape[1]
    key = _tune_key(mode, nonlinearity, x, H, backward)
    if key in TUNED:
        return TUNED[key]
    runners = {plan: functools.partial(run, plan=plan) for plan in candidate_plans(mode, B, H, x.dtype)}
    timed = time_candidates(
        mode, x, state, weights, lengths, nonlinearity, runners, backward=backward, repeats=repeats
    )
    # none ran: the default, whose own run then reports what is wrong
    best = min(timed, key=timed.get) if timed else plan_for(mode, B, H, x.dtype)
    if timed:
        _log.info("triton tune %s: %s, %.1f us/step", key, best, 1e6 * timed[best] / T)
    TUNED[key] = best
    return best


def supports(mode: str, x: Tensor, weights: LayerWeights) -> bool:
    """Whether this engine can run ``mode`` on ``x`` with ``weights`` (CUDA tensors, or CPU ones
    under the interpreter; float32/bfloat16/float16; sizes addressable with 32-bit offsets)."""
    dtype = x.dtype
    if not AVAILABLE or mode not in MODE_CODE or x.dim() != 3 or dtype not in DTYPES:
        return False
    # compiled kernels need CUDA tensors; the interpreter works on CPU ones
    device = x.device
    if device.type != ("cpu" if INTERPRETED else "cuda"):
        return False
    for w in weights:
        if w is not None and (w.dtype != dtype or w.device != device):
            return False
    T, B, _ = x.shape
    H = weights.weight_hh.shape[1]
    return (T + 1) * B * 4 * H <= _INT32_MAX and x.numel() <= _INT32_MAX


#: torch >= 2.9's fp32 precision switches by ``(backend, op)``, read and set as its
#: ``torch.backends`` properties do (``cudnn.rnn``: ``("cuda", "rnn")``, ``cudnn``: ``("cuda", "all")``,
#: the global one ``("generic", "all")``, ``cuda.matmul``: ``("cuda", "matmul")``), without their
#: Python layers (4.6 against 0.5 us a read on the CPU VM, several times a call); None before 2.9
_FP32_GET = getattr(torch._C, "_get_fp32_precision_getter", None)
_FP32_SET = getattr(torch._C, "_set_fp32_precision_setter", None)


def cudnn_rnn_tf32() -> bool:
    """Whether torch.nn's cuDNN RNNs would take float32 products as TF32 now.

    torch >= 2.9 reads ``torch.backends.cudnn.rnn.fp32_precision`` (``"none"`` defers to
    ``torch.backends.cudnn.fp32_precision``, then to ``torch.backends.fp32_precision``, as torch
    resolves it); older torch, ``torch.backends.cudnn.allow_tf32``. Where the new switches exist
    they are the ones read: torch raises on reading the old ones once a user has set the new ones,
    as its documentation now advises."""
    if _FP32_GET is None:
        return bool(torch.backends.cudnn.allow_tf32)
    for backend, op in (("cuda", "rnn"), ("cuda", "all"), ("generic", "all")):
        precision = _FP32_GET(backend, op)
        if precision != "none":
            return precision == "tf32"
    return False


def _precision(dtype: torch.dtype) -> str:
    # fp32 follows the switch that governs torch.nn's cuDNN RNNs (on by default), so the drop-in
    # rounds like the layer it replaces; "ieee" fp32 dots also fall off the tensor cores
    if dtype == torch.float32 and not INTERPRETED and cudnn_rnn_tf32():
        return "tf32"
    return "ieee"


@contextlib.contextmanager
def _cublas_tf32(enabled: bool):
    """cuBLAS's float32 products as TF32 (``enabled``) or full fp32 inside, the switch as it was
    after: ``torch.backends.cuda.matmul.fp32_precision`` where torch has it (>= 2.9, where cuBLAS
    reads it; setting and restoring it leaves the old ``allow_tf32`` reading as before), else
    ``allow_tf32``."""
    if _FP32_GET is None:
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
        return
    before = _FP32_GET("cuda", "matmul")
    _FP32_SET("cuda", "matmul", "tf32" if enabled else "ieee")
    try:
        yield
    finally:
        _FP32_SET("cuda", "matmul", before)


def _matmul_precision(dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Library fp32 matrix products (projections, weight gradients, the ``gemm`` path's steps)
    round like the kernels' and like cuDNN's RNNs: TF32 exactly when :func:`cudnn_rnn_tf32`."""
    if dtype != torch.float32 or INTERPRETED:
        return contextlib.nullcontext()
    return _cublas_tf32(_precision(dtype) == "tf32")


def _gate_width(mode: str) -> int:
    """Slots per row of the gate buffer (``GW`` in :mod:`.triton_kernels`): 4 for LSTM and GRU,
    whose saved activations (four per unit) are written over the projections, 1 for the RNN."""
    return 1 if mode == "rnn" else 4


def _cell_flags(mode: str, nonlinearity: str) -> dict:
    return dict(MODE=MODE_CODE[mode], NG=NUM_GATES[mode], GW=_gate_width(mode), RELU=nonlinearity == "relu")


def _hidden_side(dg: Tensor, w_hh: Tensor, mode: str) -> list[tuple[Tensor, Tensor]]:
    """The hidden-side gate gradients in the last dimension of a gate buffer ``dg`` ``(..., GW *
    H)`` (views), each with the rows of ``w_hh`` ``(G, H)`` it multiplies: GRU's third gate is
    in slot 3 (its first two are the input side's), every other mode's gates in order."""
    H = w_hh.shape[1]
    if mode == "gru":
        return [(dg[..., : 2 * H], w_hh[: 2 * H]), (dg[..., 3 * H :], w_hh[2 * H :])]
    return [(dg[..., : NUM_GATES[mode] * H], w_hh)]


def _column_sums(a: Tensor, ones: Tensor, out: Tensor) -> None:
    """Column sums of ``a`` ``(N, C)`` (a view, rows possibly strided) into each row of ``out``
    ``(k, C)``, in ``a``'s dtype, as one matrix product with ``ones`` ``(k, N)`` (``k`` = 2: both
    biases' gradients of an LSTM or RNN, equal, in one launch): cuBLAS accumulates in fp32
    (split-K partial sums may be combined in fp16/bf16 where torch allows reduced-precision
    reductions, its default). ``torch.sum`` over the tall dimension took a staging buffer of up
    to about 130 MiB on an H100, the largest block live at the backward's peak
    (benchmarks/gpu_memory.py, run 5); the product needs none."""
    torch.mm(ones, a, out=out)


def _flags(mode: str, nonlinearity: str, dtype: torch.dtype) -> dict:
    """The time-loop kernels' compile-time switches (a shared dict: not to be changed)."""
    return _flags_for(mode, nonlinearity, _precision(dtype), INTERPRETED and dtype == torch.bfloat16)


@functools.cache
def _flags_for(mode: str, nonlinearity: str, precision: str, upcast: bool) -> dict:
    return dict(**_cell_flags(mode, nonlinearity), PRECISION=precision, UPCAST=upcast)


def _hp(hidden_size: int) -> int:
    return max(16, _next_pow2(hidden_size))


def _w_hh_bytes(mode: str, hidden_size: int, dtype: torch.dtype) -> int:
    """On-chip bytes of the whole ``W_hh``, ``H`` padded as the kernels pad it."""
    HP = _hp(hidden_size)
    return NUM_GATES[mode] * HP * HP * torch.empty(0, dtype=dtype).element_size()


def _barrier(n_btiles: int, device: torch.device) -> Tensor:
    """The split kernels' int32 counters: start ticket, error flag, one step counter per batch
    tile. Uninitialised: the launches zero them (inside a call's CUDA graph, when it has one)."""
    return torch.empty(2 + n_btiles, dtype=torch.int32, device=device)


def _launches(n_btiles: int, per_tile: int) -> list[tuple[int, int]]:
    """``(first tile, tiles)`` of each launch of a path whose programs meet at step barriers:
    whole batch tiles, no more programs at once than the GPU has multiprocessors (at least one
    tile), so no program ever waits for a partner that could only start after it finishes."""
    g = max(1, _sm_count() // per_tile)
    return [(t0, min(g, n_btiles - t0)) for t0 in range(0, n_btiles, g)]


#: :func:`_barrier_launches` by plan path, ``block_h``, tiles, ``H`` and multiprocessors
_BARRIER_LAUNCHES: dict[tuple, list[tuple[int, int]]] = {}


def _barrier_launches(plan: Plan, n_btiles: int, hidden_size: int) -> list[tuple[int, int]]:
    """:func:`_launches` of a ``split`` or ``persistent`` plan (their programs meet at step
    barriers); none for the other paths. Shared lists: not to be changed."""
    if plan.path not in ("split", "persistent"):
        return []
    key = (plan.path, plan.block_h, n_btiles, hidden_size, _sm_count(), INTERPRETED)
    found = _BARRIER_LAUNCHES.get(key)
    if found is None:
        n_hblocks = _cdiv(hidden_size, plan.block_h)
        per_tile = n_hblocks if plan.path == "split" else _blocks_per_program(n_hblocks, n_btiles)[1]
        found = _BARRIER_LAUNCHES[key] = _launches(n_btiles, per_tile)
    return found


def _shared_counters(
    forward: list[tuple[int, int]], backward: list[tuple[int, int]], device: torch.device
) -> tuple[Tensor | None, list[tuple[int, int, Tensor]], list[tuple[int, int, Tensor]]]:
    """One int32 buffer holding the counters (:func:`_barrier`) of a forward's launches and of
    its backward's, so the forward zeroes both in one fill (a launch less a training step):
    ``(buffer, forward groups, backward groups)``, each group ``(first tile, tiles, counters)``
    (``forward`` and ``backward``: :func:`_barrier_launches`)."""
    launches = forward + backward
    if not launches:
        return None, [], []
    buf = torch.empty(sum(2 + n for _, n in launches), dtype=torch.int32, device=device)
    groups, at = [], 0
    for t0, n in launches:
        groups.append((t0, n, buf[at : at + 2 + n]))
        at += 2 + n
    return buf, groups[: len(forward)], groups[len(forward) :]


def _blocks_per_program(n_hblocks: int, n_btiles: int) -> tuple[int, int]:
    """The persistent path's ``(hidden blocks per program, programs per batch tile)``: as many
    programs as fit one wave on the GPU. Under the interpreter one program per tile, which walks
    every block (its programs run one after another, so none may wait for another)."""
    n_hp = 1 if INTERPRETED else max(1, min(n_hblocks, _sm_count() // n_btiles))
    hb = _cdiv(n_hblocks, n_hp)
    return hb, _cdiv(n_hblocks, hb)


#: Whether the barrier paths launch cooperatively (CUDA guarantees every program of a cooperative
#: launch is resident at once, so no program waits at a step barrier for one that cannot start,
#: even while other streams' kernels, say NCCL's all-reduce under DDP, hold multiprocessors).
#: Cleared, with a warning, should a launch be refused; the step barrier's spin guard remains.
COOPERATIVE = True

#: Calls' launches as CUDA graphs, for plans with ``graph`` (:mod:`._graphs`).
GRAPHS = CallGraphs()


def _launch_synced(kernel, grid: tuple[int], *args, **kwargs) -> None:
    """Launch a kernel whose programs meet at step barriers: cooperatively where it can be."""
    global COOPERATIVE
    if INTERPRETED:  # no cooperative launches, no CUDA streams to ask about
        kernel[grid](*args, **kwargs)
        return
    if COOPERATIVE and GRAPHS.capturing():
        # our own capture, of launches that just ran eagerly: a cooperative kernel node (should
        # the capture refuse it, GRAPHS runs the launches eagerly from then on)
        kernel[grid](*args, **kwargs, launch_cooperative_grid=True)
        return
    # not while someone else's CUDA graph is being captured: a refused launch would spoil it
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    if COOPERATIVE and not capturing:
        try:
            kernel[grid](*args, **kwargs, launch_cooperative_grid=True)
            return
        except RuntimeError as e:  # a driver error (compile errors are TritonErrors)
            refused = e
        kernel[grid](*args, **kwargs)  # fails too if the error was not the cooperative launch's
        COOPERATIVE = False
        warnings.warn(
            f"triton engine: cooperative launch refused ({type(refused).__name__}: {refused}); the "
            "barrier paths launch normally from now on",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    kernel[grid](*args, **kwargs)


#: Read-only vectors shared by every call that asks, by ``(value, dtype, device)``
#: (:func:`_shared_full`).
_SHARED: dict[tuple, list[Tensor]] = {}
#: the views :func:`_shared_full` handed out, by ``(n, value, dtype, device)``
_SHARED_VIEWS: dict[tuple, Tensor] = {}


def _shared_full(n: int, value: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n,)`` filled with ``value``, shared and never written: lengths past any ``T`` for calls
    without ``lengths`` (the kernels only compare ``t < lens``), the ones of the bias gradients'
    column sums, the zeros that stand for a final state's gradient that never came. So calls
    launch no fill, and a graph plan's key sees the same address each call.
    Grown as sizes grow; the smaller ones are kept, as a kernel on another stream may still read
    them (at most twice the largest in all), and so are the views handed out, so a size asked
    for again gets the same view (a few µs less host work a call)."""
    view = _SHARED_VIEWS.get((n, value, dtype, device))
    if view is not None:
        return view
    kept = _SHARED.setdefault((value, dtype, device), [])
    if not kept or kept[-1].numel() < n:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            # inside someone's CUDA graph capture: memory made now belongs to their graph
            return torch.full((n,), value, dtype=dtype, device=device)
        size = max(n, 2 * kept[-1].numel() if kept else 64)
        # a normal tensor even when the first call asking runs under inference mode: later calls
        # that train save it for their backward, which an inference tensor refuses
        with torch.inference_mode(False):
            kept.append(torch.full((size,), value, dtype=dtype, device=device))
        if device.type == "cuda":  # filled before any stream's kernel reads it
            torch.cuda.current_stream(device).synchronize()
    if len(_SHARED_VIEWS) >= 4096:  # sizes that vary call to call (T): start over
        _SHARED_VIEWS.clear()
    view = _SHARED_VIEWS[(n, value, dtype, device)] = kept[-1][:n]
    return view


def _replayable(plan: Plan, launches, device: torch.device, tensors) -> None:
    """Run one call's ``launches``: eagerly, or for a ``graph`` plan as a CUDA graph once the
    same call repeats (:mod:`._graphs`). ``launches`` only write tensors allocated before it (a
    graph replays into the same memory, so nothing it makes may outlive it). ``tensors()``
    returns ``(given, owned)``, which between them name every tensor it reaches: ``given`` the
    caller's tensors and every other argument that shapes the call, ``owned`` the tensors the
    call allocated, whose layouts ``given`` and the plan decide (:func:`call_key`); built only for
    graph plans. The plan, the precision of fp32 products and the current stream (graphs on one
    stream share their pool) complete the key."""
    if not plan.graph:
        launches()
        return
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
    key = (plan, cudnn_rnn_tf32(), device, stream, call_key(*tensors()))
    GRAPHS.run(key, launches, device, family=plan.path)


def _launch(plan: Plan) -> dict:
    """Launch options and the plan's own compile-time switches."""
    return dict(num_warps=plan.num_warps, num_stages=plan.num_stages, PACK=plan.packed_io)


def _split_options(plan: Plan, H: int, flags: dict) -> dict:
    """The split kernels' compile-time arguments (``NK`` and ``SIDE`` only where set: other calls
    keep the kernels they compiled before ``Plan.k_slices`` and ``Plan.side_gates``). A
    ``side_gates`` forward takes ``SIDE`` instead of ``NK`` (``backward_plan`` drops it, so the
    backward takes ``NK``). Built once per plan, size and switches (a shared dict: not to be
    changed)."""
    key = (plan, H, *flags.values())
    options = _SPLIT_OPTIONS.get(key)
    if options is None:
        options = dict(BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, HP=_hp(H), **_launch(plan), **flags)
        if plan.side_gates:
            options["SIDE"] = True
        elif plan.k_slices > 1:
            options["NK"] = plan.k_slices
        _SPLIT_OPTIONS[key] = options
    return options


#: :func:`_split_options` by plan, ``H`` and switches
_SPLIT_OPTIONS: dict[tuple, dict] = {}


def _forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, mode, nonlinearity, plan, back=None):
    """The forward kernels: ``(out, cs, save, h_n, c_n, counters)``, ``save`` the gate buffer
    ``(T, B, GW * H)`` holding the saved activations (LSTM, GRU; the RNN saves nothing but
    ``out``, returned in its place), ``h_n``/``c_n`` in ``x``'s dtype (fp32 under the
    interpreter's split path), ``counters`` the step counters of the backward plan ``back``,
    zeroed here with the forward's own (:func:`_shared_counters`; empty without ``back``).
    Memory: the projections and the activations share one buffer, which the backward reuses for
    the gate gradients. Every tensor is allocated first, then one closure launches the work
    (:func:`_replayable`)."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    G = NUM_GATES[mode] * H
    dt = x.dtype
    dev = x.device
    flags = _flags(mode, nonlinearity, dt)
    if plan.half_w and (dt != torch.float32 or nonlinearity == "relu"):
        raise ValueError(f"triton engine: half_w plans run float32 tanh cells, got {dt} {nonlinearity}")
    if _hp(H) < 16 * plan.k_slices:
        raise ValueError(f"triton engine: k_slices {plan.k_slices} leaves slices under 16 deep at H = {H}")
    # Biases fold into the input projection, except GRU's b_hn, which the reset gate scales.
    has_bias = b_ih is not None or b_hh is not None
    bias = torch.empty(G, dtype=dt, device=dev) if has_bias else None
    # the gate buffer: the input projections of every step (the first G of each row's GW * H)
    xg = torch.empty(T, B, _gate_width(mode) * H, dtype=dt, device=dev)
    b_hn = xg  # GRU's b_hn, read where it is (zeros without b_hh); the others ignore it
    if mode == "gru":
        b_hn = b_hh[2 * H :].contiguous() if b_hh is not None else _shared_full(H, 0, dt, dev)
    x2 = x.reshape(T * B, I)  # (T*B, I)
    xg_rows = xg.view(T * B, -1)[:, :G]  # (T*B, G), written in place (library GEMMs take the stride)
    # out (T, B, H), preceded in memory by h0 (the resident and split kernels write it, the host
    # copies it for the others): the backward's W_hh gradient is then one product over h before
    # each step (:func:`_h_before`). Detached from the full buffer: not a view to autograd
    out_full = torch.empty(T + 1, B, H, dtype=dt, device=dev)
    out = out_full[1:].detach()
    cs = torch.empty(T, B, H, dtype=dt, device=dev) if mode == "lstm" else out
    save = xg if mode != "rnn" else out  # activations over the projections
    c0 = c0 if c0 is not None else h0
    n_btiles = _cdiv(B, plan.block_b)
    # the recurrent product's weights: half_w reads them in float16 (see Plan)
    w_rec = torch.empty_like(w_hh, dtype=torch.float16) if plan.half_w else w_hh
    state = {}  # path-specific buffers
    if plan.path in ("resident", "split"):
        # the final state, written by the kernels in the caller's dtype; the interpreter's split
        # launches (one a step) carry the exact state between them in it: fp32 there
        carry = plan.path == "split" and INTERPRETED
        hn = torch.empty(B, H, dtype=torch.float32 if carry else dt, device=dev)
        cn = torch.empty_like(hn) if mode == "lstm" else hn
        if plan.path == "split":
            state["hbuf"] = torch.empty(2, B, H, dtype=w_rec.dtype, device=dev)  # h between programs
            n_h = _cdiv(H, plan.block_h)
    elif plan.path == "gemm":
        hn = torch.empty(B, H, dtype=torch.float32, device=dev)  # the state, frozen past each end
        cn = torch.empty_like(hn) if mode == "lstm" else hn
        state["gh"] = torch.empty(B, _gate_width(mode) * H, dtype=dt, device=dev)  # gate buffer rows
    else:
        hbuf = torch.empty(2, B, H, dtype=torch.float32, device=dev)
        state["hbuf"] = hbuf
        cn = torch.empty(B, H, dtype=torch.float32, device=dev) if mode == "lstm" else hbuf
        hn = hbuf[T % 2]
        if plan.path == "persistent":
            hb, n_hp = _blocks_per_program(_cdiv(H, plan.block_h), n_btiles)
        else:
            state["bar"] = _barrier(n_btiles, dev)
    back_launches = _barrier_launches(back, _cdiv(B, back.block_b), H) if back is not None else []
    counters, state["groups"], back_groups = _shared_counters(
        _barrier_launches(plan, n_btiles, H), back_launches, dev
    )
    if counters is not None:
        state["counters"] = counters

    def launches() -> None:
        if counters is not None:
            counters.zero_()  # the forward's and its backward's (_shared_counters)
        n = 2 * H if mode == "gru" else G  # the gates whose b_hh folds into the projection
        if b_ih is not None and b_hh is not None:
            torch.add(b_ih[:n], b_hh[:n], out=bias[:n])
            if n < G:
                bias[n:].copy_(b_ih[n:])
        elif b_ih is not None:
            bias.copy_(b_ih)
        elif b_hh is not None:
            bias.zero_()
            bias[:n].copy_(b_hh[:n])
        with _matmul_precision(dt):
            if has_bias:
                torch.addmm(bias, x2, w_ih.t(), out=xg_rows)
            else:
                torch.mm(x2, w_ih.t(), out=xg_rows)
        if plan.half_w:
            w_rec.copy_(w_hh)
        if plan.path not in ("resident", "split"):  # these read h0 and c0 themselves
            _h_before(out)[:B].copy_(h0.reshape(B, H))
            if "hbuf" in state:
                state["hbuf"][0].copy_(h0)
            if plan.path == "gemm":
                hn.copy_(h0)
            if mode == "lstm":
                cn.copy_(c0)
        elif plan.path == "split" and w_rec.dtype != h0.dtype:
            state["hbuf"][0].copy_(h0)  # step 0's product reads h in W_hh's dtype (half_w)
        if plan.path == "resident":
            K.fwd_resident_kernel[(n_btiles,)](
                xg, w_rec, b_hn, h0, c0, lens, out, cs, save, hn, cn, T, B, H,
                BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, **_launch(plan), **flags,
            )  # fmt: skip
        elif plan.path == "gemm":
            gh = state["gh"]
            grid = (n_btiles, _cdiv(H, plan.block_h))
            common = dict(
                BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, **_launch(plan), **_cell_flags(mode, nonlinearity)
            )
            w_t = w_hh.t()
            with _matmul_precision(dt):
                for t in range(T):
                    # rows past their end read a zero output: their step is discarded anyway
                    torch.mm(h0 if t == 0 else out[t - 1], w_t, out=gh[:, :G])
                    K.fwd_cell_kernel[grid](xg, gh, b_hn, lens, hn, cn, out, cs, save, t, B, H, **common)
        elif plan.path == "split":
            common = _split_options(plan, H, flags)
            hbuf = state["hbuf"]
            hfirst = h0 if w_rec.dtype == h0.dtype else hbuf[0]
            for tile0, tiles, bar in state["groups"]:
                grid = (tiles * n_h,)
                args = (xg, w_rec, b_hn, lens, h0, c0, hfirst, hbuf, hn, cn, out, cs, save, bar, tile0)
                if INTERPRETED and grid[0] > 1:  # (a lone program may wait at barriers for itself)
                    for t in range(T):
                        K.fwd_split_kernel[grid](*args, t, t + 1, B, H, n_h, 0, **common)
                else:
                    _launch_synced(K.fwd_split_kernel, grid, *args, 0, T, B, H, n_h, 1, **common)
        else:
            n_hblocks = _cdiv(H, plan.block_h)
            common = dict(BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_K=plan.block_k, **_launch(plan))
            args = (xg, w_hh, b_hn, lens, state["hbuf"], cn, out, cs, save)
            if plan.path == "persistent":
                for tile0, tiles, bar in state["groups"]:
                    _launch_synced(
                        K.fwd_blocked_kernel,
                        (tiles * n_hp,),
                        *args,
                        bar,
                        tile0, 0, T, B, H, hb, n_hp, 1,
                        **common,
                        **flags,
                    )  # fmt: skip
            else:
                bar = state["bar"]
                bar.zero_()
                for t in range(T):
                    K.fwd_blocked_kernel[(n_btiles * n_hblocks,)](
                        *args, bar, 0, t, t + 1, B, H, 1, n_hblocks, 0, **common, **flags
                    )

    _replayable(
        plan, launches, dev,
        lambda: (
            ("fwd", mode, nonlinearity, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens),
            (bias, b_hn, xg, out_full, cs, w_rec, hn, cn, *_buffers(state)),
        ),
    )  # fmt: skip
    return out, cs, save, hn, cn, back_groups


def _h_before(out: Tensor) -> Tensor:
    """``(T * B, H)``: the state before each step, ``h0`` then ``out[:-1]``, from the forward's
    ``out`` ``(T, B, H)`` and the row before it in memory (:func:`_forward`)."""
    T, B, H = out.shape
    return out.as_strided((T * B, H), (H, 1), out.storage_offset() - B * H)


def _buffers(state: dict) -> list[Tensor]:
    """The tensors among a path's extra buffers (``state`` of :func:`_forward` and the backward)."""
    found = []
    for v in state.values():
        if isinstance(v, Tensor):
            found.append(v)
        elif isinstance(v, list):
            found += [bar for _, _, bar in v]
    return found


class _TritonLayer(torch.autograd.Function):
    """One direction of one layer; differentiable in ``x``, the state and every weight."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, mode, nonlinearity, plan, backward):  # noqa: D401
        h0 = h0.contiguous()
        c0 = c0.contiguous() if c0 is not None else None
        w_hh = w_hh.contiguous()
        # with a backward to come, its step counters are zeroed with the forward's
        B, H = x.shape[1], w_hh.shape[1]
        back = backward_plan(plan, mode, B, H, x.dtype) if backward else None
        fwd = _forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, mode, nonlinearity, plan, back)
        out, cs, save, hn, cn, ctx.counters = fwd
        ctx.mode, ctx.nonlinearity, ctx.plan = mode, nonlinearity, plan
        # an output no loss uses reaches the backward as None, not as zeros autograd would make
        # (a fill each: the final state, in a training loop that only carries it on)
        ctx.set_materialize_grads(False)
        # the backward writes the gate gradients over ``save`` (LSTM, GRU): a second backward
        # through the same graph (retain_graph) runs the forward kernels again for it
        ctx.save_spent = False
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, out, cs, save)
        h_n = hn.to(x.dtype)  # hn, cn are fp32 only under the interpreter's split launches
        if mode == "lstm":
            return out, h_n, cn.to(x.dtype)
        return out, h_n

    @staticmethod
    @once_differentiable  # the kernels are not differentiable: refuse double backward loudly
    def backward(ctx, dout, dh_n, dc_n=None):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, out, cs, save = ctx.saved_tensors
        mode, plan = ctx.mode, ctx.plan
        T, B, I = x.shape
        H = w_hh.shape[1]
        G = NUM_GATES[mode] * H
        dt = x.dtype
        flags = _flags(mode, ctx.nonlinearity, dt)
        dev = x.device
        needs = ctx.needs_input_grad
        if mode == "rnn":
            dg = torch.empty(T, B, H, dtype=dt, device=dev)
        else:
            if ctx.save_spent:
                save = _forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, mode, ctx.nonlinearity, plan)[2]
            ctx.save_spent = True
            dg = save  # the gate gradients of each step go over its saved activations
        plan = backward_plan(plan, mode, B, H, dt)
        c0 = c0 if c0 is not None else h0
        # Every tensor is allocated here, then one closure launches the work (_replayable).
        dout_given = dout is not None
        dout = dout.contiguous() if dout_given else torch.empty_like(out)
        direct_io = plan.path in ("resident", "split")
        if direct_io:
            # the kernels read the upstream state gradients as they came (zeros where none did)
            # and write dh0, dc0 in the state's dtype; the interpreter's split launches (one a
            # step) carry the gradients between them in fp32 buffers
            missing = dh_n is None or (mode == "lstm" and dc_n is None)
            zeros = _shared_full(B * H, 0, dt, dev) if missing else None
            dhn = dh_n.contiguous() if dh_n is not None else zeros
            dcn = dc_n.contiguous() if dc_n is not None else (zeros if mode == "lstm" else dhn)
            dh0 = torch.empty_like(h0)
            dc0 = torch.empty_like(c0) if mode == "lstm" else dh0
        else:
            # the others carry the gradient to the previous step in fp32 buffers
            dhn = torch.empty(B, H, dtype=torch.float32, device=dev)
            dcn = torch.empty_like(dhn)
            dh0 = torch.empty_like(dhn)
            dc0 = dcn
        n_btiles = _cdiv(B, plan.block_b)
        state = {}  # path-specific buffers
        # step counters (split, persistent): the ones the forward zeroed for this backward, once;
        # else (a second backward through a retained graph) new ones, zeroed here
        zero_counters = not ctx.counters
        state["groups"] = ctx.counters or _shared_counters(_barrier_launches(plan, n_btiles, H), [], dev)[1]
        ctx.counters = []
        if plan.path == "gemm":
            state["rec"] = torch.empty(B, H, dtype=dt, device=dev)  # the recurrent gradient
            state["part"] = torch.empty(B, H, dtype=dt, device=dev)  # dh0's products
        elif plan.path == "split":
            n_h = _cdiv(H, plan.block_h)
            # direct, dc: read only between launches (the interpreter's)
            state["carry"] = torch.empty(2, B, H, dtype=torch.float32, device=dev)
        elif plan.path == "persistent":
            hb, n_hp = _blocks_per_program(_cdiv(H, plan.block_h), n_btiles)
        elif plan.path == "stepwise":
            state["bar"] = _barrier(n_btiles, dev)
        x2 = x.reshape(T * B, I)  # (T*B, I)
        dg2 = dg.view(T * B, -1)  # (T*B, GW*H)
        dgi2 = dg2[:, :G]  # input side (T*B, G), rows strided by GW*H
        dx = torch.empty(T, B, I, dtype=dt, device=dev) if needs[0] else None
        dw_ih = torch.empty_like(w_ih) if needs[3] else None
        dw_hh = torch.empty_like(w_hh) if needs[4] else None
        # The bias gradients are column sums of the gate gradients, one product for both: LSTM
        # and RNN each a row of ``sums`` (the two are equal), GRU's the slots' sums (its input
        # side's, a view; the hidden side's gathered from them)
        want_ih, want_hh = b_ih is not None and needs[5], b_hh is not None and needs[6]
        db_ih = db_hh = sums = ones = None
        if want_ih or want_hh:
            k = 1 if mode == "gru" else int(want_ih) + int(want_hh)
            sums = torch.empty(k, dg2.shape[1] if mode == "gru" else G, dtype=dt, device=dev)
            ones = _shared_full(k * T * B, 1, dt, dev).view(k, T * B)
            db_ih = sums[0, :G] if want_ih else None
            if mode == "gru":
                db_hh = torch.empty_like(b_hh) if want_hh else None
            elif want_hh:
                db_hh = sums[-1]
        dh0_out = dc0_out = None
        if needs[1]:
            dh0_out = dh0 if dh0.dtype == h0.dtype else torch.empty_like(h0)
        if mode == "lstm" and needs[2]:
            dc0_out = dc0 if dc0.dtype == c0.dtype else torch.empty_like(c0)

        def launches() -> None:
            if not dout_given:
                dout.zero_()
            if not direct_io:
                for buf, given in ((dhn, dh_n), (dcn, dc_n)):
                    if given is None:
                        buf.zero_()
                    else:
                        buf.copy_(given)
            if plan.path == "resident":
                K.bwd_resident_kernel[(n_btiles,)](
                    w_hh, h0, c0, lens, out, cs, save, dout, dhn, dcn, dg, dh0, dc0, T, B, H,
                    BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, **_launch(plan), **flags,
                )  # fmt: skip
            elif plan.path == "gemm":
                rec = state["rec"]
                grid = (n_btiles, _cdiv(H, plan.block_h))
                common = dict(
                    BLOCK_B=plan.block_b,
                    BLOCK_H=plan.block_h,
                    **_launch(plan),
                    **_cell_flags(mode, ctx.nonlinearity),
                )
                args = (rec, h0, c0, lens, out, cs, save, dout, dhn, dcn, dg)
                with _matmul_precision(dt):
                    for t in range(T - 1, -1, -1):
                        if t < T - 1:
                            for k, (a, w) in enumerate(_hidden_side(dg[t + 1], w_hh, mode)):
                                if k == 0:
                                    torch.mm(a, w, out=rec)
                                else:
                                    rec.addmm_(a, w)
                        K.bwd_cell_kernel[grid](*args, t, B, H, int(t < T - 1), **common)
                    dh0.copy_(dhn)
                    for a, w in _hidden_side(dg[0], w_hh, mode):
                        torch.mm(a, w, out=state["part"])
                        dh0.add_(state["part"])
            elif plan.path == "split":
                common = _split_options(plan, H, flags)
                carry = state["carry"]
                for tile0, tiles, bar in state["groups"]:
                    if zero_counters:
                        bar.zero_()
                    grid = (tiles * n_h,)
                    args = (w_hh, h0, c0, lens, out, cs, save, dout, dhn, dcn, *carry, dg, dh0, dc0, bar)
                    args += (tile0,)
                    if INTERPRETED and grid[0] > 1:
                        for u in range(T, 0, -1):
                            K.bwd_split_kernel[grid](*args, u, u - 1, T, B, H, n_h, 0, 0, **common)
                        K.bwd_split_kernel[grid](*args, 0, 0, T, B, H, n_h, 0, 1, **common)
                    else:
                        _launch_synced(K.bwd_split_kernel, grid, *args, T, 0, T, B, H, n_h, 1, 1, **common)
            else:
                n_hblocks = _cdiv(H, plan.block_h)
                blocks = dict(BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_K=plan.block_k)
                common = dict(**blocks, **_launch(plan))
                args = (w_hh, h0, c0, lens, out, cs, save, dout, dhn, dcn, dg, dh0)
                if plan.path == "persistent":
                    for tile0, tiles, bar in state["groups"]:
                        if zero_counters:
                            bar.zero_()
                        _launch_synced(
                            K.bwd_blocked_kernel,
                            (tiles * n_hp,),
                            *args,
                            bar,
                            tile0, T, 0, T, B, H, hb, n_hp, 1, 1,
                            **common,
                            **flags,
                        )  # fmt: skip
                else:
                    grid = (n_btiles * n_hblocks,)
                    state["bar"].zero_()
                    args += (state["bar"], 0)
                    for u in range(T, 0, -1):
                        K.bwd_blocked_kernel[grid](
                            *args, u, u - 1, T, B, H, 1, n_hblocks, 0, 0, **common, **flags
                        )
                    K.bwd_blocked_kernel[grid](*args, 0, 0, T, B, H, 1, n_hblocks, 0, 1, **common, **flags)

            with _matmul_precision(dt):
                if dx is not None:
                    torch.mm(dgi2, w_ih, out=dx.view(T * B, I))
                if dw_ih is not None:
                    torch.mm(dgi2.t(), x2, out=dw_ih)
                if dw_hh is not None:
                    h_before = _h_before(out)
                    row = 0
                    for a, w in _hidden_side(dg, w_hh, mode):
                        torch.mm(a.reshape(T * B, -1).t(), h_before, out=dw_hh[row : row + w.shape[0]])
                        row += w.shape[0]
            if sums is not None:
                _column_sums(dg2 if mode == "gru" else dgi2, ones, sums)
                if db_hh is not None and mode == "gru":
                    torch.cat([sums[0, : 2 * H], sums[0, 3 * H :]], out=db_hh)
            for result, value in ((dh0_out, dh0), (dc0_out, dc0)):
                if result is not None and result is not value:
                    result.copy_(value)

        _replayable(
            plan, launches, dev,
            lambda: (
                ("bwd", mode, ctx.nonlinearity, needs, dout_given, zero_counters,
                 x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, out, cs, save, dout, dh_n, dc_n, ones),
                (dg, dhn, dcn, dh0, dc0, dx, dw_ih, dw_hh, sums, db_hh, dh0_out, dc0_out, _h_before(out),
                 *_buffers(state)),
            ),
        )  # fmt: skip
        return dx, dh0_out, dc0_out, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None, None


def run(
    mode: str,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: Tensor | None = None,
    nonlinearity: str = "tanh",
    *,
    plan: Plan | None = None,
) -> tuple[Tensor, State]:
    """Run one direction of one layer over ``x`` with the Triton kernels.

    Shapes: ``x`` ``(T, B, I)``; ``state`` ``(h0,)`` or ``(h0, c0)`` each ``(B, H)``; ``weights``
    ``weight_ih`` ``(G, I)``, ``weight_hh`` ``(G, H)``, biases ``(G,)`` or ``None``; ``lengths``
    ``(B,)`` int64 in ``[1, T]`` or ``None``. Returns ``output`` ``(T, B, H)`` (zero past each
    sequence's end) and the state at each sequence's last valid step. ``plan`` overrides
    :func:`plan_for` (tests and benchmarks use it to pick a path); without it, when
    ``torch.backends.cudnn.benchmark`` is set, the plan :func:`tune` measures fastest for calls
    of this kind (timed once, on the first). Products accumulate in fp32;
    float32 inputs use TF32 products exactly where torch.nn's cuDNN RNNs would
    (:func:`cudnn_rnn_tf32`: ``torch.backends.cudnn.rnn.fp32_precision``, or
    ``torch.backends.cudnn.allow_tf32`` before torch 2.9; TF32 by default).
    """
    if not supports(mode, x, weights):
        raise ValueError(
            f"triton engine: expected mode in {tuple(MODE_CODE)} and a 3-d float32/bfloat16/float16 "
            f"{'CPU (interpreter)' if INTERPRETED else 'CUDA'} input with matching weights, got mode "
            f"{mode!r}, {x.dtype} {tuple(x.shape)} on {x.device}" + ("" if AVAILABLE else f" ({MISSING})")
        )
    T, B, _ = x.shape
    H = weights.weight_hh.shape[1]
    if T == 0 or B == 0 or H == 0:
        raise ValueError(f"triton engine: expected non-empty T, B and H, got T={T}, B={B}, H={H}")
    if lengths is None:
        lens = _shared_full(B, _INT32_MAX, torch.int64, x.device)
    else:
        lens = lengths.to(device=x.device, dtype=torch.int64).contiguous()
    c0 = state[1] if mode == "lstm" else None
    # Triton launches on the current device (and plans for its multiprocessors); autograd's
    # backward threads already run on x's
    device = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    backward = wants_backward(x, state, weights)
    with device:
        if plan is None and torch.backends.cudnn.benchmark:
            plan = tune(mode, x, state, weights, lens, nonlinearity, backward=backward)
        if plan is None:
            plan = plan_for(mode, B, H, x.dtype)
        if plan.path == "resident" and plan.block_h < H:
            raise ValueError(f"triton engine: resident plan needs block_h >= H = {H}, got {plan.block_h}")
        res = _TritonLayer.apply(
            x.contiguous(),
            state[0],
            c0,
            weights.weight_ih.contiguous(),
            weights.weight_hh,
            weights.bias_ih,
            weights.bias_hh,
            lens,
            mode,
            nonlinearity,
            plan,
            backward,
        )
    return res[0], tuple(res[1:])
