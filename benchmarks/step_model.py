"""How many cycles one time step of a persistent kernel takes on an H100: a model read from its
machine code, for the sessions that have no GPU.

A persistent kernel's time loop is a chain: each step needs the last. Its time per step is set by
what one warp's instructions wait for, in order: results of earlier instructions (latency), the
tensor-core and special-function pipes the warps of a scheduler share, and the block barriers of
Triton's layout conversions. :func:`simulate` issues the loop body's SASS in order, for one warp,
several iterations back to back, with:

- each instruction issued once its source registers and predicates are ready (:data:`LATENCY`,
  approximate H100 figures; every other instruction :data:`DEFAULT_LATENCY`);
- one issue slot per instruction and warp, ``warps_per_scheduler`` of them per instruction (the
  other warps of the scheduler issue the same code between);
- ``HMMA`` and ``MUFU`` holding their pipe for :data:`PIPE` cycles per warp;
- ``BAR`` issued once the shared-memory stores before it have landed, and every warp leaving it
  :data:`LATENCY` ``["BAR"]`` later;
- branches inside the loop (the split kernels' barrier spin) taken once.

It returns the steady-state cycles per iteration, and what the issue waited on (``issue``: the
instruction stream itself; ``wait:OP``: a result of ``OP``; ``pipe:OP``; ``BAR``; ``wait:STS``:
the barriers' shared-memory stores). It ignores other programs on the SM, bank conflicts, cache
misses beyond :data:`LATENCY`, and the clock.

``--calibrate`` fits a measured run (``bench_gpu.py``'s JSON) as ns per model cycle, plus a fixed
cost per call and path, plus µs per GFLOP of the call's library products (float32 or 16-bit), on
the kernels that ran measured (``git checkout <commit> -- src/rnnkit/engine/triton_kernels.py``
first; ``modelled_code`` records whose they were), and splits each point's fitted time into
those three parts. ``--predict`` then gives each variant's time at each measured point on
today's code: the measured default plus the fitted ns per cycle times the difference in
modelled cycles, and the fixed cost per call at which it would meet its target. Run 5b fitted
with R^2 0.94 over its 50 resident and split defaults (median error 11 %; 13 % for a point left
out of the fit), at 0.51 ns per model cycle (the model's cycles at 1.96 GHz, the H100's clock).
Run 6 with ``--all-impls`` fits 205 timings, the default's and six variants' (the graphed ones
left out), with R^2 0.97 and a median error of 10 % (10 % left out), at 0.59 ns per model cycle
(a 1.70 GHz clock: with the variants' kernels in the fit, a model cycle stands for more time);
1.26-1.36 ms per call; 13.6 and 6.7 µs per GFLOP of fp32 and 16-bit library products
(``results/step_model.json``). It ranks variants and kernel changes between GPU sessions; it
does not replace timing them.

    PYTHONPATH=src python benchmarks/step_model.py --only "lstm fp32 B=8 H=64"
    PYTHONPATH=src python benchmarks/step_model.py --calibrate benchmarks/results/gpu.json \\
        --all-impls --out benchmarks/results/step_model.json   # on the measured code
    PYTHONPATH=src python benchmarks/step_model.py --predict benchmarks/results/step_model.json \\
        --measured benchmarks/results/gpu.json --out benchmarks/results/step_model_predicted.json
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

#: cycles until a result can be read (approximate H100 figures; the rest take DEFAULT_LATENCY)
LATENCY = {
    "HMMA": 32,
    "MUFU": 18,
    "LDS": 30,
    "LDSM": 30,
    "LDG": 450,
    "LD": 450,
    "LDL": 30,
    "LDC": 20,
    "ULDC": 10,
    "S2R": 20,
    "S2UR": 20,
    "SHFL": 25,
    "ATOM": 600,
    "ATOMG": 600,
    "F2F": 6,
    "F2FP": 6,
    "I2F": 6,
    "F2I": 6,
    "BAR": 20,
}
DEFAULT_LATENCY = 5
#: cycles one warp's instruction holds its pipe on a scheduler (HMMA: one m16n8k8 TF32 or m16n8k16
#: bf16 product; MUFU: 32 lanes through a quarter-SM's special-function units)
PIPE = {"HMMA": 8, "MUFU": 8}
#: cycles until a shared-memory store is visible to a barrier's other warps
STORE_LANDS = 20
#: opcodes whose first operand is not a destination
NO_DEST = {"STS", "STG", "ST", "STL", "STSM", "RED", "REDG", "BAR", "BRA", "EXIT", "NOP", "MEMBAR"}
NO_DEST |= {"FENCE", "DEPBAR", "WARPSYNC", "BSSY", "BSYNC", "CCTL", "ERRBAR", "YIELD"}
_ALWAYS = {"RZ", "PT", "URZ", "UPT"}

_INSN = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_REG = re.compile(r"\b(U?R)(\d+)\b|\b(U?P)(\d)\b")


def parse(sass: str) -> list[tuple]:
    """``nvdisasm -c`` text as a list of ``("label", name)`` and ``("insn", guard, opcode,
    operands)``."""
    items: list[tuple] = []
    for line in sass.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            items.append(("label", label.group(1)))
            continue
        m = _INSN.search(line)
        if m:
            items.append(("insn", (m.group(1) or "").strip(), m.group(2), m.group(3)))
    return items


def time_loop(items: list[tuple]) -> list[tuple[str, str, str]]:
    """The instructions ``(guard, opcode, operands)`` of the loop with the most ``HMMA`` (then
    the most instructions): a backward branch's target label to the branch."""
    labels = {it[1]: i for i, it in enumerate(items) if it[0] == "label"}
    best = None
    for i, it in enumerate(items):
        if it[0] != "insn" or not it[2].startswith("BRA"):
            continue
        target = _TARGET.search(it[3])
        start = labels.get(target.group(1)) if target else None
        if start is None or start > i:
            continue
        body = [x[1:] for x in items[start : i + 1] if x[0] == "insn"]
        score = (sum(x[1].startswith("HMMA") for x in body), len(body))
        if best is None or score > best[0]:
            best = (score, body)
    if best is None:
        raise ValueError("step_model: no loop (backward branch) in this machine code")
    return best[1]


