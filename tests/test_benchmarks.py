"""The GPU benchmarks run end to end on the CPU (Triton's interpreter, ``torch.cuda`` faked).

A session's GPU minutes are few; a Python error in ``benchmarks/bench_gpu.py`` or
``benchmarks/gpu_memory.py`` found there is minutes lost. ``benchmarks/bench_gpu_dryrun.py`` runs
their whole ``main()`` on tiny points, in a subprocess (it replaces ``torch.cuda``'s functions,
which must not leak into other tests).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.engine import triton_engine  # after conftest.py has set TRITON_INTERPRET=1 on the CPU

pytestmark = pytest.mark.skipif(not triton_engine.AVAILABLE, reason=triton_engine.MISSING)

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmarks_run_every_variant_the_next_gpu_call_times(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu_dryrun.py"), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    assert {(r["mode"], r["dtype"]) for r in rows} == {
        (m, d) for m in ("lstm", "gru", "rnn") for d in ("fp32", "bf16")
    }
    timed = {}
    for row in rows:
        for impl in row["impls"]:
            assert "error" not in impl, (row["mode"], row["dtype"], row["B"], impl)
            timed.setdefault(impl["impl"], []).append(impl)
            if impl["impl"].startswith("triton:"):
                assert impl["rel_err_vs_cudnn"] < 5e-2, impl  # the variant computes the same thing
    assert {"cudnn", "native", "triton:w16", "triton:graph", "triton:gemm_graph"} <= set(timed)
    for impl in timed["triton:graph"] + timed["triton:gemm_graph"]:
        assert sum(impl["graph_calls"].values()) >= 8  # recorded (all eager without CUDA)
    assert all(impl["plan"]["half_w"] for impl in timed["triton:w16"])
    markdown = out.with_suffix(".md").read_text()
    assert "Variants against the default:" in markdown and "- gemm_graph: faster than" in markdown
    assert "gemm_graph: faster than the default" in proc.stdout
    assert "largest error against cuDNN" in proc.stdout  # a wrong variant cannot look like a win
    # the fixed-cost probe: cuDNN, the default and its graph variant at each size, fitted
    probes = payload["fixed_cost"]
    assert [p["impl"].split(":")[0] for p in probes] == ["cudnn", "triton", "triton"] * 2
    assert all("error" not in p and "skipped" not in p and p["fixed_ms"] == p["fixed_ms"] for p in probes)
    assert "Fixed cost per call" in markdown and "# fixed cost: gru fp32" in proc.stdout
    # and what the GPU does in a call (no kernels on the CPU: the profiler ran, the table shows it)
    assert all("error" not in p["timeline"] and p["timeline"]["wall_ms"] > 0 for p in probes)
    assert "What the GPU does in one call" in markdown
    assert "# timeline: gru fp32 B=3 H=16 triton:graph: wall" in proc.stdout
    # and the library products' kernels at the fp32 H = 512 misses: cuDNN's call and the default's
    library = payload["library"]
    assert [r["impl"].split(":")[0] for r in library] == ["cudnn", "triton"]
    assert all("error" not in r["timeline"] and r["timeline"]["wall_ms"] > 0 for r in library)
    assert "# library: lstm fp32 B=3 T=2 H=16 cudnn: wall" in proc.stdout
    assert "The library products at fp32 H = 512" in markdown
    # and gpu_check.sh's memory stage, the graphed calls included
    memory = json.loads((tmp_path / "gpu_memory.json").read_text())["rows"]
    assert [(r["mode"], r["dtype"]) for r in memory] == [("lstm", "fp32"), ("gru", "bf16")]
    assert all(sum(r["graph"]["calls"].values()) == 8 and "pool_mib" in r["graph"] for r in memory)


def test_k_sliced_and_wide_variants_apply_where_they_should(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch

    from bench_gpu import _variant_plan
    from rnnkit.engine import triton_engine as te

    f32, bf16 = torch.float32, torch.bfloat16
    # the default split plan at the H = 512 point (LSTM: 16 columns, packed gate I/O)
    plan = _variant_plan("splitk", "lstm", 64, 512, f32)
    assert plan == te.k_sliced(te.plan_for("lstm", 64, 512, f32, "split"), 512) and plan.k_slices == 4
    assert plan.packed_io and not plan.half_w
    assert _variant_plan("splitk", "gru", 16, 256, bf16).k_slices == 2  # 32 columns
    assert _variant_plan("splitk", "lstm", 256, 1024, f32) is None  # no split plan fits
    w16k = _variant_plan("w16k", "gru", 64, 512, f32)
    assert w16k.half_w and w16k.path == "split" and w16k.k_slices == 2
    assert _variant_plan("w16k", "gru", 64, 512, bf16) is None  # float32 layers only
    assert _variant_plan("w16k", "lstm", 8, 64, f32) is None  # w16 is resident there
    # and the resident path on one warp per 8 columns
    assert _variant_plan("resident_wide", "lstm", 8, 64, f32) == te.wide_resident("lstm", 8, 64, f32)
    assert _variant_plan("resident_wide", "gru", 8, 32, f32) is None  # the default already
    # and the split backward on 4 warps, of the default and of w16 (whose backward is the default's)
    bw4 = _variant_plan("bw4", "lstm", 16, 256, f32)
    assert bw4 == dataclasses.replace(te.plan_for("lstm", 16, 256, f32, "split"), bwd_warps=4)
    assert _variant_plan("bw4", "lstm", 64, 512, f32) is None  # 16-column slices
    w16bw4 = _variant_plan("w16bw4", "lstm", 16, 256, f32)
    assert w16bw4 == dataclasses.replace(te.w16_plan("lstm", 16, 256), bwd_warps=4)
    assert _variant_plan("w16bw4", "lstm", 16, 256, bf16) is None
    # and the forward's gates side by side: on the split plan, with the 4-warp backward, and on
    # splitk's plan (the backward sliced)
    side = _variant_plan("side", "lstm", 16, 256, f32)
    assert side == dataclasses.replace(te.plan_for("lstm", 16, 256, f32, "split"), side_gates=True)
    assert _variant_plan("sidebw4", "lstm", 16, 256, f32) == dataclasses.replace(side, bwd_warps=4)
    sidek = _variant_plan("sidek", "gru", 64, 512, f32)
    assert sidek == dataclasses.replace(_variant_plan("splitk", "gru", 64, 512, f32), side_gates=True)
    assert _variant_plan("side", "lstm", 8, 64, f32).path == "split"  # where resident is the default
    assert _variant_plan("sidebw4", "lstm", 64, 512, f32) is None  # 16-column slices
    assert _variant_plan("side", "lstm", 256, 1024, f32) is None  # no split plan fits
    # and run 6's default, where refined_split changed it
    assert _variant_plan("plain", "gru", 1, 256, f32) == te.plan_for("gru", 1, 256, f32, "split")
    assert te.plan_for("gru", 1, 256, f32) == dataclasses.replace(
        _variant_plan("plain", "gru", 1, 256, f32), bwd_warps=4
    )
    assert _variant_plan("plain", "rnn", 64, 512, f32) is None  # refined_split leaves the RNN be
    assert _variant_plan("plain", "lstm", 8, 64, f32) is None  # resident


def test_kernel_summary_counts_busy_time_once_and_finds_the_longest_gap(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_gpu import kernel_summary

    # two calls; µs intervals: a and b overlap (10-40 busy once), a 60 µs gap, c inside d
    spans = [(10, 30, "a"), (20, 40, "b"), (100, 150, "d"), (110, 120, "c"), (150, 160, "a")]
    got = kernel_summary(spans, calls=2, wall_ms=1.0)
    assert got["gpu_busy_ms"] == (30 + 60) / 1e3 / 2
    assert got["max_gap_us"] == 60 and got["kernels"] == 2.5 and got["wall_ms"] == 1.0
    assert [t["kernel"] for t in got["top"]] == ["d", "a", "b", "c"]
    assert got["top"][1] == {"kernel": "a", "per_call": 1.0, "us": 15.0}


def test_model_check_compares_predicted_and_measured_times_per_variant(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_gpu import PREDICTED, model_check

    def row(T, default_us, splitk_us):
        impls = [
            {"impl": "cudnn", "us_per_step": 30.0},
            {"impl": "triton:split", "us_per_step": default_us, "default": True},
            {"impl": "triton:splitk", "us_per_step": splitk_us},
            {"impl": "triton:graph", "us_per_step": 1.0},  # not predicted: left out
        ]
        return {"mode": "lstm", "dtype": "fp32", "B": 16, "T": T, "H": 256, "impls": impls}

    def guess(T, default_us, splitk_us):
        variants = {"default": {"us": default_us}, "splitk": {"us": splitk_us}}
        return {"mode": "lstm", "dtype": "fp32", "B": 16, "T": T, "H": 256, "variants": variants}

    rows = [row(128, 10.0, 8.0), row(512, 10.0, 8.0), row(64, 10.0, 8.0)]
    predicted = [guess(128, 11.0, 8.0), guess(512, 9.5, 6.0)]  # T = 64 was not predicted
    lines = model_check(rows, predicted)
    assert lines == [
        "default: predicted within 8% (median over 2 points); worst lstm fp32 B=16 T=128 H=256: +10%",
        "splitk: predicted within 12% (median over 2 points); worst lstm fp32 B=16 T=512 H=256: -25%",
    ]
    # the predictions the next GPU call checks are in the repository, in that form
    shipped = json.loads(PREDICTED.read_text())["predicted"]
    first = shipped[0]["variants"]
    assert {"default", "splitk"} <= set(first) and first["default"]["us"] > 0
    # modelled on the lent machine's Triton, and the run's report says so beside its own
    from bench_gpu import model_lines

    assert json.loads(PREDICTED.read_text())["compiled_with"] == "Triton 3.6.0"
    point = ("mode", "dtype", "B", "T", "H")
    shipped_rows = [{**{k: p[k] for k in point}, "impls": [default_impl(p)]} for p in shipped[:3]]
    lines = model_lines(shipped_rows, "3.6.0")
    assert lines[0] == "modelled on Triton 3.6.0's code; this run's Triton: 3.6.0"
    assert lines[1].startswith("default: predicted within 0% (median over 3 points)")


def default_impl(predicted: dict) -> dict:
    """A measured default that took exactly the predicted time."""
    return {"impl": "triton:split", "us_per_step": predicted["variants"]["default"]["us"], "default": True}


def test_compile_check_compiles_offline_as_the_launcher_specialises(tmp_path):
    # benchmarks/compile_check.py on one size: Triton compiles for sm_90a without a GPU (not
    # interpreted), ptxas and nvdisasm report registers, spills and the machine code's counts
    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compile_check.py"), "--out", str(out)]
    cmd += ["--only", "lstm fp32 B=8 H=64 resident"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {(r["kernel"], r["first_use"]): r for r in json.loads(out.read_text())["rows"]}
    plain = rows[("fwd_resident_kernel", "lstm fp32 B=8 H=64 resident")]
    wide = rows[("fwd_resident_kernel", "lstm fp32 B=8 H=64 resident wide")]
    assert {k for k, _ in rows} == {"fwd_resident_kernel", "bwd_resident_kernel"} and len(rows) == 4
    assert plain["num_warps"] == 4 and wide["num_warps"] == 8 and plain["fits_h100_smem"]
    assert plain["registers"] > 0 and plain["spill_bytes"] >= 0
    # fp32 H = 64: 16 x 64 per gate, k = 8 per TF32 mma, tiles of 8 columns: 4 gates x 8 k-steps x
    # 8 column tiles over 4 warps = 64 mma instructions per thread a step; 8 warps share them
    assert plain["sass"]["HMMA"] == 64 and wide["sass"]["HMMA"] == 32
    assert wide["sass"]["instructions"] < plain["sass"]["instructions"]
    # and the time loop's modelled cycles per step (benchmarks/step_model.py): its products are
    # the loop's, and each step waits on more than its instructions' issue slots
    for row in (plain, wide):
        assert row["model"]["HMMA"] == row["sass"]["HMMA"] and row["model"]["BAR"] > 0
        stalls = row["model"]["stalls"]
        assert abs(row["model"]["cycles"] - sum(stalls.values())) <= len(stalls)  # each rounded
        assert row["model"]["cycles"] > row["model"]["instructions"] * row["num_warps"] / 4


def test_compile_check_specialises_pointers_and_sixteen_divisible_sizes(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import compile_check as cc
    from rnnkit.engine import triton_kernels as K

    fn = K.fwd_resident_kernel
    sig = cc.signature(fn, "fp32", {"MODE": 1})
    marked = {fn.arg_names[i] for (i,) in cc.specialised(fn, sig, 64)}
    assert marked == {n for n in fn.arg_names if n.endswith("_ptr")} | {"H"}
    assert "H" not in {fn.arg_names[i] for (i,) in cc.specialised(fn, sig, 24)}


def test_host_profile_reports_where_a_calls_host_time_goes(tmp_path):
    # benchmarks/host_profile.py, as gpu_check.sh runs it, on the CPU (the interpreter's launches
    # stand in for the GPU's: the numbers mean nothing, the report's shape is what is checked)
    out = tmp_path / "host_gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "host_profile.py"),
        "--calls",
        "1",
        "--top",
        "5",
        "--launches",
        "2",
    ]
    proc = subprocess.run(
        [*cmd, "--points", "lstm fp32 3 4 8 16;gru bf16 2 3 8 40", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    # one launch's host time of each kind (the cooperative one on CUDA only)
    assert set(doc["launch_us"]) == {"torch_add", "triton_1_arg", "triton_split_sized"}
    assert all(v > 0 for v in doc["launch_us"].values())
    points = doc["points"]
    assert [(p["mode"], p["dtype"], p["H"]) for p in points] == [("lstm", "fp32", 16), ("gru", "bf16", 40)]
    for p in points:
        assert p["host_us"] > 0 and len(p["top"]) == 5
        assert sum(p["by_area"].values()) <= p["host_us"] * 1.05  # own times add up to the call
        assert [r["own_us"] for r in p["top"]] == sorted((r["own_us"] for r in p["top"]), reverse=True)
        assert "triton" in p["by_area"] and "rnnkit" in p["by_area"]
    assert "lstm fp32 B=3 T=4 I=8 H=16: host" in proc.stdout
    bad = subprocess.run([*cmd, "--points", "lstm fp64 3 4 8 16"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "expected 'mode dtype B T I H'" in bad.stderr
