"""Ops registry: one signature per op, a backend per implementation.

    from nuwa_fast import ops
    ops.available_backends()                 # e.g. ["torch"] on a CPU, ["torch", "triton", "cuda"] on a GPU
    out = ops.patch_attention(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel,
                              null_k, null_v, scale, backend=None)

Backend choice: the `backend` argument, then the NUWA_FAST_BACKEND environment variable, then the
device default (CUDA tensors: cuda, else triton, else torch; CPU tensors: torch). A backend whose
dependencies are missing (no GPU, no Triton, no compiled csrc module) is simply absent.
The signatures, shapes and layouts are documented in `nuwa_fast.ops.reference`.
"""
from __future__ import annotations

import os

from . import reference

OPS = ("patch_attention", "adc_gather", "ncp_select", "ncp_add", "ncp_remove")
_REGISTRY: dict[str, dict[str, object]] = {op: {} for op in OPS}
_LOADED = False


def register(backend: str, op: str, fn) -> None:
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    _REGISTRY[op][backend] = fn


for _op in OPS:
    register("torch", _op, getattr(reference, _op))


def _load_optional_backends() -> None:
    """Register triton/cuda backends if their dependencies are present. Never raises."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    try:
        from nuwa_fast.kernels import register_triton_backend
        register_triton_backend(register)
    except Exception:  # Triton missing, no driver and no interpreter: backend absent
        pass
    try:
        from nuwa_fast import _cuda_backend
        _cuda_backend.register_cuda_backend(register)
    except Exception:  # csrc module not built or no GPU: backend absent
        pass


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
