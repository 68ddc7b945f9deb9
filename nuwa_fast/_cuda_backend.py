"""The `cuda` backend: Python wrappers over the csrc/ launchers of nuwa_fast._C.

The compiled module takes raw device pointers, element strides, sizes and a stream; these wrappers
check dtypes, devices and layouts, allocate the outputs and pass `tensor.data_ptr()` and
`torch.cuda.current_stream().cuda_stream`. Signatures and semantics are those of
`nuwa_fast.ops.reference`. No wrapper synchronises with the host, so every op can be captured in a
CUDA graph.

Importing this module raises ImportError when nuwa_fast._C is not built or there is no CUDA device;
the ops registry then leaves the backend out.
"""
from __future__ import annotations

import functools
import warnings

import torch

from nuwa_fast import _C  # ImportError when the csrc module is not built
from nuwa_fast import adc

if not torch.cuda.is_available():
    raise ImportError("the cuda backend needs a CUDA device")

_DTYPES = {torch.float32: _C.DTYPE_FLOAT32, torch.float16: _C.DTYPE_FLOAT16, torch.bfloat16: _C.DTYPE_BFLOAT16}
_PREFILL = {None: _C.PREFILL_AUTO, "auto": _C.PREFILL_AUTO, "simt": _C.PREFILL_SIMT, "wmma": _C.PREFILL_WMMA}
_SPLIT_REDUCE = {None: _C.SPLIT_REDUCE_AUTO, "auto": _C.SPLIT_REDUCE_AUTO, "kernel": _C.SPLIT_REDUCE_KERNEL,
                 "cluster": _C.SPLIT_REDUCE_CLUSTER}
_HEAD_DIMS = (32, 64, 128)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


MAX_SPLITS = 64


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _check_device(name: str, t: torch.Tensor, dev: torch.device) -> None:
    if t.device != dev:
        raise ValueError(f"{name} is on {t.device}, expected {dev}")


def _int32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 else t.to(torch.int32)


def _aligned16(t: torch.Tensor) -> bool:
    """16-byte vector loads of the head dim: pointer and every outer stride on 16 bytes."""
    es = t.element_size()
    return t.data_ptr() % 16 == 0 and all((s * es) % 16 == 0 for s in t.stride()[:-1])


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"nuwa_fast cuda patch_attention: {reason}", stacklevel=4)


