"""The `torch` backend: plain PyTorch references of the three ops, fp32 accumulation.

These are the CPU path, the test oracle for the Triton and CUDA backends, and the baseline a kernel
must beat. Every backend implements exactly these signatures (see the docstrings: shapes, dtypes,
layouts). All ops are free of host synchronisation (no .item(), no boolean indexing), so they can be
captured in a CUDA graph.

Layouts shared by all backends
------------------------------
pool       [pages, layers, 2, heads, P, head_dim]  one physical page = one patch of one sample, all layers
k_cache    [pages, heads, P, head_dim]             pool[:, layer, 0]: a strided view, any strides
v_cache    [pages, heads, P, head_dim]             pool[:, layer, 1]
page_table [B, C] int32   physical page of each NCP slot, -1 = empty; slot c uses ADC bias row c
own_page   [B] int32      physical page of the current patch (written in place while decoding)
bias       [R, heads] fp32, R >= C   one layer's ADC table B[layer]
page_index [N + 1] int32  logical page of each patch of the grid, -1 = none; entry N is scratch
free_stack [pages_logical + 1] int32, free_top [1] int32   the free list (a stack); last entry scratch
With B lockstep samples, logical page g of sample b is physical page g * B + b.
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")

# The engine's default with this backend: patch_attention here is a reference (fp32 gathers of every
# slot's page per call), while "gathered" copies the context once per patch and runs dense matmuls.
ATTENTION = "gathered"


def patch_attention(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel, null_k, null_v,
                    scale):
    """NCP patch attention: one softmax over null + context pages (full) + own page (causal).

    q          [B, H, M, D]  fp32/fp16/bf16; row m is patch row q_start + m
    k_cache    [N, H, P, D]  same dtype as q (strided view of the pool at one layer)
    v_cache    [N, H, P, D]
    page_table [B, C] int32  -1 = empty slot: skipped (its page is never read, it may hold NaN)
    own_page   [B] int32     keys 0 .. q_start+m-1 of this page are visible to row m
    q_start    int           0 <= q_start, q_start + M - 1 <= P
    bias       [R, H] fp32   score += bias[c, h] for every key of slot c, bias[own_rel, h] for own keys
    own_rel    int           ADC row of the offset (0, 0, 0)
    null_k/v   [H, D]        learned null key/value (bias 0): a row never has an empty softmax
    scale      float
    returns    [B, H, M, D]  dtype of q
    """
    B, H, M, D = q.shape
    P = k_cache.shape[2]
    C = page_table.shape[1]
    qf = q.float()
    pt = page_table.long()                                                  # [B, C]
    valid = pt >= 0                                                         # [B, C]
    safe = pt.clamp(min=0)
    kc = k_cache[safe].float()                                              # [B, C, H, P, D]
    vc = v_cache[safe].float()                                              # [B, C, H, P, D]
    # NaN in unused pages must not leak: zero them before the product, mask the scores after.
    kc = torch.where(valid[:, :, None, None, None], kc, 0.0)
    vc = torch.where(valid[:, :, None, None, None], vc, 0.0)
    kc = kc.permute(0, 2, 1, 3, 4).reshape(B, H, C * P, D)                  # [B, H, C*P, D]
    vc = vc.permute(0, 2, 1, 3, 4).reshape(B, H, C * P, D)
    ko = k_cache[own_page.long()].float()                                   # [B, H, P, D]
    vo = v_cache[own_page.long()].float()
    rows = torch.arange(M, device=q.device) + q_start                       # [M]
    own_vis = torch.arange(P, device=q.device)[None, :] < rows[:, None]     # [M, P]
    ko = torch.where(own_vis.any(0)[None, None, :, None], ko, 0.0)          # unwritten slots may hold NaN
    vo = torch.where(own_vis.any(0)[None, None, :, None], vo, 0.0)

    s_null = torch.einsum("bhmd,hd->bhm", qf, null_k.float())[..., None]   # [B, H, M, 1]
    s_ctx = torch.einsum("bhmd,bhnd->bhmn", qf, kc) * scale                 # [B, H, M, C*P]
    s_own = torch.einsum("bhmd,bhnd->bhmn", qf, ko) * scale                 # [B, H, M, P]
    s_null = s_null * scale
    b_ctx = bias.float()[:C].t()                                            # [H, C]
    b_ctx = b_ctx[None, :, :].expand(B, H, C)
    b_ctx = torch.where(valid[:, None, :], b_ctx, NEG_INF)                  # [B, H, C]
    s_ctx = s_ctx + b_ctx.repeat_interleave(P, dim=2)[:, :, None, :]
    s_own = s_own + bias.float()[own_rel][None, :, None, None]
    s_own = s_own.masked_fill(~own_vis[None, None], NEG_INF)
    s = torch.cat([s_null, s_ctx, s_own], dim=-1)                           # [B, H, M, 1+C*P+P]
    p = torch.softmax(s, dim=-1)
    v_all = torch.cat([null_v.float()[None, :, None, :].expand(B, H, 1, D), vc, vo], dim=2)
    out = torch.einsum("bhmn,bhnd->bhmd", p, v_all)
    return out.to(q.dtype)


def adc_gather(bias, page_table):
    """ADC dynamic positional bias of every slot: the dense form of what patch_attention fuses.

    bias       [R, H] fp32
    page_table [B, C] int32, C <= R
    returns    [B, H, C] fp32: bias[c, h] where page_table[b, c] >= 0, else -inf
    """
    C = page_table.shape[1]
    b = bias.float()[:C].t()[None]                                          # [1, H, C]
    return torch.where((page_table >= 0)[:, None, :], b, NEG_INF)


def ncp_select(page_index, cur, grid, extent, batch, out=None):
    """Context page table of the current patch: one slot per offset d, slot = rel_index(d).

    page_index [N + 1] int32  logical page per patch (t, y, x) -> (t*Hg + y)*Wg + x, -1 = none
    cur        [1] int32      linear id of the current patch (a device tensor: no host sync)
    grid       (T, Hg, Wg)    patch grid
    extent     (e_t, e_h, e_w)
    batch      int            B: physical page = logical * B + b
    returns    [B, C] int32   C = (e_t+1)(2e_h+1)(2e_w+1)
    The current patch's own slot (offset 0) is empty as long as select runs before add.
    """
    T, Hg, Wg = grid
    et, eh, ew = extent
    dev = page_index.device
    dt = torch.arange(-et, 1, device=dev)
    dy = torch.arange(-eh, eh + 1, device=dev)
    dx = torch.arange(-ew, ew + 1, device=dev)
    DT, DY, DX = torch.meshgrid(dt, dy, dx, indexing="ij")                  # slot order = rel_index order
    c = cur.long()
    t0, y0, x0 = c // (Hg * Wg), (c // Wg) % Hg, c % Wg
    t, y, x = t0 + DT.reshape(-1), y0 + DY.reshape(-1), x0 + DX.reshape(-1)  # [C]
    inside = (t >= 0) & (t < T) & (y >= 0) & (y < Hg) & (x >= 0) & (x < Wg)
    lin = torch.where(inside, (t * Hg + y) * Wg + x, page_index.shape[0] - 1)
    logical = torch.where(inside, page_index[lin].long(), -1)               # [C]
    b = torch.arange(batch, device=dev)[:, None]
    phys = torch.where(logical[None] >= 0, logical[None] * batch + b, -1).to(torch.int32)
    if out is not None:
        out.copy_(phys)
        return out
    return phys


def ncp_add(page_index, free_stack, free_top, cur):
    """Pop a free logical page and map the current patch to it (it becomes the own page).

    page_index [N + 1] int32, free_stack [G + 1] int32, free_top [1] int32, cur [1] int32
    returns    [1] int32 the logical page. Mutates the tables in place.
    The caller guarantees a free page (the engine sizes the pool from ncp.plan's peak_pages).
    """
    top = free_top.long() - 1                                               # [1]
    page = free_stack[top.clamp(min=0)]                                     # [1]
    page_index.index_copy_(0, cur.long(), page)
    free_top.sub_(1)
    return page


def ncp_remove(page_index, free_stack, free_top, patches):
    """Free the pages of `patches` (push them on the free list) and unmap those patches.

    patches [K] int32, -1 = padding (ignored). Mutates the tables in place; no host sync.
    """
    n_scratch = page_index.shape[0] - 1
    g_scratch = free_stack.shape[0] - 1
    valid = patches >= 0                                                    # [K]
    pidx = torch.where(valid, patches.long(), n_scratch)
    pages = page_index[pidx]                                                # [K]
    pos = free_top.long() + torch.cumsum(valid.long(), 0) - 1               # [K]
    pos = torch.where(valid, pos, g_scratch)
    free_stack.index_put_((pos,), pages)
    page_index.index_put_((pidx,), torch.full_like(pages, -1))
    free_top.add_(valid.sum().to(free_top.dtype))
    page_index[n_scratch] = -1
