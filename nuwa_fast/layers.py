"""NCPAttention: the self-attention of the model's decoder layers, and a drop-in module for others.

The module owns the projections and the learned null key/value; *where its keys and values come
from* is the `kv` argument of every call, a callable

    kv(attn, q, k, v, q_start) -> o          q [B, H, M, D] rows q_start .. q_start+M-1 of the patch,
                                             k/v [B, H, M, D] the keys/values of those rows (row r >= 1
                                             holds token r-1; row 0, the start row, has no key)

that stores the new keys wherever it keeps them and returns the attention output o [B, H, M, D].
Training, the oracle and the engine run the same module with different sources:

  DenseKV   dense attention from the definition over null + given context + own rows (causal);
            with no context it is causal self-attention with a null key (a foreign decoder's block).
  PagedKV   the NCP page pool: the keys go into the own page in place, then one fused
            ops.patch_attention (torch / triton / cuda) reads null + context pages + own page.
  engine    the gathered static buffers of nuwa_fast.gathered (modes "gathered", "sdpa", "flex").

Drop-in use in another decoder (paged, one layer):

    from nuwa_fast import NCPAttention, PagedKV, adc, ncp
    attn = NCPAttention(width=512, heads=8)
    bias = torch.zeros(1, adc.num_offsets(extent), 8)                         # [layers, R, H] ADC table
    pool = ncp.PagePool(n_pages, batch, 1, 8, P, 64, n_patches, dtype, device)
    table = pool.select(cur, grid, extent); own = pool.add(cur)             # once per patch
    y = attn(norm(x), PagedKV(pool, table, own, bias, adc.rel_index((0, 0, 0), extent)), q_start=s)
    pool.remove(freed)                                                      # after the patch
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from . import nvtx, ops


def apply_rope(t, cos, sin):
    """Rotate consecutive pairs of t [B, H, M, D] by the angles of cos/sin [B or 1, 1, M, D/2]."""
    tp = t.float().unflatten(-1, (-1, 2))                                                  # [B, H, M, D/2, 2]
    a, b = tp[..., 0], tp[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2).to(t.dtype)


def op_range(name: str):
    """Per-op profiler range, only in eager code (not while torch.compile traces)."""
    if nvtx.enabled() and not torch.compiler.is_compiling():
        return nvtx.range(name)
    return contextlib.nullcontext()


class NCPAttention(nn.Module):
    """Self-attention of one decoder layer. `layer` indexes the per-layer state of a source (the pool's
    layer, the ADC table's row block, the text memory)."""

    def __init__(self, width: int, heads: int, layer: int = 0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.layer = heads, width // heads, layer
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.null_k = nn.Parameter(torch.randn(heads, self.head_dim) * 0.02)        # [H, D]
        self.null_v = nn.Parameter(torch.zeros(heads, self.head_dim))               # [H, D]
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def forward(self, x, kv, q_start=0, rope=None):
        """x [B, M, width] (normalised) rows q_start .. q_start+M-1 -> [B, M, width].
        q_start: int, or a device scalar where the source takes one (the engine's static row step).
        rope: (cos_q, sin_q, cos_k, sin_k) of these rows, [B or 1, 1, M, D/2] each, or None."""
        B, M, W = x.shape
        qkv = self.qkv(x).view(B, M, 3, self.heads, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))                 # 3 x [B, H, M, D]
        if rope is not None:
            q, k = apply_rope(q, rope[0], rope[1]), apply_rope(k, rope[2], rope[3])
        o = kv(self, q, k, v, q_start)                                              # [B, H, M, D]
        return self.proj(o.transpose(1, 2).reshape(B, M, W))


def dense_attention(q, k_own, v_own, q_start, ctx_k, ctx_v, ctx_bias, own_bias, null_k, null_v, scale):
    """Patch attention written from the definition with dense tensors (oracle and training path).

    q      [B, H, M, D]   rows q_start .. q_start+M-1
    k_own  [B, H, n, D]   own keys of tokens 0..n-1 (row s sees tokens 0..s-1)
    ctx_k  [B, H, Nc, D]  keys of all selected context pages, concatenated (Nc may be 0)
    ctx_bias [Nc, H] or [B, H, Nc]  ADC bias of each context key; own_bias [H]; null gets 0
    """
    B, H, M, D = q.shape
    n = k_own.shape[2]
    rows = torch.arange(M, device=q.device) + q_start
    vis = torch.arange(n, device=q.device)[None, :] < rows[:, None]         # [M, n]
    s_null = torch.einsum("bhmd,hd->bhm", q, null_k)[..., None]             # [B, H, M, 1]
    s_ctx = torch.einsum("bhmd,bhnd->bhmn", q, ctx_k)                       # [B, H, M, Nc]
    s_own = torch.einsum("bhmd,bhnd->bhmn", q, k_own)                       # [B, H, M, n]
    if ctx_bias.dim() == 2:
        ctx_bias = ctx_bias.t()[None]                                        # [1, H, Nc]
    s_ctx = s_ctx * scale + ctx_bias[:, :, None, :]
    s_own = (s_own * scale + own_bias[None, :, None, None]).masked_fill(~vis, float("-inf"))
    s = torch.cat([s_null * scale, s_ctx, s_own], dim=-1)
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    v_all = torch.cat([null_v[None, :, None, :].expand(B, H, 1, D), ctx_v, v_own], dim=2)
    return torch.einsum("bhmn,bhnd->bhmd", p, v_all)


class DenseKV:
    """Whole patches from row 0, dense: null + context (the same for every layer here; the oracle and
    training pass their own per-layer closures) + own rows, causal. No context and zero bias is
    causal self-attention with a learned null key, usable in any decoder block."""

    def __init__(self, ctx_k=None, ctx_v=None, ctx_bias=None, own_bias=None):
        self.ctx_k, self.ctx_v, self.ctx_bias, self.own_bias = ctx_k, ctx_v, ctx_bias, own_bias

    def __call__(self, attn, q, k, v, q_start):
        if not isinstance(q_start, int) or q_start != 0:
            raise ValueError("DenseKV runs whole patches from row 0 (q_start=0)")
        B, H, M, D = q.shape
        ck = self.ctx_k if self.ctx_k is not None else q.new_zeros(B, H, 0, D)      # [B, H, Nc, D]
        cv = self.ctx_v if self.ctx_v is not None else q.new_zeros(B, H, 0, D)
        cb = self.ctx_bias if self.ctx_bias is not None else q.new_zeros(ck.shape[2], H)
        ob = self.own_bias if self.own_bias is not None else q.new_zeros(H)
        return dense_attention(q, k[:, :, 1:], v[:, :, 1:], 0, ck, cv, cb, ob, attn.null_k.to(q.dtype),
                               attn.null_v.to(q.dtype), attn.scale)


class PagedKV:
    """The NCP page pool: pool (ncp.PagePool), page_table [B, C] int32 (PagePool.select), own_page [B]
    int32 (PagePool.add), bias [layers, C, H] ADC bias per slot, own_rel the own patch's slot."""

    def __init__(self, pool, page_table, own_page, bias, own_rel: int, backend: str | None = None):
        self.pool, self.page_table, self.own_page = pool, page_table, own_page      # read at every call
        self.bias, self.own_rel, self.backend = bias, own_rel, backend

    def __call__(self, attn, q, k, v, q_start: int):
        l = attn.layer
        k_cache, v_cache = self.pool.layer_kv(l)                                    # [pages, H, P, D] views
        M = k.shape[2]
        m0 = 1 if q_start == 0 else 0                                               # row 0 has no key
        if M > m0:
            s0, own = q_start + m0 - 1, self.own_page.long()
            k_cache[own, :, s0:s0 + M - m0] = k[:, :, m0:].to(k_cache.dtype)
            v_cache[own, :, s0:s0 + M - m0] = v[:, :, m0:].to(v_cache.dtype)
        with op_range(f"patch_attention L{l}"):
            o = ops.patch_attention(q.to(k_cache.dtype), k_cache, v_cache, self.page_table, self.own_page,
                                    q_start, self.bias[l], self.own_rel, attn.null_k.to(k_cache.dtype),
                                    attn.null_v.to(k_cache.dtype), attn.scale, backend=self.backend)
        return o.to(q.dtype)
