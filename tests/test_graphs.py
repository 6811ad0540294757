"""CallGraphs' policy: eager on a key's first sighting, captured on its second, replayed after.

CUDA graphs need a GPU; here a fake graph stands in for one (capture runs nothing and records the
launches, replay runs them), which is what the policy relies on. The real capture is tested on a
GPU in tests/test_triton.py (``test_gpu_graph_plans_replay_equal_to_eager_calls``).
"""

from __future__ import annotations

import types

import pytest
import torch

from rnnkit.engine._graphs import CallGraphs, call_key

CPU = torch.device("cpu")


class FakeGraphs(CallGraphs):
    """CUDA graphs emulated: every device may capture; capture records, replay runs the launches."""

    def __init__(self, capacity: int = 16, fail: bool = False) -> None:
        super().__init__(capacity)
        self.fail = fail
        self.captured: list = []

    def capturable(self, device: torch.device) -> bool:
        return True

    def capture(self, launches, device):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured.append(launches)
        return types.SimpleNamespace(replay=launches)


def _counting_launches():
    calls = []
    return calls, lambda: calls.append(1)


def test_first_sighting_runs_eagerly_the_second_captures_then_replays():
    graphs = FakeGraphs()
    calls, launches = _counting_launches()
    runs = [graphs.run(("k",), launches, CPU) for _ in range(4)]
    assert runs == ["eager", "captured", "replayed", "replayed"]
    # capture itself runs nothing, so launches that update buffers in place run once a call
    assert len(calls) == 4 and len(graphs.captured) == 1
    assert graphs.stats == {"eager": 1, "captured": 1, "replayed": 2}


def test_keys_are_apart_and_the_least_recently_used_graph_goes_first():
    graphs = FakeGraphs(capacity=2)
    _, launches = _counting_launches()
    for key in ("a", "b", "c"):
        assert graphs.run((key,), launches, CPU) == "eager"
        assert graphs.run((key,), launches, CPU) == "captured"
    assert graphs.run(("b",), launches, CPU) == "replayed"
    assert graphs.run(("c",), launches, CPU) == "replayed"
    # "a" was dropped for "c" and is forgotten: a first sighting again
    assert graphs.run(("a",), launches, CPU) == "eager"
    assert graphs.run(("a",), launches, CPU) == "captured"  # drops "b", used before "c"
    assert graphs.run(("c",), launches, CPU) == "replayed"
    assert graphs.run(("b",), launches, CPU) == "eager"
    graphs.clear()
    assert graphs.run(("c",), launches, CPU) == "eager"


def test_a_call_whose_capture_fails_runs_eagerly_and_repeated_failures_retire_its_family():
    graphs = FakeGraphs(fail=True)  # max_failures = 3
    calls, launches = _counting_launches()
    graphs.run(("a",), launches, CPU, "split")
    with pytest.warns(RuntimeWarning, match="capturing a CUDA graph failed.*this call runs eagerly"):
        assert graphs.run(("a",), launches, CPU, "split") == "eager"
    assert len(calls) == 2  # the call whose capture failed still ran
    assert graphs.run(("a",), launches, CPU, "split") == "eager"
    assert graphs.failures["split"] == 1  # not retried
    with pytest.warns(RuntimeWarning, match="calls of family 'split' run eagerly from now on"):
        for key in ("c", "d"):
            graphs.run((key,), launches, CPU, "split")
            graphs.run((key,), launches, CPU, "split")
    graphs.fail = False
    graphs.run(("e",), launches, CPU, "split")
    assert graphs.run(("e",), launches, CPU, "split") == "eager"  # the family is retired
    graphs.run(("b",), launches, CPU, "gemm")
    assert graphs.run(("b",), launches, CPU, "gemm") == "captured"  # other families still capture
    graphs.enabled = False
    assert graphs.run(("b",), launches, CPU, "gemm") == "eager"  # the switch for every call
    assert len(calls) == 12  # every call ran once, whatever happened


def test_devices_that_cannot_capture_always_run_eagerly():
    graphs = CallGraphs()  # the real one: a CPU device never captures
    calls, launches = _counting_launches()
    assert [graphs.run(("k",), launches, CPU) for _ in range(3)] == ["eager"] * 3
    assert len(calls) == 3


def test_call_keys_name_tensors_by_memory_and_layout_not_value():
    a = torch.arange(12.0).reshape(3, 4)
    assert call_key(("fwd", a, 3)) == call_key(("fwd", a, 3))
    assert call_key((a,)) != call_key((a.clone(),))  # same values, other memory
    assert call_key((a,)) != call_key((a[:2],))  # same address, other shape
    assert call_key((a,)) != call_key((a.t(),))  # same address, other strides
    assert call_key((a,)) != call_key((a.view(torch.int32),))  # same memory, other dtype
    assert call_key((a, 1)) != call_key((a, 2))
    hash(call_key(("fwd", a, None, 2.5)))
    # tensors the call allocated: by address alone (their layouts follow from the given ones)
    b = torch.zeros(4)
    assert call_key((a,), (b, None)) == call_key((a,), (b.view(2, 2), None))
    assert call_key((a,), (b, None)) != call_key((a,), (b.clone(), None))
    assert call_key((a,), (b, None)) != call_key((a,), (None, b))
