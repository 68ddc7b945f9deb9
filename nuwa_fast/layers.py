"""Drop-in module: NCP patch attention for other PyTorch decoders.

    from nuwa_fast import NCPAttention, ncp
    attn = NCPAttention(width=512, heads=8, extent=(0, 2, 2))
    pool = ncp.PagePool(n_pages, batch, layers=1, heads=8, P=64, head_dim=64, n_patches=N, dtype, device)
    ...
    table = pool.select(cur, grid, attn.extent); own = pool.add(cur)          # once per patch
    y = attn(x, pool.layer_kv(0), table, own, q_start=s)                       # rows s .. s+M-1
    ...
    pool.remove(freed)                                                         # after the patch

The module owns its projections, the null key/value and the ADC bias table; the keys/values of the
rows it sees are written into the own page, then one fused attention reads null + context pages +
own page (causal). The kernel is chosen by the ops registry (torch, triton, cuda).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import adc, ops


class NCPAttention(nn.Module):
    def __init__(self, width: int, heads: int, extent=(0, 2, 2), backend: str | None = None):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.extent, self.backend = heads, width // heads, tuple(extent), backend
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.null_k = nn.Parameter(torch.randn(heads, self.head_dim) * 0.02)        # [H, D]
        self.null_v = nn.Parameter(torch.zeros(heads, self.head_dim))               # [H, D]
        self.adc_bias = nn.Parameter(torch.zeros(adc.num_offsets(extent), heads))   # [R, H]
        self.own_rel = adc.rel_index((0, 0, 0), extent)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def forward(self, x, layer_kv, page_table, own_page, q_start: int):
        """x [B, M, width] rows q_start..q_start+M-1 of the current patch (row r >= 1 = token r-1).

        layer_kv: (k_cache, v_cache) [pages, H, P, D] views of the pool for this layer;
        page_table [B, C] int32 from PagePool.select; own_page [B] int32 from PagePool.add.
        """
        B, M, W = x.shape
        k_cache, v_cache = layer_kv
        qkv = self.qkv(x).view(B, M, 3, self.heads, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))                 # 3 x [B, H, M, D]
        m0 = 1 if q_start == 0 else 0                                               # row 0 has no key
        if M > m0:
            s0 = q_start + m0 - 1
            k_cache[own_page.long(), :, s0:s0 + M - m0] = k[:, :, m0:].to(k_cache.dtype)
            v_cache[own_page.long(), :, s0:s0 + M - m0] = v[:, :, m0:].to(v_cache.dtype)
        o = ops.patch_attention(q.to(k_cache.dtype), k_cache, v_cache, page_table, own_page, q_start,
                                self.adc_bias.float(), self.own_rel, self.null_k.to(k_cache.dtype),
                                self.null_v.to(k_cache.dtype), self.scale, backend=self.backend)
        return self.proj(o.to(x.dtype).transpose(1, 2).reshape(B, M, W))
