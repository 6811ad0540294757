"""Compile every Triton kernel variant the benchmark grids use for an H100 (sm_90a), without a GPU.

This proves the kernels pass Triton's compiled-mode checks (the interpreter is more lenient) and
reports, per variant, the registers, spills and shared memory that ptxas and Triton assign,
against the H100's 227 KiB of shared memory per block, and what the machine code holds (SASS
from the bundled ``nvdisasm``: instructions, mma, spill loads and stores, barriers, special-function
and memory instructions). Each kernel is compiled as the launcher specialises it: every tensor
16-byte aligned (torch's allocations are) and ``H`` divisible by 16 where it is. It measures
nothing about speed.

    PYTHONPATH=src python benchmarks/compile_check.py [--out benchmarks/results/compile_sm90.json]
    PYTHONPATH=src python benchmarks/compile_check.py --only "H=64 resident" --out /tmp/c.json

Needs triton (with its bundled ptxas); uses ``triton.compile`` on an ``ASTSource`` directly.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).parent))
import step_model  # noqa: E402
from bench_gpu import DTYPES, ISSUE_GRID, LAYERS_GRID  # noqa: E402
from rnnkit.engine import triton_engine as te  # noqa: E402
from rnnkit.engine import triton_kernels as K  # noqa: E402

try:  # Triton 3.2 describes a call's specialisation with a class; 3.3 on with a dict
    from triton.backends.compiler import AttrsDescriptor as _ATTRS_DESCRIPTOR
except ImportError:
    _ATTRS_DESCRIPTOR = None

NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"  # Triton's ptxas, nvdisasm
H100_SMEM = 232448  # bytes of shared memory one block may use on sm_90
#: the kernels' fp32 workspaces (the resident and split kernels read and write the states and their
#: gradients in the layer's dtype; the blocked ones write ``dh0`` in fp32)
FP32_BUFFERS = {"hbuf_ptr", "cbuf_ptr", "direct_ptr", "dc_ptr", "hst_ptr", "cst_ptr"}
FP32_BUFFERS_OF = {"bwd_blocked_kernel": {"dh0_ptr"}}
TL_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
#: kernels whose time loop is one loop of steps, which :func:`step_model.simulate` models (the
#: blocked kernels' innermost loop is their reduction, not a step)
MODELLED = {"fwd_resident_kernel", "bwd_resident_kernel", "fwd_split_kernel", "bwd_split_kernel"}


def signature(fn, dtype: str, constexprs: dict) -> dict:
    """Triton's argument types; ``dtype`` "fp32+w16": a float32 layer whose forward reads
    ``W_hh`` and the exchanged ``h`` in float16 (``Plan.half_w``)."""
    if dtype == "fp32+w16":
        sig = signature(fn, "fp32", constexprs)
        return sig | {k: "*fp16" for k in ("w_ptr", "hx_ptr", "hfirst_ptr") if k in sig}
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "lens_ptr":
            sig[name] = "*i64"
        elif name == "bar_ptr":
            sig[name] = "*i32"
        elif name in FP32_BUFFERS or name in FP32_BUFFERS_OF.get(fn.__name__, ()):
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + dtype
        else:
            sig[name] = "i32"
    return sig


def ptxas_info(ptx: str) -> dict:
    """Registers and spills from ptxas -v (the newest bundled ptxas that reads Triton's PTX)."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        for exe in ("ptxas-blackwell", "ptxas"):
            if not (NVIDIA_BIN / exe).exists():
                continue
            cmd = [str(NVIDIA_BIN / exe), "-arch=sm_90a", "-v", str(src), "-o", os.devnull]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode == 0:
                text = out.stdout + out.stderr
                regs = re.search(r"Used (\d+) registers", text)
                spill = re.search(r"(\d+) bytes spill stores", text)
                return {"registers": int(regs.group(1)) if regs else None, "spill_bytes": int(spill.group(1))}
    return {"registers": None, "spill_bytes": None}


def variants():
    """(kernel, dtype, constexprs, plan, where, H) for every default and alternative plan."""
    seen = set()
    for grid, modes in ((ISSUE_GRID, ("lstm", "gru")), (LAYERS_GRID, ("lstm", "gru", "rnn"))):
        for B, _T, _I, H in grid:
            for mode in modes:
                for dtype in DTYPES.values():
                    default = te.plan_for(mode, B, H, dtype).path
                    for path in dict.fromkeys((default, "split", "gemm", "persistent", "stepwise")):
                        plan = te.plan_for(mode, B, H, dtype, path)
                        if path == "resident":
                            kernels = step_kernels(mode, dtype, H, plan)
                            wide = te.wide_resident(mode, B, H, dtype)
                            if wide is not None:
                                kernels += [(fn, dict(c, _plan=wide, _tag=" wide")) for fn, c in kernels]
                        elif path == "gemm":
                            c = dict(
                                te._cell_flags(mode, "tanh"),
                                PACK=plan.packed_io,
                                BLOCK_B=plan.block_b,
                                BLOCK_H=plan.block_h,
                            )
                            kernels = [(K.fwd_cell_kernel, c), (K.bwd_cell_kernel, c)]
                        elif path == "split":
                            kernels = step_kernels(mode, dtype, H, plan)
                            kernels += _sliced(plan, H, kernels[0][1]) + _side(mode, plan, kernels[0][1])
                            kernels += _narrow(mode, B, H, dtype, plan, kernels[1][1])
                        else:
                            c = _kernel_flags(mode, dtype, plan) | dict(BLOCK_K=plan.block_k)
                            kernels = [
                                (K.fwd_blocked_kernel, c),
                                (K.bwd_blocked_kernel, c),
                            ]
                        if path == default and dtype == torch.float32:
                            kernels += _w16_kernels(mode, B, H)
                        for fn, cx in kernels:
                            name = cx.pop("_dtype", TL_NAME[dtype])
                            run_plan = cx.pop("_plan", plan)
                            tag = cx.pop("_tag", "")
                            launch = (run_plan.num_warps, run_plan.num_stages)  # path: a runtime argument
                            key = (fn.__name__, name, tuple(sorted(cx.items())), launch)
                            if key not in seen:
                                seen.add(key)
                                shown = ("w16" if name == "fp32+w16" else path) + tag
                                shown += f" k{cx['NK']}" if "NK" in cx else ""
                                where = f"{mode} {TL_NAME[dtype]} B={B} H={H} {shown}"
                                yield fn, name, cx, run_plan, where, H


def _kernel_flags(mode: str, dtype: torch.dtype, plan) -> dict:
    """The compile-time arguments every time-loop kernel of ``plan`` takes (tanh cells, as the
    launcher passes them on a GPU)."""
    flags = te._flags(mode, "tanh", dtype)
    return dict(flags, UPCAST=False, PACK=plan.packed_io, BLOCK_B=plan.block_b, BLOCK_H=plan.block_h)


def step_kernels(mode: str, dtype: torch.dtype, H: int, plan) -> list:
    """``[(forward kernel, constexprs), (backward kernel, constexprs)]`` of a ``resident`` or
    ``split`` plan (``k_slices`` and ``side_gates`` included; the float32 forward of a ``half_w`` plan is
    :func:`_w16_kernels`')."""
    c = _kernel_flags(mode, dtype, plan)
    if plan.path == "resident":
        return [(K.fwd_resident_kernel, c), (K.bwd_resident_kernel, dict(c))]
    if plan.path != "split":
        raise ValueError(f"compile_check: no step kernels for the {plan.path!r} path")
    c["HP"] = te._hp(H)
    if plan.k_slices > 1:
        c["NK"] = plan.k_slices
    forward = c
    if plan.side_gates:  # the forward's alone, in place of NK
        forward = {k: v for k, v in c.items() if k != "NK"} | {"SIDE": True}
    return [(K.fwd_split_kernel, forward), (K.bwd_split_kernel, dict(c))]


def _w16_kernels(mode: str, B: int, H: int) -> list:
    """The forward kernel of ``w16_plan`` (its backward is the float32 default's), tagged with
    its argument types and plan."""
    plan = te.w16_plan(mode, B, H)
    if plan is None:
        return []
    fn, c = step_kernels(mode, torch.float32, H, plan)[0]
    c |= dict(_dtype="fp32+w16", _plan=plan)
    return [(fn, c)] + (
        _sliced(plan, H, c, backward=False) + _side(mode, plan, c) if plan.path == "split" else []
    )


def _sliced(plan, H: int, c: dict, backward: bool = True) -> list:
    """The split kernels of ``k_sliced(plan)`` (``Plan.k_slices``), where it slices."""
    sliced = te.k_sliced(plan, H)
    if sliced.k_slices == 1:
        return []
    fns = (K.fwd_split_kernel, K.bwd_split_kernel) if backward else (K.fwd_split_kernel,)
    return [(fn, dict(c, NK=sliced.k_slices, _plan=sliced)) for fn in fns]


def _side(mode: str, plan, c: dict) -> list:
    """The forward kernel of ``side_by_side(plan)`` (``Plan.side_gates``; its backward is
    ``plan``'s), where it applies."""
    side = te.side_by_side(plan, mode)
    return [] if side is None else [(K.fwd_split_kernel, dict(c, SIDE=True, _plan=side, _tag=" side"))]


def _narrow(mode: str, B: int, H: int, dtype: torch.dtype, plan, c: dict) -> list:
    """The backward kernel of ``narrow_backward(plan)`` (on 4 warps), where it applies."""
    narrow = te.narrow_backward(plan, mode, B, H, dtype)
    if narrow is None:
        return []
    back = te.backward_plan(narrow, mode, B, H, dtype)
    return [(K.bwd_split_kernel, dict(c, _plan=back, _tag=" bw4"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compile_sm90.json")
    ap.add_argument("--only", default="", help="only the variants whose first use contains this text")
    args = ap.parse_args()
    rows = []
    for fn, dtype, cx, plan, where, H in variants():
        if args.only not in where:
            continue
        t0 = time.perf_counter()
        row = {
            "kernel": fn.__name__,
            "first_use": where,
            "num_warps": plan.num_warps,
            "num_stages": plan.num_stages,
        }
        row["constexprs"] = {
            k: v for k, v in cx.items() if k in ("MODE", "BLOCK_B", "BLOCK_H", "BLOCK_K", "HP", "NK", "SIDE")
        }
        try:
            k = compile_kernel(fn, dtype, cx, plan, H)
            row["shared_bytes"] = k.metadata.shared
            row["fits_h100_smem"] = k.metadata.shared <= H100_SMEM
            row["weights_staged_in_smem_before_loop"] = _hoisted(k.asm["ttgir"])
            row.update(ptxas_info(k.asm["ptx"]))
            text = sass_text(k.asm["cubin"])
            row["sass"] = sass_counts(text)
            if fn.__name__ in MODELLED:
                row["model"] = step_model.simulate(text, plan.num_warps / 4)
        except Exception as e:
            while e.__cause__ is not None:  # Triton wraps the real error once per inlined call
                e = e.__cause__
            row["error"] = f"{type(e).__name__}: {e}"[-400:]
        row["compile_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"target": "cuda sm_90a (H100), compiled offline", "triton": triton.__version__, "rows": rows}
    args.out.write_text(json.dumps(payload, indent=1))
    bad = [r for r in rows if "error" in r or not r.get("fits_h100_smem", False)]
    print(f"wrote {args.out}: {len(rows)} variants, {len(bad)} failing or over the shared-memory limit")
    return 1 if bad else 0


def specialised(fn, sig: dict, H: int) -> dict:
    """The attributes Triton's launcher gives a call at hidden size ``H``: every pointer 16-byte
    aligned, ``H`` divisible by 16 where it is (the other integers are not specialised:
    ``do_not_specialize``). Without them, loads and stores compile unvectorised."""
    return {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if sig[name].startswith("*") or (name == "H" and H % 16 == 0)
    }


#: SASS opcodes :func:`sass_counts` reports (``LDL``/``STL``: spilled registers; ``MUFU``: the
#: special-function unit, exp and reciprocal; ``LDSM``: shared-memory matrix loads for mma)
SASS_OPS = ("HMMA", "LDL", "STL", "BAR", "MUFU", "LDS", "LDSM", "STS", "LDG", "STG")


def compile_kernel(fn, dtype: str, constexprs: dict, plan, H: int):
    """``fn`` compiled for sm_90a as the launcher would launch it at hidden size ``H`` with
    ``plan``'s warps and stages (``dtype`` as :func:`signature` takes it)."""
    cx = _with_defaults(fn, constexprs)
    sig = signature(fn, dtype, cx)
    attrs = specialised(fn, sig, H)
    if _ATTRS_DESCRIPTOR is not None:  # Triton 3.2: no constexprs in the signature; hints by index
        sig = {k: v for k, v in sig.items() if v != "constexpr"}
        attrs = _ATTRS_DESCRIPTOR.from_hints({i: 16 for (i,) in attrs})
    src = ASTSource(fn, sig, cx, attrs)
    options = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def sass_text(cubin: bytes) -> str:
    """The kernel's machine code as the bundled ``nvdisasm -c`` prints it."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        return subprocess.run(
            [str(NVIDIA_BIN / "nvdisasm"), "-c", str(path)], capture_output=True, text=True
        ).stdout


def sass_counts(text: str) -> dict:
    """Instructions in a kernel's machine code (:func:`sass_text`): all, and those of
    :data:`SASS_OPS`. Most of a persistent kernel's code is its time loop, unrolled inside."""
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", text)
    return {"instructions": len(ops)} | {op: ops.count(op) for op in SASS_OPS}


def _with_defaults(fn, constexprs: dict) -> dict:
    """``constexprs`` and the kernel's compile-time parameters left at their defaults, as
    Triton's launcher passes them."""
    empty = inspect.Parameter.empty
    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.default is not empty}
    return defaults | constexprs


def _hoisted(ttgir: str) -> bool | None:
    """Whether a shared-memory allocation happens before the first loop (resident kernels: W_hh)."""
    loop = ttgir.find("scf.for")
    alloc = ttgir.find("ttg.local_alloc")
    return None if loop < 0 or alloc < 0 else alloc < loop


if __name__ == "__main__":
    sys.exit(main())