def default_splits(B: int, H: int, C: int, P: int, device: torch.device) -> int:
    """Split the keys of a decode row (flash-decoding) when B*H blocks leave the SMs idle.

    Sized from the SM count: about 4 blocks of 128 threads per SM (B*H*S >= 4*SMs), at least 128 keys
    of the fullest possible row per split, at most MAX_SPLITS. Paper preset at batch 1 on 132 SMs:
    H = 20 -> 27 splits, capped at (25*256 + 256)/128 = 52 -> 540 blocks (8 splits, the most one
    cluster merge allows, gave 160). Up to 8 splits merge in a thread block cluster on sm_90+, more
    through the reduce kernel (one more launch).
    """
    bh = max(B * H, 1)
    index = device.index if device.index is not None else torch.cuda.current_device()
    target = 4 * _sm_count(index)
    if bh >= target:
        return 1
    return max(1, min(-(-target // bh), (C * P + P) // 128, MAX_SPLITS))


def _fallback_impl(reason: str):
    """Where a shape the CUDA kernels do not cover goes: the Triton kernel (any head dim, any strides)
    when that backend is loaded, else the torch reference. Warns once per reason."""
    from nuwa_fast import ops
    use = "triton" if "triton" in ops.available_backends() else "torch"
    _warn_fallback(f"{reason}; using the {use} backend")
    return ops.get("patch_attention", use)


def patch_attention(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel, null_k, null_v,
                    scale, num_splits=None, prefill_impl=None, split_reduce=None):
    """See nuwa_fast.ops.reference.patch_attention.

    num_splits   decode (M == 1) only: None = heuristic (default_splits), else forced (1 = no split)
    prefill_impl M > 1 only: None/"auto" (tensor cores for fp16/bf16), "simt", "wmma" (fp16/bf16)
    split_reduce how splits merge: None/"auto" (a thread block cluster through distributed shared
                 memory on sm_90+ when num_splits <= 8, else a reduce kernel), "kernel", "cluster"
                 ("cluster" raises where it cannot run)
    """
    B, H, M, D = q.shape
    N, Hk, P, Dk = k_cache.shape
    C = page_table.shape[1]
    dev = q.device
    if q.dtype not in _DTYPES:
        raise TypeError(f"q dtype {q.dtype} not supported (fp32, fp16, bf16)")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise TypeError(f"k/v cache dtypes {k_cache.dtype}/{v_cache.dtype} differ from q {q.dtype}")
    if (Hk, Dk) != (H, D) or tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k_cache.shape)}, v {tuple(v_cache.shape)} disagree")
    if tuple(page_table.shape) != (B, C) or tuple(own_page.shape) != (B,):
        raise ValueError(f"page_table {tuple(page_table.shape)} / own_page {tuple(own_page.shape)} for B={B}")
    if bias.dim() != 2 or bias.shape[1] != H or bias.shape[0] < C or not 0 <= own_rel < bias.shape[0]:
        raise ValueError(f"bias {tuple(bias.shape)} needs [R >= C={C}, H={H}] and 0 <= own_rel={own_rel} < R")
    if tuple(null_k.shape) != (H, D) or tuple(null_v.shape) != (H, D):
        raise ValueError(f"null_k/null_v must be [H={H}, D={D}]")
    if M > 0 and not (0 <= q_start and q_start + M - 1 <= P):
        raise ValueError(f"rows q_start={q_start} .. q_start+M-1={q_start + M - 1} must lie in 0..P={P}")
    if dev.type != "cuda":
        raise ValueError(f"the cuda backend needs CUDA tensors, got {dev}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("page_table", page_table),
                    ("own_page", own_page), ("bias", bias), ("null_k", null_k), ("null_v", null_v)):
        _check_device(name, t, dev)
    impl = _PREFILL[prefill_impl]
    reduce_mode = _SPLIT_REDUCE[split_reduce]
    if impl == _C.PREFILL_WMMA and q.dtype == torch.float32:
        raise ValueError("prefill_impl='wmma' needs fp16 or bf16")

    if q.stride(-1) != 1:
        q = q.contiguous()
    fallback = None
    if D not in _HEAD_DIMS:   # one lane group of D*sizeof(T)/16 lanes per key: a power of two <= 32
        fallback = f"head dim {D} not in {_HEAD_DIMS} (the kernels' 16-byte lane groups)"
    elif k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        fallback = "k/v cache head dim is not contiguous"
    elif not (_aligned16(q) and _aligned16(k_cache) and _aligned16(v_cache)):
        fallback = "k/v cache or q not 16-byte aligned"
    if fallback is not None:
        return _fallback_impl(fallback)(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel,
                                        null_k, null_v, scale)

    page_table = _int32(page_table)
    own_page = _int32(own_page)
    bias = bias if bias.dtype == torch.float32 else bias.float()
    null_fp32 = null_k.dtype == torch.float32 or null_k.dtype != null_v.dtype or null_k.dtype != q.dtype
    cast = torch.float32 if null_fp32 else q.dtype
    null_k = null_k.to(cast).contiguous()
    null_v = null_v.to(cast).contiguous()

    out = torch.empty((B, H, M, D), dtype=q.dtype, device=dev)
    S = 1
    if M == 1:
        S = default_splits(B, H, C, P, dev) if num_splits is None else int(num_splits)
        S = max(1, min(S, 65535))
    ws = torch.empty(B * H * S * (D + 2) if S > 1 else 0, dtype=torch.float32, device=dev)
    with torch.cuda.device(dev):
        _C.patch_attention(
            q.data_ptr(), q.stride(), k_cache.data_ptr(), k_cache.stride(), v_cache.data_ptr(), v_cache.stride(),
            page_table.data_ptr(), page_table.stride(), own_page.data_ptr(), own_page.stride(0),
            bias.data_ptr(), bias.stride(), null_k.data_ptr(), null_k.stride(), null_v.data_ptr(),
            null_v.stride(), null_fp32, out.data_ptr(), out.stride(), ws.data_ptr() if S > 1 else 0,
            B, H, M, D, P, C, int(q_start), int(own_rel), float(scale), _DTYPES[q.dtype], S, impl, reduce_mode,
            _stream(q))
    return out


def adc_gather(bias, page_table):
    """See nuwa_fast.ops.reference.adc_gather."""
    B, C = page_table.shape
    R, H = bias.shape
    if C > R:
        raise ValueError(f"page_table has C={C} slots but bias only R={R} rows")
    _check_device("page_table", page_table, bias.device)
    bias = bias if bias.dtype == torch.float32 else bias.float()
    page_table = _int32(page_table)
    out = torch.empty((B, H, C), dtype=torch.float32, device=bias.device)
    with torch.cuda.device(bias.device):
        _C.adc_gather(bias.data_ptr(), bias.stride(), page_table.data_ptr(), page_table.stride(), out.data_ptr(),
                      B, H, C, _stream(bias))
    return out


def _table(name: str, t: torch.Tensor, dev: torch.device) -> None:
    """Tables mutated in place must already be int32 on the device."""
    if t.dtype != torch.int32 or t.device != dev or t.dim() != 1 or t.stride(0) != 1:
        raise ValueError(f"{name} must be a contiguous 1-D int32 tensor on {dev}, got {t.dtype} "
                         f"{tuple(t.shape)} on {t.device}")


def ncp_select(page_index, cur, grid, extent, batch, out=None):
    """See nuwa_fast.ops.reference.ncp_select."""
    T, Hg, Wg = (int(x) for x in grid)
    et, eh, ew = (int(x) for x in extent)
    C = adc.num_offsets((et, eh, ew))
    dev = page_index.device
    _table("page_index", page_index, dev)
    _check_device("cur", cur, dev)
    cur = _int32(cur)
    if out is None:
        out = torch.empty((batch, C), dtype=torch.int32, device=dev)
    elif out.dtype != torch.int32 or tuple(out.shape) != (batch, C) or out.device != dev:
        raise ValueError(f"out must be int32 [{batch}, {C}] on {dev}")
    with torch.cuda.device(dev):
        _C.ncp_select(page_index.data_ptr(), page_index.numel(), cur.data_ptr(), out.data_ptr(), out.stride(),
                      T, Hg, Wg, et, eh, ew, int(batch), _stream(page_index))
    return out


def _free_list_tables(page_index, free_stack, free_top):
    """Check the page index and the free list (int32, one device); returns that device."""
    dev = page_index.device
    for name, t in (("page_index", page_index), ("free_stack", free_stack), ("free_top", free_top)):
        _table(name, t, dev)
    return dev


def ncp_add(page_index, free_stack, free_top, cur):
    """See nuwa_fast.ops.reference.ncp_add."""
    dev = _free_list_tables(page_index, free_stack, free_top)
    _check_device("cur", cur, dev)
    cur = _int32(cur)
    page = torch.empty(1, dtype=torch.int32, device=dev)
    with torch.cuda.device(dev):
        _C.ncp_add(page_index.data_ptr(), free_stack.data_ptr(), free_top.data_ptr(), cur.data_ptr(),
                   page.data_ptr(), _stream(page_index))
    return page


def ncp_remove(page_index, free_stack, free_top, patches):
    """See nuwa_fast.ops.reference.ncp_remove."""
    dev = _free_list_tables(page_index, free_stack, free_top)
    _check_device("patches", patches, dev)
    patches = _int32(patches).reshape(-1)
    with torch.cuda.device(dev):
        _C.ncp_remove(page_index.data_ptr(), page_index.numel(), free_stack.data_ptr(), free_stack.numel(),
                      free_top.data_ptr(), patches.data_ptr(), patches.stride(0), patches.numel(),
                      _stream(page_index))


def register_cuda_backend(register) -> None:
    """Register the five cuda ops with `register(backend, op, fn)`."""
    for fn in (patch_attention, adc_gather, ncp_select, ncp_add, ncp_remove):
        register("cuda", fn.__name__, fn)
