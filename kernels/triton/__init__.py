"""Triton kernels: the `triton` backend of nuwa_fast.ops (one op per file).

Importing this package never fails: Triton is imported lazily by `register_triton_backend`, which the
ops registry calls and which raises ImportError (caught there: the backend is then absent) when Triton
is missing or there is neither a CUDA device nor the interpreter (TRITON_INTERPRET=1, which must be
set before the kernel modules are first imported).
"""
from __future__ import annotations

import os


def register_triton_backend(register) -> None:
    """Register the five triton ops with `register(backend, op, fn)`."""
    import triton  # noqa: F401  (ImportError when Triton is missing)
    import torch

    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        raise ImportError("triton backend needs a CUDA device or TRITON_INTERPRET=1")
    from .adc_gather import adc_gather
    from .ncp import ncp_add, ncp_remove, ncp_select
    from .patch_attention import patch_attention

    for fn in (patch_attention, adc_gather, ncp_select, ncp_add, ncp_remove):
        register("triton", fn.__name__, fn)