def _width(op: str, mods: list[str], pos: int, n_operands: int) -> int:
    """Registers a register operand spans (``R4`` of an ``LDS.64`` is ``R4, R5``); addresses
    (``[...]``) are read by :func:`_address`."""
    if op == "HMMA":
        return 2 if pos == 2 else 4  # D, A, C: 4 registers; B: 2 (m16n8k8 TF32 and m16n8k16 bf16)
    if op == "LDSM":
        return {"1": 1, "2": 2, "4": 4}.get(mods[-1], 4) if pos == 0 else 1
    if op == "CS2R" and pos == 0:
        return 2
    if op == "IMAD" and "WIDE" in mods:
        return 2 if pos in (0, 3) else 1
    for m in mods:
        if m in ("64", "128"):
            # the data operand: the destination of a load, the last source of a store
            return (2 if m == "64" else 4) if pos in (0, n_operands - 1) else 1
    return 1


_PAIR = re.compile(r"\b(R)(\d+)\.64\b|\bdesc\[(UR)(\d+)\]")


def _address(operand: str) -> list[str]:
    """The registers an address operand reads, whatever the width of the data it moves:
    ``[R22.64]`` and ``desc[UR16]`` are register pairs (a 64-bit address, a memory descriptor),
    any other register in it one register (``[R148+UR8+0xc200]``)."""
    out = []
    for m in _PAIR.finditer(operand):
        kind, n = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        out += [f"{kind}{int(n)}", f"{kind}{int(n) + 1}"]
    return out + _registers(_PAIR.sub("", operand), 1)


def _registers(operand: str, width: int) -> list[str]:
    out = []
    for m in _REG.finditer(operand):
        if m.group(1):
            out += [f"{m.group(1)}{int(m.group(2)) + k}" for k in range(width)]
        else:
            out.append(f"{m.group(3)}{m.group(4)}")
    return out


def _operands(opcode: str, operands: str, guard: str) -> tuple[list[str], list[str]]:
    """(destination registers, source registers) of one instruction."""
    op, *mods = opcode.split(".")
    toks = [t.strip() for t in re.split(r",(?![^\[]*\])", operands)] if operands else []
    has_dest = op not in NO_DEST and bool(toks)
    dest: list[str] = []
    srcs: list[str] = _registers(guard, 1) if guard else []
    # ISETP P1, P2, ...: two predicates written; ATOMG PT, R2, [...], R5: a predicate, then the
    # value the atomic returns
    returns = op.startswith("ATOM") and bool(toks) and re.fullmatch(r"U?P[T0-9]", toks[0]) is not None
    for k, tok in enumerate(toks):
        regs = _address(tok) if "[" in tok else _registers(tok, _width(op, mods, k, len(toks)))
        second = (op.endswith("SETP") and tok.lstrip("!").startswith("P")) or returns
        if has_dest and (k == 0 or (k == 1 and second)):
            dest += regs
        else:
            srcs += regs
    return dest, [r for r in srcs if r not in _ALWAYS]


