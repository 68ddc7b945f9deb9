"""Test setup shared by all test files.

Without a CUDA device the Triton kernels run in the interpreter: TRITON_INTERPRET=1 must be set before
any @triton.jit decorator runs, i.e. before anything imports nuwa_fast.kernels, so it is set here, at
conftest import time. The repository root goes on sys.path so `import nuwa_fast` works without an
install; `nuwa_fast.kernels` (the top-level kernels/triton/ folder, mapped by setup.py's package_dir) is
imported as the package imports it, through ops.import_kernels (the installed package, else the
source tree's kernels/triton/), when Triton is present. On a GPU the Triton patch attention runs one
fixed config per launch (NUWA_FAST_TRITON_AUTOTUNE=0): the benchmarks autotune, the tests check.
"""
import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:   # correctness over many shapes: one fixed Triton config per launch, no autotune compiles
    os.environ.setdefault("NUWA_FAST_TRITON_AUTOTUNE", "0")

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import nuwa_fast  # noqa: E402

if importlib.util.find_spec("triton") is not None:
    nuwa_fast.ops.import_kernels()

# Test shapes are tiny: one thread avoids OpenMP oversubscription on shared CI cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """The CLI sets torch's threads (--threads, default: every core this process may use); tests that run
    it in-process must not leave that to the tests after them."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
