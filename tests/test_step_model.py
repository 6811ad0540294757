"""The in-order model of a persistent kernel's time loop (``benchmarks/step_model.py``) on small
hand-written pieces of machine code, and its fit to measured times on one compiled kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.engine import triton_engine  # after conftest.py has set TRITON_INTERPRET=1 on the CPU

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import step_model as sm  # noqa: E402


def loop(*lines: str, label: str = ".L_x_0") -> str:
    """``lines`` as ``nvdisasm -c`` prints a loop body, closed by a branch back to its start."""
    body = [f"        /*{16 * i:04x}*/                   {line} ;" for i, line in enumerate(lines)]
    back = f"        /*{16 * len(lines):04x}*/               @P0 BRA `({label}) ;"
    return "\n".join([f"{label}:", *body, back])


def test_a_dependent_chain_costs_its_latencies_and_independent_work_its_issue_slots():
    chain = sm.simulate(loop("FADD R1, R1, 1", "FADD R1, R1, 1"))
    assert chain["cycles"] == 2 * sm.DEFAULT_LATENCY
    apart = sm.simulate(loop("FADD R1, R2, 1", "FADD R3, R4, 1"))
    assert apart["cycles"] == 3  # two adds and the branch, one issue slot each
    assert sm.simulate(loop("FADD R1, R2, 1", "FADD R3, R4, 1"), warps_per_scheduler=2)["cycles"] == 6
    # the causes add up to the cycles: the branch issues between the two waits
    assert chain["stalls"] == {"wait:FADD": chain["cycles"] - 1, "issue": 1}
    assert apart["stalls"] == {"issue": 3}


def test_wide_operands_predicates_and_the_tensor_pipe():
    # R5 is the second register an LDS.64 into R4 writes
    wide = sm.simulate(loop("LDS.64 R4, [R10]", "FADD R6, R5, 1"))
    assert wide["stalls"]["wait:LDS"] == sm.LATENCY["LDS"]  # from the load's issue to the add's
    assert sm.simulate(loop("LDS R4, [R10]", "FADD R6, R5, 1"))["cycles"] == 3
    guarded = sm.simulate(loop("ISETP.GT.AND P1, PT, R1, 1, PT", "@P1 FADD R2, R3, 1"))
    assert guarded["stalls"]["wait:ISETP"] == sm.DEFAULT_LATENCY
    # four independent products share one pipe; one accumulator chains them
    apart = [f"HMMA.1688.F32.TF32 R{4 * k}, R40, R44, R60" for k in range(4)]
    assert sm.simulate(loop(*apart))["cycles"] == 4 * sm.PIPE["HMMA"]
    chained = ["HMMA.1688.F32.TF32 R0, R40, R44, R0"] * 4
    assert sm.simulate(loop(*chained))["cycles"] == 4 * sm.LATENCY["HMMA"]
    assert sm.simulate(loop(*chained))["HMMA"] == 4


def test_addresses_are_read_as_addresses_whatever_the_data_width():
    # a 128-bit load reads a 64-bit address (a register pair) and a descriptor (a uniform pair),
    # not four registers of each: R24 here is another load's, and the next load must not wait
    # for it
    assert sm._operands("LDG.E.128", "R32, desc[UR16][R22.64]", "@P3") == (
        ["R32", "R33", "R34", "R35"],
        ["P3", "UR16", "UR17", "R22", "R23"],
    )
    loads = loop("LDG.E.128 R24, desc[UR4][R10.64]", "LDG.E.128 R32, desc[UR4][R22.64]")
    assert sm.simulate(loads)["cycles"] == 3
    # a store's data spans its width, its address does not
    assert sm._operands("STG.E.128", "desc[UR4][R2.64], R8", "") == (
        [],
        ["UR4", "UR5", "R2", "R3", "R8", "R9", "R10", "R11"],
    )
    assert sm._operands("LDS.64", "R4, [R148+UR8+0x10]", "") == (["R4", "R5"], ["R148", "UR8"])
    # an atomic that returns writes its second operand; a shared atomic's address is read
    assert sm._operands("ATOMG.E.ADD.STRONG.GPU", "PT, R5, desc[UR6][R2.64], R7", "")[0] == ["R5"]
    assert sm._operands("ATOMS.ADD", "R4, [R2], R3", "") == (["R4"], ["R2", "R3"])


def test_a_barrier_waits_for_the_shared_stores_before_it():
    got = sm.simulate(loop("STS [R1], R2", "BAR.SYNC.DEFER_BLOCKING 0x0"))
    assert got["BAR"] == 1
    assert got["cycles"] == sm.STORE_LANDS + sm.LATENCY["BAR"] + 2  # the store's and the branch's slots
    assert got["stalls"] == {"BAR": sm.LATENCY["BAR"], "wait:STS": sm.STORE_LANDS, "issue": 2}


def test_the_time_loop_is_the_one_with_the_products():
    spin = loop("LDG.E R2, [R4.64]", "ISETP.NE.AND P0, PT, R2, RZ, PT", label=".L_x_1")
    products = loop("HMMA.1688.F32.TF32 R0, R40, R44, R0", "FADD R9, R9, 1", label=".L_x_2")
    body = sm.time_loop(sm.parse(spin + "\n" + products))
    assert [op for _, op, _ in body] == ["HMMA.1688.F32.TF32", "FADD", "BRA"]
    with pytest.raises(ValueError, match="no loop"):
        sm.simulate("        /*0000*/                   FADD R1, R1, 1 ;")


def test_leave_one_out_errors_predict_each_point_from_the_others():
    import numpy as np

    # a constant fitted to 1, 2, 3: each point predicted by the mean of the other two
    errors = sm.loo_errors(np.ones((3, 1)), np.array([1.0, 2.0, 3.0]))
    assert errors == pytest.approx([1.5, 0.0, 0.5])


@pytest.mark.skipif(not triton_engine.AVAILABLE, reason=triton_engine.MISSING)
def test_calibration_recovers_a_known_fit_and_predicts_a_variant(tmp_path):
    # the model of one compiled kernel pair, made into measured times that fit it exactly:
    # 0.5 ns per model cycle, 800 µs per call and 20 µs per GFLOP of library products (the
    # input size varies them apart from the kernels'); the fit must find all three back
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src")
    code = (
        "import sys, json, torch; sys.path.insert(0, 'benchmarks'); import step_model as sm\n"
        "from rnnkit.engine import triton_engine as te\n"
        "m = sm.model_plan('lstm', 8, 64, torch.float32, te.plan_for('lstm', 8, 64, torch.float32))\n"
        "print(json.dumps(m))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = json.loads(proc.stdout.strip().splitlines()[-1])
    model_cycles = {side: model[side]["cycles"] for side in ("forward", "backward")}
    cycles = sum(model_cycles.values())
    assert model["forward"]["HMMA"] == 64 and cycles > model["forward"]["instructions"]
    plan = {"path": "resident", "block_b": 16, "block_h": 64, "block_k": 64, "num_warps": 4, "num_stages": 2}
    rows = []
    for T, I in ((64, 1024), (256, 8192), (512, 2048), (2048, 4096)):
        gflop = 2 * 8 * (4 * 64) * (3 * I + 64) / 1e9  # B = 8, G = 4 H, H = 64
        us = 0.5 * cycles / 1000 + 800 / T + 20 * gflop
        impls = [
            {"impl": "cudnn", "us_per_step": 2 * us},
            {"impl": "triton:resident", "us_per_step": us, "plan": plan, "default": True},
            # a variant on the same kernels (--all-impls fits it too), and a graphed one, whose
            # fixed cost is not the path's (left out: were it in, the fit would not be exact)
            {"impl": "triton:again", "us_per_step": us, "plan": plan},
            {"impl": "triton:graph", "us_per_step": us - 700 / T, "plan": plan | {"graph": True}},
        ]
        rows.append(
            {
                "mode": "lstm",
                "dtype": "fp32",
                "B": 8,
                "T": T,
                "I": I,
                "H": 64,
                "impls": impls,
                "target_ratio": 1.0,
            }
        )
    measured = tmp_path / "gpu.json"
    measured.write_text(json.dumps({"command": "test", "rows": rows}))
    fit_path, predicted_path = tmp_path / "fit.json", tmp_path / "predicted.json"
    script = str(ROOT / "benchmarks" / "step_model.py")
    for cmd in (
        [script, "--calibrate", str(measured), "--all-impls", "--out", str(fit_path)],
        [script, "--predict", str(fit_path), "--measured", str(measured), "--out", str(predicted_path)]
        + ["--variants", "default,resident_wide"],
    ):
        proc = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fit = json.loads(fit_path.read_text())
    assert fit["ns_per_model_cycle"] == pytest.approx(0.5, abs=1e-3)
    assert fit["fixed_us_per_call"]["resident"] == pytest.approx(800, abs=0.5) and fit["r2"] == 1.0
    assert fit["us_per_library_gflop"]["fp32"] == pytest.approx(20, rel=5e-3)
    assert fit["loo_median_abs_rel_error"] < 1e-3  # exact data: every point predicted by the rest
    assert fit["model_clock_ghz"] == pytest.approx(2.0, rel=1e-3)
    assert [p["model_cycles"] for p in fit["points"]] == [model_cycles] * 8
    assert [(p["impl"], p["default"]) for p in fit["points"][:2]] == [
        ("triton:resident", True),
        ("triton:again", False),
    ]
    first = fit["points"][0]["fitted_parts_us"]  # T = 64, I = 1024
    assert first["per_call"] == pytest.approx(800 / 64, abs=0.01)
    assert first["time_loop"] == pytest.approx(0.5 * cycles / 1000, abs=0.01)
    assert sum(first.values()) == pytest.approx(fit["points"][0]["fitted_us"], abs=2e-3)
    predicted = json.loads(predicted_path.read_text())["predicted"]
    assert [p["T"] for p in predicted] == [64, 256, 512, 2048]
    assert all(p["default_ratio"] == 0.5 for p in predicted)
    # today's default is the measured one: predicted as measured
    assert predicted[0]["variants"]["default"]["us"] == pytest.approx(predicted[0]["default_us"], abs=2e-3)
    # the fixed cost per call at which it would meet the target (1.0; cuDNN at twice its time)
    fixed_to_meet = 800 + 64 * (2 * predicted[0]["default_us"] - predicted[0]["default_us"])
    assert predicted[0]["variants"]["default"]["fixed_us_to_meet"] == pytest.approx(fixed_to_meet, abs=0.5)
    # a variant: the measured default plus 0.5 ns per cycle of difference
    wide = predicted[0]["variants"]["resident_wide"]
    shift = 0.5 * (wide["model_cycles"] - cycles) / 1000
    assert wide["us"] == pytest.approx(predicted[0]["default_us"] + shift, abs=2e-3)
    assert wide["model_cycles"] != cycles
