"""A Triton older than the kernels were checked with is treated as missing, with a message that
names both versions: ``auto`` keeps to cuDNN and ``--engine triton`` is refused before any work.

torch 2.4 and 2.5 pin Triton 3.0 and 3.1, so a user of those gets one by default. Runs
everywhere: the old Triton is a stand-in package that has only a version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rnnkit.engine import triton_engine as te


@pytest.mark.parametrize(
    "version, too_old",
    [("3.0.0", True), ("3.1.0", True), ("2.3.1", True), ("3.2.0", False), ("3.6.0+git1a2b3c", False)]
    + [("3.10.0", False), ("4.0.0", False)],
)
def test_versions_older_than_the_checked_one_are_too_old(version, too_old):
    assert te.MIN_TRITON == (3, 2)
    assert te.triton_too_old(version) is too_old


def test_an_old_triton_is_reported_and_never_run(tmp_path: Path):
    fake = tmp_path / "triton"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "3.1.0"\n')
    script = textwrap.dedent(
        """
        import torch
        import rnnkit
        from rnnkit.engine import check, triton_engine as te
        from rnnkit.errors import RnnkitError

        assert not te.AVAILABLE and not te.INTERPRETED
        assert "Triton 3.1.0 is installed" in te.MISSING and ">= 3.2" in te.MISSING, te.MISSING
        try:
            check("triton", "cuda")
        except RnnkitError as e:
            assert "Triton 3.1.0" in str(e) and ">= 3.2" in str(e), e
        else:
            raise AssertionError("--engine triton was accepted with Triton 3.1")
        layer = rnnkit.LSTM(3, 4, engine="triton")
        try:
            layer(torch.randn(5, 2, 3))
        except RnnkitError as e:
            assert "Triton 3.1.0" in str(e), e
        else:
            raise AssertionError("engine='triton' ran with Triton 3.1")
        out, _ = rnnkit.LSTM(3, 4)(torch.randn(5, 2, 3))  # auto: the CPU engines, untouched
        assert out.shape == (5, 2, 4)
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
