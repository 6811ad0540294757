"""Run compiled loops on torch's own OpenMP thread team.

The fused engine's time loops can use several cores (per-thread batch ranges, or per-thread blocks
of hidden units that meet at a barrier after each step). Running them on a thread pool of our own
does not work well: after each parallel op torch's OpenMP workers keep spinning for a while, and on
a machine with as many cores as torch threads they then compete with ours (measured on 2 cores:
LSTM (16, 256, 128, 128) went from 117 µs to 170 µs per step). So the loops run as one OpenMP
parallel region of the very ``libgomp`` torch loaded (``GOMP_parallel``, the entry point GCC emits
for ``#pragma omp parallel``): the same threads torch uses, no extra ones, nothing spinning
against us. BLAS calls inside the region run single-threaded (OpenMP does not nest by default).

Private to the engine. Where torch ships no GNU-compatible OpenMP runtime, :data:`AVAILABLE` is
false and every loop runs on the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import signal
import threading
from collections.abc import Callable, Iterator

import torch

_WORKER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _load_runtime() -> ctypes.CDLL | None:
    """torch's OpenMP runtime, if it exports the GNU entry points we need (libgomp, or LLVM's libomp)."""
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    patterns = ("libgomp*.so*", "libomp*.so*", "libomp*.dylib", "libiomp5*")
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(lib_dir, pattern))):
            try:
                lib = ctypes.CDLL(path)
                lib.GOMP_parallel.argtypes = [_WORKER, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
                lib.GOMP_parallel.restype = None
                lib.omp_get_thread_num.restype = ctypes.c_int
                lib.omp_get_num_threads.restype = ctypes.c_int
                lib.omp_in_parallel.restype = ctypes.c_int
                _ = lib.GOMP_barrier
            except (OSError, AttributeError):
                continue
            return lib
    return None


_RUNTIME = _load_runtime()
#: Whether loops can run on torch's OpenMP team.
AVAILABLE = _RUNTIME is not None


def barrier_address() -> int | None:
    """Address of ``GOMP_barrier`` (all threads of the current team wait for each other), or None."""
    if _RUNTIME is None:
        return None
    return ctypes.cast(_RUNTIME.GOMP_barrier, ctypes.c_void_p).value


def team_size() -> int:
    """How many threads a loop may use: torch's intra-op thread count, 1 inside a parallel region."""
    if _RUNTIME is None or _RUNTIME.omp_in_parallel():
        return 1
    return max(1, torch.get_num_threads())


def run(work: Callable[[int, int], None], threads: int) -> None:
    """Call ``work(part, parts)`` once on each thread of a team of up to ``threads``; wait for all.

    ``parts`` is the team size OpenMP actually granted (it may give fewer threads than asked), so
    ``work`` must split its job by ``parts``, not by ``threads``. Any exception is re-raised here.
    ``work`` must not raise on one thread while another waits at a barrier: callers make sure
    everything that can fail (compilation, argument checks) happens before the region starts.
    """
    if _RUNTIME is None or threads <= 1:
        work(0, 1)
        return
    errors: list[BaseException] = []

    def worker(_data: int | None) -> None:
        try:
            work(_RUNTIME.omp_get_thread_num(), _RUNTIME.omp_get_num_threads())
        except BaseException as error:  # noqa: BLE001 - handed back to the caller below
            errors.append(error)

    callback = _WORKER(worker)
    with _interrupts_deferred():
        _RUNTIME.GOMP_parallel(callback, None, threads, 0)
    if errors:
        raise errors[0]


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the parallel region is over, then deliver it.

    Python raises KeyboardInterrupt on the main thread between two bytecodes. Inside the region
    that could be before the main thread's kernel starts, while the other threads wait for it at
    a barrier: the process would hang. So the region runs with a handler that only records the
    signal, and the previous handler gets it once every thread is done (one call: milliseconds to
    seconds). Only the main thread can install handlers; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN / SIG_DFL: no Python exception to defer
        yield
        return
    pending: list = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            previous(*pending[0])
