"""The NUWA-Infinity vision decoder (the reference semantics of DESIGN.md) and the full model.

A patch is P+1 rows: row 0 is a learned start embedding, row s >= 1 embeds token s-1 plus an axial
within-patch position. Row s predicts token s. Each layer: self-attention over null + context pages
+ own page (causal) with the ADC bias, cross-attention to the text, MLP (all pre-norm).

The self-attention is pluggable (`attend(layer, q, k, v, q_start) -> out`): the engine writes k/v
into the paged pool and calls ops.patch_attention; the oracle and training use dense attention.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NuwaConfig


class CrossAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def text_kv(self, mem):                                             # mem [B, Lt, width]
        B, Lt, W = mem.shape
        kv = self.kv(mem).view(B, Lt, 2, self.heads, W // self.heads)
        return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # 2 x [B, H, Lt, D]

    def forward(self, x, k, v, mask):                                   # x [B, M, width], mask [B, Lt]
        B, M, W = x.shape
        q = self.q(x).view(B, M, self.heads, W // self.heads).transpose(1, 2)   # [B, H, M, D]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(o.transpose(1, 2).reshape(B, M, W))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: NuwaConfig):
        super().__init__()
        W, H, D = cfg.width, cfg.heads, cfg.head_dim
        self.heads = H
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(W), nn.LayerNorm(W), nn.LayerNorm(W)
        self.qkv = nn.Linear(W, 3 * W, bias=False)
        self.proj = nn.Linear(W, W, bias=False)
        self.null_k = nn.Parameter(torch.randn(H, D) * 0.02)              # [H, D]
        self.null_v = nn.Parameter(torch.zeros(H, D))                     # [H, D]
        self.cross = CrossAttention(W, H)
        self.mlp = nn.Sequential(nn.Linear(W, cfg.mlp_ratio * W), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * W, W))

    def forward(self, x, layer, q_start, attend, text):
        B, M, W = x.shape
        qkv = self.qkv(self.ln1(x)).view(B, M, 3, self.heads, W // self.heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))      # 3 x [B, H, M, D]
        a = attend(layer, q, k, v, q_start)                              # [B, H, M, D]
        x = x + self.proj(a.transpose(1, 2).reshape(B, M, W))
        tk, tv, tmask = text[layer]
        x = x + self.cross(self.ln2(x), tk, tv, tmask)
        return x + self.mlp(self.ln3(x))


class VisionDecoder(nn.Module):
    def __init__(self, cfg: NuwaConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.tok = nn.Embedding(cfg.vq.codebook_size, W)
        self.start = nn.Parameter(torch.randn(W) * 0.02)
        self.pos_y = nn.Parameter(torch.randn(cfg.patch, W) * 0.02)      # axial within-patch position
        self.pos_x = nn.Parameter(torch.randn(cfg.patch, W) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.adc_bias = nn.Parameter(torch.zeros(cfg.layers, cfg.R, cfg.heads))   # B[l][R, heads]
        self.ln_f = nn.LayerNorm(W)
        self.head = nn.Linear(W, cfg.vq.codebook_size, bias=False)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.apply(_init)

    def text_memory(self, mem, mask):
        """Per-layer cross-attention keys/values of the text, computed once per generation."""
        return [(*layer.cross.text_kv(mem), mask) for layer in self.layers]

    def embed(self, tokens, q_start: int, M: int):
        """Rows q_start .. q_start+M-1 of a patch. tokens [B, >= q_start+M-1] (token s-1 feeds row s)."""
        p = self.cfg.patch
        pos = (self.pos_y[:, None, :] + self.pos_x[None, :, :]).reshape(p * p, -1)   # [P, W]
        rows = []
        if q_start == 0:
            rows.append(self.start.expand(tokens.shape[0], 1, -1))
        lo = max(q_start, 1)
        hi = q_start + M
        if hi > lo:
            rows.append(self.tok(tokens[:, lo - 1:hi - 1]) + pos[lo - 1:hi - 1])       # [B, hi-lo, W]
        return torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]

    def forward(self, tokens, q_start: int, M: int, attend, text, logits: bool = True):
        """Run rows q_start..q_start+M-1; returns logits [B, M, V] (or the final hidden states)."""
        x = self.embed(tokens, q_start, M)
        for l, layer in enumerate(self.layers):
            x = layer(x, l, q_start, attend, text)
        x = self.ln_f(x)
        return self.head(x) if logits else x


def _init(m):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


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


class NuwaModel(nn.Module):
    """VQ tokenizer + text encoder + vision decoder. Use nuwa_fast.load() to build one."""

    def __init__(self, cfg: NuwaConfig):
        super().__init__()
        from .text import TextEncoder
        from .vq import VQModel
        self.cfg = cfg
        self.vq = VQModel(cfg.vq)
        self.text = TextEncoder(cfg.text, cfg.width)
        self.decoder = VisionDecoder(cfg)

    @property
    def device(self):
        return self.decoder.start.device

    @torch.no_grad()
    def encode_text(self, prompts):
        """prompts: list of str (None or "" = unconditional) -> per-layer text keys/values."""
        prompts = ["" if p is None else p for p in prompts]
        mem, mask = self.text.encode_prompts(prompts, self.device)
        return self.decoder.text_memory(mem, mask)

    # the task API lives in nuwa_fast.api (bound onto this class there)
