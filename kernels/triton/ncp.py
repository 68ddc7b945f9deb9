"""Triton NCP table ops: select / add / remove on the device tables, no host synchronisation.

Same signatures and semantics as `nuwa_fast.ops.reference.ncp_select/ncp_add/ncp_remove` (see their
docstrings for the table layouts). `cur` and `free_top` are device tensors read inside the kernels,
so the patch loop never waits for the host. All three are tiny (a few hundred integers): launch cost
is what matters, so each op is a single kernel with at most cdiv(B, BLOCK_B) programs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from nuwa_fast import adc


@triton.jit
def _select_kernel(PI, CUR, OUT, T, Hg, Wg, et, eh, ew, batch, C, stride_ob, stride_oc,
                   BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    # program = BLOCK_B samples x all C slots; slot c = rel_index(dt, dy, dx)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)            # [BLOCK_B]
    offs_c = tl.arange(0, BLOCK_C)                                         # [BLOCK_C]
    wh = 2 * eh + 1
    ww = 2 * ew + 1
    dt = offs_c // (wh * ww) - et
    dy = (offs_c // ww) % wh - eh
    dx = offs_c % ww - ew
    cur = tl.load(CUR).to(tl.int64)
    t = cur // (Hg * Wg) + dt
    y = (cur // Wg) % Hg + dy
    x = cur % Wg + dx
    inside = (t >= 0) & (t < T) & (y >= 0) & (y < Hg) & (x >= 0) & (x < Wg) & (offs_c < C)
    lin = (t * Hg + y) * Wg + x
    logical = tl.load(PI + lin, mask=inside, other=-1).to(tl.int64)        # [BLOCK_C]
    phys = tl.where(logical[None, :] >= 0, logical[None, :] * batch + offs_b[:, None], -1)
    mask = (offs_b < batch)[:, None] & (offs_c < C)[None, :]
    tl.store(OUT + offs_b[:, None] * stride_ob + offs_c[None, :] * stride_oc,
             phys.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _add_kernel(PI, FREE_STACK, FREE_TOP, CUR, OUT):
    # one program: pop the free stack, map the current patch to the popped logical page
    top = tl.load(FREE_TOP) - 1
    page = tl.load(FREE_STACK + tl.maximum(top, 0))
    cur = tl.load(CUR)
    tl.store(PI + cur, page)
    tl.store(FREE_TOP, top)
    tl.store(OUT, page)


@triton.jit
def _remove_kernel(PI, FREE_STACK, FREE_TOP, PATCHES, K, n_scratch, g_scratch, BLOCK_K: tl.constexpr):
    # one program, chunks of BLOCK_K patches in order: push their pages, unmap the patches.
    # Within a chunk all pages are read before any write (as the reference's gather-then-scatter).
    top = tl.load(FREE_TOP)
    any_pad = 0
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        in_rng = offs < K
        p = tl.load(PATCHES + offs, mask=in_rng, other=-1)
        valid = p >= 0
        pages = tl.load(PI + p, mask=valid, other=-1)
        pos = top + tl.cumsum(valid.to(tl.int32), axis=0) - 1
        tl.store(FREE_STACK + pos, pages, mask=valid)
        tl.store(PI + p, tl.full([BLOCK_K], -1, PI.dtype.element_ty), mask=valid)
        top += tl.sum(valid.to(tl.int32), axis=0)
        any_pad = tl.maximum(any_pad, tl.max((in_rng & ~valid).to(tl.int32), axis=0))
    # the reference scatters padding entries to the scratch slots: free_stack[-1] = page_index[-1]
    scratch_page = tl.load(PI + n_scratch)
    tl.store(FREE_STACK + g_scratch, scratch_page, mask=any_pad > 0)
    tl.store(FREE_TOP, top)
    tl.store(PI + n_scratch, -1)


def ncp_select(page_index, cur, grid, extent, batch, out=None):
    """Triton backend of `nuwa_fast.ops.reference.ncp_select`: returns [batch, C] int32."""
    T, Hg, Wg = (int(g) for g in grid)
    et, eh, ew = (int(e) for e in extent)
    C = adc.num_offsets((et, eh, ew))
    if out is None:
        out = torch.empty((batch, C), device=page_index.device, dtype=torch.int32)
    assert tuple(out.shape) == (batch, C), f"out {tuple(out.shape)} != (batch={batch}, C={C})"
    block_b = min(triton.next_power_of_2(batch), max(1, 4096 // triton.next_power_of_2(C)))
    _select_kernel[(triton.cdiv(batch, block_b),)](
        page_index, cur, out, T, Hg, Wg, et, eh, ew, batch, C, *out.stride(),
        BLOCK_B=block_b, BLOCK_C=triton.next_power_of_2(C))
    return out


def ncp_add(page_index, free_stack, free_top, cur):
    """Triton backend of `nuwa_fast.ops.reference.ncp_add`: returns the popped logical page, [1] int32."""
    page = torch.empty(1, device=page_index.device, dtype=free_stack.dtype)
    _add_kernel[(1,)](page_index, free_stack, free_top, cur, page)
    return page


def ncp_remove(page_index, free_stack, free_top, patches):
    """Triton backend of `nuwa_fast.ops.reference.ncp_remove` (in place, -1 entries are padding)."""
    K = patches.shape[0]
    block_k = min(1024, max(16, triton.next_power_of_2(max(K, 1))))
    _remove_kernel[(1,)](page_index, free_stack, free_top, patches, K, page_index.shape[0] - 1,
                         free_stack.shape[0] - 1, BLOCK_K=block_k)
