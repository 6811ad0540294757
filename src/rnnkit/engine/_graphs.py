"""CUDA graphs over a call's launches: captured once, replayed while the same call repeats.

A forward or backward call of the Triton engine is a short run of launches (bias folding, the
input projection, state copies, the time-loop kernels, the gradient products) issued by Python.
On the lent H100 that host work costs about 1 ms a forward + backward, a third of the call at
``T`` = 64-256 (benchmarks/results/gpu_notes.md); the ``gemm`` path, which launches a library
product and a cell kernel every step, pays about 40 us a step and direction. Captured as one
CUDA graph, the same launches replay from a single host call and the GPU runs them back to back.

A graph bakes in every kernel argument, addresses included. So :class:`CallGraphs` keeps a graph
per *key* that names every tensor the launches touch (address, shape, strides, dtype) and every
other argument, and replays it only for a call with the same key: the same memory, with whatever
it holds now. The launches must not allocate (memory made during a capture belongs to the graph,
which reuses it on the next replay), so every result is allocated before them; what the library
allocates during a capture stays with the graphs' pool (64 MiB of cuBLAS workspace on the lent
H100). A call replays only where its tensors sit where the captured call's did, as over the same
tensors call after call (a benchmark's). A training loop's tensors move: on the H100 a language
model's 12 steps replayed none of their 24 calls, PyTorch's caching allocator handing the
embeddings, the carried state and the engine's own buffers other blocks each step (session 17).
A key is captured the second time it is seen: the first call runs eagerly, which also
compiles every kernel the capture will launch, and one-off calls never pay for a capture. Capture
itself runs nothing, so launches that update buffers in place (the engine writes activations over
projections) still run exactly once per call.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["CallGraphs", "call_key"]


def call_key(given: tuple, owned: tuple = ()) -> tuple:
    """A hashable key naming a call's arguments. ``given``: each tensor by its address, shape,
    strides and dtype (what a captured launch bakes in), anything else by value. ``owned``:
    tensors the call allocated itself, by address alone, for their shapes, strides and dtypes
    follow from ``given`` (a backward's key: 14 vs 20 µs on the CPU VM; one is built on every
    call of a graph plan)."""
    return (
        tuple(
            [
                ("tensor", p.data_ptr(), p.shape, p.stride(), p.dtype) if isinstance(p, Tensor) else p
                for p in given
            ]
        ),
        tuple([None if t is None else t.data_ptr() for t in owned]),
    )


def _remember(cache: OrderedDict, key: tuple, value: Any, capacity: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > capacity:
        cache.popitem(last=False)  # least recently used


class CallGraphs:
    """Runs a call's launches eagerly, or as a CUDA graph once its key repeats.

    ``capacity`` graphs are kept (least recently used dropped first), in one memory pool per
    device and stream they replay on: graphs replayed on one stream run one after another, so
    what one leaves in the pool (the library's workspace) the next may reuse. A call whose
    capture fails runs eagerly from then on (with a warning, the first time); after
    ``max_failures`` such calls of one family every call of that family does. ``stats`` counts
    what each call did.
    """

    def __init__(self, capacity: int = 16, max_failures: int = 3) -> None:
        self.capacity = capacity
        self.max_failures = max_failures
        self.enabled = True  # False: every call runs eagerly
        self.failures: Counter[str] = Counter()  # failed captures, by family
        self.stats: Counter[str] = Counter()
        self._graphs: OrderedDict[tuple, Any] = OrderedDict()
        self._seen: OrderedDict[tuple, str] = OrderedDict()  # "seen" once, or "failed" to capture
        self._lock = threading.Lock()  # autograd runs backward calls on another thread
        self._local = threading.local()  # whether this thread is capturing
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._pools: dict[tuple, Any] = {}

    def run(self, key: tuple, launches: Callable[[], None], device: torch.device, family: str = "") -> str:
        """Run ``launches`` (one call's launches, on the current stream) for ``key``: replay its
        graph, capture one on the key's second sighting, or run it eagerly. ``family`` groups
        calls whose captures stand or fall together (the engine: the plan's path, so a capture
        refusing the barrier paths' cooperative launches leaves the other paths their graphs).
        Returns which of ``"replayed"``, ``"captured"`` (and replayed) or ``"eager"`` happened."""
        how = self._run(key, launches, device, family)
        self.stats[how] += 1
        return how

    def _run(self, key: tuple, launches: Callable[[], None], device: torch.device, family: str) -> str:
        retired = self.failures[family] >= self.max_failures
        if retired or not (self.enabled and self.capturable(device)):
            launches()
            return "eager"
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
            first = graph is None and key not in self._seen
            if first:
                _remember(self._seen, key, "seen", 4 * self.capacity)
            failed = self._seen.get(key) == "failed"
        if graph is not None:
            graph.replay()
            return "replayed"
        if first or failed:
            launches()
            return "eager"
        try:
            graph = self.capture(launches, device)
        except Exception as e:  # a driver or library call the capture cannot take
            with self._lock:
                self._seen[key] = "failed"  # this call runs eagerly from now on
                self.failures[family] += 1
                count = self.failures[family]
            if count in (1, self.max_failures):
                scope = "this call runs" if count == 1 else f"calls of family {family!r} run"
                warnings.warn(
                    f"triton engine: capturing a CUDA graph failed ({type(e).__name__}: {e}); "
                    f"{scope} eagerly from now on",
                    RuntimeWarning,
                    stacklevel=4,
                )
            launches()
            return "eager"
        with self._lock:
            self._seen.pop(key, None)
            _remember(self._graphs, key, graph, self.capacity)
        graph.replay()
        return "captured"

    def capturing(self) -> bool:
        """Whether the calling thread is inside one of this object's captures (launches may then
        take forms only a capture of launches that just ran eagerly can be trusted with)."""
        return getattr(self._local, "capturing", False)

    def capturable(self, device: torch.device) -> bool:
        """CUDA, and not inside a capture already (the caller's own graph then takes the launches)."""
        return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()

    def capture(self, launches: Callable[[], None], device: torch.device) -> Any:
        """A CUDA graph of ``launches``, captured on a side stream (the legacy default stream
        cannot be captured) that waits for the current stream's work first."""
        current = torch.cuda.current_stream(device)
        with self._lock:
            if device not in self._streams:
                self._streams[device] = torch.cuda.Stream(device)
            stream = self._streams[device]
            # graphs replayed on one stream run one after another, so they may share a pool
            pool = self._pools.setdefault((device, current.cuda_stream), torch.cuda.graph_pool_handle())
        graph = torch.cuda.CUDAGraph()
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            # not torch.cuda.graph(): it empties the allocator's cache first, so the next calls'
            # blocks (and keys) would move and never repeat
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            self._local.capturing = True
            try:
                launches()
            finally:
                self._local.capturing = False
                graph.capture_end()
        current.wait_stream(stream)
        return graph

    def clear(self) -> None:
        """Drop every graph and sighting (their pool memory goes back to the allocator)."""
        with self._lock:
            self._graphs.clear()
            self._seen.clear()
