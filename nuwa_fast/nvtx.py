"""Named ranges for profilers: NVTX on CUDA (Nsight Systems / Compute), record_function everywhere.

Off by default (a disabled range costs one bool test). `nuwa-fast profile` turns them on:

    from nuwa_fast import nvtx
    nvtx.enable(True)
    with nvtx.range("patch 3"):
        ...

Ranges are host-side: inside a replayed CUDA graph only the ranges around the replay show, so the
per-op ranges (attention, sampling, ...) appear when the engine runs with cuda_graphs=False.
"""
from __future__ import annotations

import contextlib

import torch

_ENABLED = False
_CUDA = False


def enable(on: bool = True) -> None:
    global _ENABLED, _CUDA
    _ENABLED = bool(on)
    _CUDA = _ENABLED and torch.cuda.is_available()


def enabled() -> bool:
    return _ENABLED


@contextlib.contextmanager
def _range(name: str):
    if _CUDA:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if _CUDA:
            torch.cuda.nvtx.range_pop()


def range(name: str):  # noqa: A001  (mirrors torch.cuda.nvtx.range)
    """A profiler range named `name` when enabled, else a no-op context."""
    return _range(name) if _ENABLED else contextlib.nullcontext()
