"""Ops registry: one signature per op, a backend per implementation.

    from nuwa_fast import ops
    ops.available_backends()                 # e.g. ["torch"] on a CPU, ["torch", "triton", "cuda"] on a GPU
    out = ops.patch_attention(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel,
                              null_k, null_v, scale, backend=None)

Backend choice: the `backend` argument, then the NUWA_FAST_BACKEND environment variable, then the
device default (CUDA tensors: cuda, else triton, else torch; CPU tensors: torch). A backend whose
dependencies are missing (no GPU, no Triton, no compiled csrc module) is absent, and
`absent_backends()` says why (`nuwa-fast info` prints it).
The signatures, shapes and layouts are documented in `nuwa_fast.ops.reference`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from . import reference

OPS = ("patch_attention", "adc_gather", "ncp_select", "ncp_add", "ncp_remove")
_REGISTRY: dict[str, dict[str, object]] = {op: {} for op in OPS}
_LOADED = False
_ABSENT: dict[str, str] = {}          # backend -> why it is not registered


def register(backend: str, op: str, fn) -> None:
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    _REGISTRY[op][backend] = fn


for _op in OPS:
    register("torch", _op, getattr(reference, _op))


def _import_kernels():
    """`nuwa_fast.kernels`: the installed package (setup.py maps kernels/ to it), else the source tree's
    kernels/ beside nuwa_fast/, so a checkout on PYTHONPATH gets the triton backend without an install."""
    try:
        return importlib.import_module("nuwa_fast.kernels")
    except ModuleNotFoundError as e:
        if e.name != "nuwa_fast.kernels":
            raise
    init = Path(__file__).resolve().parents[2] / "kernels" / "__init__.py"
    if not init.is_file():
        raise ModuleNotFoundError(f"nuwa_fast.kernels is not installed and {init} does not exist")
    spec = importlib.util.spec_from_file_location("nuwa_fast.kernels", init,
                                                  submodule_search_locations=[str(init.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nuwa_fast.kernels"] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules["nuwa_fast.kernels"]
        raise
    return mod


def _register_triton():
    _import_kernels().register_triton_backend(register)


def _register_cuda():
    from nuwa_fast import _cuda_backend
    _cuda_backend.register_cuda_backend(register)


def _load_optional_backends() -> None:
    """Register triton/cuda backends if their dependencies are present; record why one is not."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for name, load in (("triton", _register_triton), ("cuda", _register_cuda)):
        try:
            load()
        except (ImportError, RuntimeError, OSError, AttributeError) as e:
            # ImportError: Triton / the csrc module / a GPU is missing; RuntimeError, OSError: a driver
            # or a shared library that does not load; AttributeError: a stale _C without a launcher
            _ABSENT[name] = f"{type(e).__name__}: {e}"
            for op in OPS:
                _REGISTRY[op].pop(name, None)


def absent_backends() -> dict[str, str]:
    """Backends that did not load, each with the reason (the exception that stopped it)."""
    _load_optional_backends()
    return dict(_ABSENT)


def available_backends(op: str = "patch_attention") -> list[str]:
    _load_optional_backends()
    return sorted(_REGISTRY[op], key=["torch", "triton", "cuda"].index)


def resolve_backend(backend: str | None, device=None, op: str = "patch_attention") -> str:
    _load_optional_backends()
    name = backend or os.environ.get("NUWA_FAST_BACKEND") or None
    if name is None:
        is_cuda = device is not None and str(device).startswith("cuda")
        for cand in (["cuda", "triton", "torch"] if is_cuda else ["torch"]):
            if cand in _REGISTRY[op]:
                return cand
    if name not in _REGISTRY[op]:
        raise ValueError(f"backend {name!r} is not available here for {op}; available: "
                         f"{available_backends(op)} (triton needs a GPU or TRITON_INTERPRET=1, cuda "
                         f"needs a GPU and the compiled csrc module)")
    return name


def get(op: str, backend: str | None = None, device=None):
    return _REGISTRY[op][resolve_backend(backend, device, op)]


def _dispatch(op):
    def fn(*args, backend: str | None = None, **kwargs):
        dev = None
        for a in args:
            if hasattr(a, "device"):
                dev = a.device
                break
        return get(op, backend, dev)(*args, **kwargs)
    fn.__name__ = op
    fn.__doc__ = getattr(reference, op).__doc__
    return fn


patch_attention = _dispatch("patch_attention")
adc_gather = _dispatch("adc_gather")
ncp_select = _dispatch("ncp_select")
ncp_add = _dispatch("ncp_add")
ncp_remove = _dispatch("ncp_remove")