def simulate(sass: str, warps_per_scheduler: float = 1.0, iterations: int = 6) -> dict:
    """Steady-state cycles per iteration of the time loop in ``sass`` (``nvdisasm -c`` text) for
    one warp issuing in order, and where they go (``stalls``: cycles per iteration by what each
    instruction's issue waited for since the previous one's; they add up to ``cycles``).
    ``warps_per_scheduler``: the program's warps over the SM's four schedulers."""
    body = [
        (op.split(".")[0], *_operands(op, operands, guard)) for guard, op, operands in time_loop(parse(sass))
    ]
    ready: dict[str, float] = collections.defaultdict(float)
    producer: dict[str, str] = {}
    pipe_free: dict[str, float] = collections.defaultdict(float)
    stalls: collections.Counter = collections.Counter()
    stores_land = 0.0
    t = 0.0
    ends = []
    for it in range(iterations):
        counted = it >= 2  # the first iterations warm the loop-carried registers
        for op, dest, srcs in body:
            go, why = t + warps_per_scheduler, "issue"
            for r in srcs:
                if ready[r] > go:
                    go, why = ready[r], "wait:" + producer.get(r, "?")
            if op == "BAR" and stores_land > go:
                go, why = stores_land, "wait:STS"
            if op in PIPE:
                if pipe_free[op] > go:
                    go, why = pipe_free[op], "pipe:" + op
                pipe_free[op] = go + PIPE[op] * warps_per_scheduler
            if op in ("STS", "STSM"):
                stores_land = max(stores_land, go + STORE_LANDS)
            if counted:
                stalls[why] += go - t
            t = go
            if op in ("BRA", "NOP", "EXIT"):
                continue
            done = t + LATENCY.get(op, DEFAULT_LATENCY)
            for r in dest:
                ready[r] = done
                producer[r] = op
            if op == "BAR":  # every warp leaves the barrier together
                if counted:
                    stalls["BAR"] += done - t
                t = done
        ends.append(t)
    per = (ends[-1] - ends[1]) / (iterations - 2)
    ops = collections.Counter(op for op, _, _ in body)
    n = iterations - 2
    return {
        "cycles": round(per),
        "instructions": len(body),
        "HMMA": ops["HMMA"],
        "BAR": ops["BAR"],
        "stalls": {k: round(v / n) for k, v in stalls.most_common()},
    }


def model_plan(mode: str, batch: int, hidden_size: int, dtype, plan) -> dict:
    """Modelled cycles per step (:func:`simulate`) of the forward and backward kernels a
    ``resident`` or ``split`` plan runs, compiled for sm_90a as the launcher would launch them
    (a ``half_w`` forward reads ``W_hh`` in float16; its backward runs
    ``triton_engine.backward_plan``)."""
    import compile_check as cc  # Triton and the kernels: only for the command line
    from rnnkit.engine import triton_engine as te

    back = te.backward_plan(plan, mode, batch, hidden_size, dtype)
    name = cc.TL_NAME[dtype]
    sides = (
        (
            "forward",
            plan,
            cc.step_kernels(mode, dtype, hidden_size, plan)[0],
            "fp32+w16" if plan.half_w else name,
        ),
        ("backward", back, cc.step_kernels(mode, dtype, hidden_size, back)[1], name),
    )
    return {
        side: model_kernel(fn, sig_dtype, cx, run_plan, hidden_size)
        for side, run_plan, (fn, cx), sig_dtype in sides
    }


def model_kernel(fn, dtype: str, constexprs: dict, plan, H: int) -> dict:
    """:func:`simulate` of one kernel compiled as ``compile_check.compile_kernel`` compiles it."""
    import compile_check as cc

    k = cc.compile_kernel(fn, dtype, constexprs, plan, H)
    return simulate(cc.sass_text(k.asm["cubin"]), plan.num_warps / 4)


