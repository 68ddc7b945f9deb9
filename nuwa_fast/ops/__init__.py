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

patch_attention and adc_gather are registered torch ops (`torch.ops.nuwa_fast.*`, custom_op with a
fake impl), so torch.compile(fullgraph=True) traces the paged decode step through them; the backend
is an argument of the op, resolved before the call.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

from . import reference

OPS = ("patch_attention", "adc_gather", "ncp_select", "ncp_add", "ncp_remove")
_REGISTRY: dict[str, dict[str, object]] = {op: {} for op in OPS}
_LOADED = False
_ABSENT: dict[str, str] = {}          # backend -> why it is not registered
_ATTENTION: dict[str, str] = {}       # backend -> the engine's default attention mode with it


def register(backend: str, op: str, fn) -> None:
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    _REGISTRY[op][backend] = fn


def register_backend(backend: str, module) -> list[str]:
    """Register every op that `module` defines (functions named as in OPS, the signatures of
    nuwa_fast.ops.reference) as backend `backend`; returns the ops registered. A backend the engine
    can run needs all of OPS. The module's ATTENTION (default "paged": its fused patch_attention on
    the pool) is the engine's default attention mode with this backend."""
    done = [op for op in OPS if callable(getattr(module, op, None))]
    for op in done:
        register(backend, op, getattr(module, op))
    _ATTENTION[backend] = getattr(module, "ATTENTION", "paged")
    return done


def default_attention(backend: str) -> str:
    """The engine's attention mode when none is asked for: what the backend declared it runs best."""
    return _ATTENTION.get(backend, "paged")


register_backend("torch", reference)



def import_kernels():
    """`nuwa_fast.kernels`: the installed package (setup.py maps kernels/triton/ to it), else the source
    tree's kernels/triton/ beside nuwa_fast/, so a checkout on PYTHONPATH gets the triton backend
    without an install. The one way the Triton kernels are imported: by the registry, the tests and
    the benchmarks alike. kernels/ itself has no __init__.py: a regular package named `kernels` at the
    top of a checkout would shadow Hugging Face's `kernels` (a dependency of transformers) for any
    process started there."""
    try:
        return importlib.import_module("nuwa_fast.kernels")
    except ModuleNotFoundError as e:
        if e.name != "nuwa_fast.kernels":
            raise
    init = Path(__file__).resolve().parents[2] / "kernels" / "triton" / "__init__.py"
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
    import_kernels().register_triton_backend(register)


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
    known = ["torch", "triton", "cuda"]
    return sorted(_REGISTRY[op], key=lambda b: (known.index(b) if b in known else len(known), b))


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


@torch.library.custom_op("nuwa_fast::patch_attention", mutates_args=())
def _patch_attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                        own_page: torch.Tensor, q_start: int, bias: torch.Tensor, own_rel: int,
                        null_k: torch.Tensor, null_v: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    out = _REGISTRY["patch_attention"][backend](q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel,
                                                null_k, null_v, scale)
    return out.clone() if out is q else out


@_patch_attention_op.register_fake
def _(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel, null_k, null_v, scale, backend):
    return torch.empty_like(q)                                                 # [B, H, M, D], dtype of q


@torch.library.custom_op("nuwa_fast::adc_gather", mutates_args=())
def _adc_gather_op(bias: torch.Tensor, page_table: torch.Tensor, backend: str) -> torch.Tensor:
    return _REGISTRY["adc_gather"][backend](bias, page_table)


@_adc_gather_op.register_fake
def _(bias, page_table, backend):
    return bias.new_empty(page_table.shape[0], bias.shape[1], page_table.shape[1], dtype=torch.float32)


def patch_attention(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel, null_k, null_v, scale,
                    backend: str | None = None):
    return torch.ops.nuwa_fast.patch_attention(q, k_cache, v_cache, page_table, own_page, int(q_start), bias,
                                               int(own_rel), null_k, null_v, float(scale),
                                               resolve_backend(backend, q.device, "patch_attention"))


def adc_gather(bias, page_table, backend: str | None = None):
    return torch.ops.nuwa_fast.adc_gather(bias, page_table, resolve_backend(backend, bias.device, "adc_gather"))


patch_attention.__doc__ = reference.patch_attention.__doc__
adc_gather.__doc__ = reference.adc_gather.__doc__
ncp_select = _dispatch("ncp_select")
ncp_add = _dispatch("ncp_add")
ncp_remove = _dispatch("ncp_remove")
