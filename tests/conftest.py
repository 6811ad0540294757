"""Test-process setup.

Without CUDA, Triton's kernels run under its CPU interpreter (tests/test_triton.py). The variable
must be set before triton is first imported, whichever test imports it first: triton's own jitted
helpers are defined at that import, and helpers defined for the GPU cannot run inside interpreted
kernels ("Cannot call @triton.jit'd outside of the scope of a kernel").
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