#: what names a grid point in ``bench_gpu.py``'s rows
POINT = ("mode", "dtype", "B", "T", "H")
#: the paths whose kernels the model reads (each fitted with its own fixed cost per call)
PATHS = ("resident", "split")


def _compiler() -> str:
    """The Triton that compiled the modelled machine code. Its version matters: the k-sliced split
    kernels compile to about twice the cycles a step with 3.6-3.8 (the lent H100's is 3.6) as
    with 3.9, and the default backward at ``H`` = 256 to 30 % more."""
    import triton

    return f"Triton {triton.__version__}"


def _code_version() -> str:
    """The commit whose kernels were modelled: the latest that wrote ``triton_kernels.py`` as
    it is now (checked out from an older commit to fit that commit's measurements), if any."""
    root = Path(__file__).resolve().parents[1]
    kernels = "src/rnnkit/engine/triton_kernels.py"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()

    try:
        blob = git("hash-object", kernels)
        # the commits that added or removed this content; the one holding it wrote it
        for commit in git("log", "--all", "--format=%h", f"--find-object={blob}").split() if blob else []:
            if git("rev-parse", f"{commit}:{kernels}") == blob:
                return f"triton_kernels.py of {commit}"
    except OSError:
        return ""
    return "uncommitted triton_kernels.py"


#: what a step's library products run in: float32 (TF32 where cuDNN's flag allows) or a 16-bit type
PRODUCT_DTYPES = ("fp32", "16-bit")


def library_gflop(mode: str, B: int, I: int, H: int) -> float:
    """GFLOP per step of the large library products a forward + backward runs beside the time
    loop: the input projection, its input and weight gradients (``B x I x G``) and the recurrent
    weight gradient (``B x H x G``), ``G`` the gates' width."""
    from rnnkit.engine import triton_engine as te

    G = te.NUM_GATES[mode] * H
    return 2 * B * G * (3 * I + H) / 1e9


def loo_errors(x, y):
    """Leave-one-out relative errors of a least-squares fit ``y ~ x @ coef``: each point
    predicted by the fit to all the others, ``|predicted / y - 1|``. What the fit's in-sample
    error flatters: how well it predicts a point it has not seen."""
    import numpy as np

    out = np.empty(len(y))
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        coef, *_ = np.linalg.lstsq(x[rest], y[rest], rcond=None)
        out[i] = abs(x[i] @ coef / y[i] - 1)
    return out


def _fitted_impls(row: dict, all_impls: bool) -> list[dict]:
    """The Triton timings of ``row`` a fit takes: its default's, or with ``all_impls`` every
    variant's too that ran on a modelled path without a CUDA graph (a graph takes the host's
    launch work off a call, which the per-path fixed cost stands for) and without an error."""
    impls = [i for i in row["impls"] if i.get("default") or (all_impls and "plan" in i)]
    return [
        i
        for i in impls
        if i["plan"]["path"] in PATHS
        and not i["plan"].get("graph")
        and "error" not in i
        and "us_per_step" in i
    ]


def calibrate(measured: dict, all_impls: bool = False) -> dict:
    """Fit a ``bench_gpu.py`` run's default Triton times (µs per step, forward + backward) as
    ``a`` x (modelled cycles of both kernels) + ``fixed[path]`` / ``T`` + ``g[dtype]`` x
    (:func:`library_gflop` per step): ``a`` in ns per model cycle (``1 / a`` the clock the model's
    cycles run at), ``fixed`` the µs a call costs beyond its steps, per path (their launches
    differ), ``g`` the µs per GFLOP of the library products (float32 or 16-bit). Points on other
    paths than :data:`PATHS` are left out. ``all_impls``: every variant's time too (each point
    then names its ``impl``; ``default`` marks the default's), which pins the fit down with the
    kernels a variant changes: run 6 timed seven variants beside the default."""
    import numpy as np

    from bench_gpu import DTYPES
    from rnnkit.engine import triton_engine as te

    points, cache = [], {}
    for row in measured["rows"]:
        for impl in _fitted_impls(row, all_impls):
            plan = te.Plan(**impl["plan"])
            key = (row["mode"], row["dtype"], row["H"], plan)
            if key not in cache:
                cache[key] = model_plan(row["mode"], row["B"], row["H"], DTYPES[row["dtype"]], plan)
            m = cache[key]
            cycles = m["forward"]["cycles"] + m["backward"]["cycles"]
            gflop = library_gflop(row["mode"], row["B"], row["I"], row["H"])
            kind = "fp32" if row["dtype"] == "fp32" else "16-bit"
            points.append(
                {k: row[k] for k in POINT}
                | {
                    "impl": impl["impl"],
                    "default": bool(impl.get("default")),
                    "path": plan.path,
                    "measured_us": round(impl["us_per_step"], 3),
                    "model_cycles": {"forward": m["forward"]["cycles"], "backward": m["backward"]["cycles"]},
                    "library_gflop": round(gflop, 5),
                    "stalls": {"forward": m["forward"]["stalls"], "backward": m["backward"]["stalls"]},
                    "_x": (
                        cycles / 1000.0,
                        *((1000.0 / row["T"]) * (plan.path == p) for p in PATHS),
                        *(gflop * (kind == k) for k in PRODUCT_DTYPES),
                    ),
                }
            )
    x = np.array([p.pop("_x") for p in points])
    y = np.array([p["measured_us"] for p in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    fit = x @ coef
    n_paths = len(PATHS)
    for p, f, xi in zip(points, fit, x):
        p["fitted_us"] = round(float(f), 3)
        # where the fitted time goes: the kernels' steps, the call's fixed cost spread over its
        # steps, the library products
        parts = xi * coef
        p["fitted_parts_us"] = {
            "time_loop": round(float(parts[0]), 3),
            "per_call": round(float(parts[1 : 1 + n_paths].sum()), 3),
            "library": round(float(parts[1 + n_paths :].sum()), 3),
        }
    return {
        "measured": measured.get("command", ""),
        "machine": measured.get("machine", {}).get("gpu", ""),
        "modelled_code": _code_version(),
        "compiled_with": _compiler(),
        "ns_per_model_cycle": round(float(coef[0]), 4),
        "model_clock_ghz": round(1 / float(coef[0]), 3) if coef[0] > 0 else None,
        "fixed_us_per_call": {p: round(float(c) * 1000, 1) for p, c in zip(PATHS, coef[1 : 1 + n_paths])},
        "us_per_library_gflop": {k: round(float(c), 3) for k, c in zip(PRODUCT_DTYPES, coef[1 + n_paths :])},
        "r2": round(float(1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum()), 3),
        "median_abs_rel_error": round(float(np.median(np.abs(fit / y - 1))), 3),
        "loo_median_abs_rel_error": round(float(np.median(loo_errors(x, y))), 3),
        "points": points,
    }


#: what :func:`predict` predicts by default: today's default plan (on today's kernels) and the
#: prepared variants (``bench_gpu.py --extra-paths``) whose kernels the model reads
PREDICTED = ("default", "resident_wide", "splitk", "w16", "w16k", "bw4", "w16bw4", "side", "sidebw4", "sidek")


def predict(measured: dict, fit: dict, names: tuple[str, ...] = PREDICTED) -> list[dict]:
    """Each of ``names``' time at each point of ``measured`` (the run ``fit`` was made on), had
    it run on today's kernels: the measured default's time plus ``fit``'s ns per model cycle
    times the variant's modelled cycles less the measured default's, as ``fit`` recorded them
    (the fixed cost per call is the same; so is most of the model's error where two kernels are
    alike). With the ratio to cuDNN's time in the same run, the target, and ``fixed_us_to_meet``:
    the fixed cost per call (the fit's now, for the measured default's path) at which the variant
    would meet the target (below zero: no fixed cost would do; the steps alone miss it)."""
    from bench_gpu import DTYPES, _variant_plan
    from rnnkit.engine import triton_engine as te

    # the measured default at each point (a fit over every variant holds theirs too)
    modelled = {tuple(p[k] for k in POINT): p for p in fit["points"] if p.get("default", True)}
    out, cache = [], {}
    for row in measured["rows"]:
        point = modelled.get(tuple(row[k] for k in POINT))
        cudnn = next((i for i in row["impls"] if i["impl"] == "cudnn"), None)
        if point is None or cudnn is None:
            continue
        base = sum(point["model_cycles"].values())
        fixed = fit["fixed_us_per_call"][point["path"]]
        got = {k: row[k] for k in POINT} | {
            "cudnn_us": round(cudnn["us_per_step"], 3),
            "target": row.get("target_ratio"),
            "default_us": point["measured_us"],
            "default_ratio": round(point["measured_us"] / cudnn["us_per_step"], 3),
            "variants": {},
        }
        dtype = DTYPES[row["dtype"]]
        for name in names:
            if name == "default":  # today's default plan, on today's kernels
                plan = te.plan_for(row["mode"], row["B"], row["H"], dtype)
            else:
                plan = _variant_plan(name, row["mode"], row["B"], row["H"], dtype)
            if plan is None or plan.path not in PATHS:
                continue
            key = (row["mode"], row["B"], row["H"], row["dtype"], plan)
            if key not in cache:
                m = model_plan(row["mode"], row["B"], row["H"], dtype, plan)
                cache[key] = m["forward"]["cycles"] + m["backward"]["cycles"]
            us = point["measured_us"] + fit["ns_per_model_cycle"] * (cache[key] - base) / 1000
            got["variants"][name] = {
                "model_cycles": cache[key],
                "us": round(us, 3),
                "ratio": round(us / cudnn["us_per_step"], 3),
            }
            if row.get("target_ratio") is not None:
                # the fixed cost per call (now the fit's, for the measured default's path) at
                # which this variant would meet the target: the lever graphs and host work pull
                slack = row["T"] * (row["target_ratio"] * cudnn["us_per_step"] - us)
                got["variants"][name]["fixed_us_to_meet"] = round(fixed + slack, 1)
        out.append(got)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="model the compile_check variants whose first use contains this")
    ap.add_argument("--calibrate", type=Path, help="fit the model to a bench_gpu.py JSON (run on its code)")
    ap.add_argument(
        "--all-impls",
        action="store_true",
        help="--calibrate on every variant's time, not the default's alone",
    )
    ap.add_argument("--predict", type=Path, help="a --calibrate result: predict the variants from it")
    ap.add_argument("--measured", type=Path, help="the bench_gpu.py JSON that --predict's fit was made on")
    ap.add_argument(
        "--variants", default=",".join(PREDICTED), help="what --predict predicts, comma-separated"
    )
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    if args.calibrate:
        result = calibrate(json.loads(args.calibrate.read_text()), all_impls=args.all_impls)
        for p in result["points"]:
            where = f"{p['mode']} {p['dtype']} B={p['B']} T={p['T']} H={p['H']} {p['impl']} ({p['path']})"
            print(f"{where}: measured {p['measured_us']:.2f} µs, fitted {p['fitted_us']:.2f} µs")
        print(
            f"{result['ns_per_model_cycle']} ns per model cycle (a {result['model_clock_ghz']} GHz clock), "
            f"{result['fixed_us_per_call']} µs per call, {result['us_per_library_gflop']} µs per GFLOP "
            f"of library products: R^2 {result['r2']}, median error {result['median_abs_rel_error']:.0%} "
            f"({result['loo_median_abs_rel_error']:.0%} left out)"
        )
    elif args.predict:
        if args.measured is None:
            ap.error("--predict needs --measured, the run its fit was made on")
        fit = json.loads(args.predict.read_text())
        names = tuple(n for n in args.variants.split(",") if n)
        predicted = predict(json.loads(args.measured.read_text()), fit, names)
        result = {
            "fit": str(args.predict),
            "modelled_code": _code_version(),
            "compiled_with": _compiler(),
            "predicted": predicted,
        }

        def why(v: dict, target: float | None) -> str:
            if target is None or v["ratio"] <= target:
                return ""
            if v["fixed_us_to_meet"] <= 0:
                return " (misses at any fixed cost)"
            return f" (meets at a fixed cost <= {v['fixed_us_to_meet']:.0f} µs a call)"

        for p in result["predicted"]:
            shown = ", ".join(f"{k} {v['ratio']:.2f}{why(v, p['target'])}" for k, v in p["variants"].items())
            where = f"{p['mode']} {p['dtype']} B={p['B']} T={p['T']} H={p['H']}"
            measured = f"measured {p['default_ratio']:.2f} of cuDNN (target {p['target']})"
            print(f"{where}: {measured}; predicted {shown}")
    else:
        import compile_check as cc

        rows = []
        for fn, dtype, cx, plan, where, H in cc.variants():
            if fn.__name__ not in cc.MODELLED or (args.only is not None and args.only not in where):
                continue
            row = {"kernel": fn.__name__, "first_use": where} | model_kernel(fn, dtype, cx, plan, H)
            print(json.dumps(row), flush=True)
            rows.append(row)
        result = {"rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
