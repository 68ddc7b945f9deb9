"""Patch chains and the two training forwards of the vision decoder.

A chain is an image of Hc x Wc patches tokenised by the VQ, laid out in one of the four basic orders:
tokens [B, N, P] with patch n the n-th of the order. `context(order, extent, trained_extent)` gives,
for every pair of steps (i, j), the trained ADC bias row of j in i's NCP selection (-1: not
selected), from ncp.plan. Then:

  parallel_logits     one pass over all N*(P+1) rows with a block mask: row (i, s) sees null, every
                      token of each selected patch j (+ B[rel[i, j]]) and tokens 0..s-1 of its own
                      patch (+ B[own]). Forward semantics identical to inference: a patch's keys
                      and values are computed under its own context, exactly as when it was decoded.
  patch_forward       one patch with dense attention against detached (or live) context pages: the
                      oracle's computation, the step of render-and-optimize training and the
                      reference that parallel_logits is tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import adc, ncp
from ..layers import dense_attention
from ..model import Where


def to_chain(tokens, order, p: int):
    """tokens [B, Hc*p, Wc*p] (or clips [B, T, Hc*p, Wc*p]) -> [B, N, P] in `order` ((t, y, x) list)."""
    B = tokens.shape[0]
    if tokens.dim() == 3:
        tokens = tokens[:, None]
    out = [tokens[:, t, y * p:(y + 1) * p, x * p:(x + 1) * p].reshape(B, p * p) for t, y, x in order]
    return torch.stack(out, 1)                                                 # [B, N, P]


def edge_weights(order, p: int, weight: float, device=None) -> torch.Tensor:
    """[N, P] loss weights of a chain in `order`: `weight` on the tokens of a patch edge whose neighbour
    across that edge (same frame) comes earlier in the order, 1 elsewhere. Those are the tokens a seam
    runs along: the model must continue a neighbour it sees only through the context pages."""
    step_of = {tuple(o): i for i, o in enumerate(order)}
    w = torch.ones(len(order), p, p)
    for i, (t, y, x) in enumerate(order):
        for dy, dx, edge in ((-1, 0, (0, slice(None))), (1, 0, (p - 1, slice(None))),
                             (0, -1, (slice(None), 0)), (0, 1, (slice(None), p - 1))):
            if step_of.get((t, y + dy, x + dx), i) < i:
                w[i][edge] = weight
    return w.reshape(len(order), p * p).to(device)


def chain_where(order, y_offset, height, direction: int, device=None) -> Where:
    """Placement of every patch of B chains, sample-major (row b*N + n): patch n of `order` in a crop
    whose top lies y_offset[b] patches below the top of an image height[b] patches high."""
    yx = torch.tensor([[y, x] for _, y, x in order], dtype=torch.long)        # [N, 2]
    yo = torch.as_tensor(y_offset, dtype=torch.float32)[:, None]               # [B, 1]
    h = torch.as_tensor(height, dtype=torch.float32)[:, None]
    B, N = yo.shape[0], yx.shape[0]
    vfrac = (yo + yx[None, :, 0].float() + 0.5) / h                            # [B, N]
    return Where(yx.repeat(B, 1).to(device), vfrac.reshape(-1).to(device),
                 torch.full((B * N,), int(direction), dtype=torch.long, device=device))


def where_step(where: Where | None, B: int, N: int, i: int) -> Where | None:
    """The B rows of step i of a sample-major chain placement."""
    if where is None:
        return None
    idx = torch.arange(B, device=where.yx.device) * N + i
    return Where(where.yx[idx], where.vfrac[idx], where.direction[idx])


def context(order, extent, trained_extent) -> torch.Tensor:
    """rel [N, N] long: rel[i, j] = trained bias row of step j in step i's selection, -1 if none;
    rel[i, i] = the own-patch row (offset (0, 0, 0))."""
    order = [tuple(o) for o in order]
    grid = tuple(max(o[k] for o in order) + 1 for k in range(3))
    plan = ncp.plan(order, extent, grid)
    rows = adc.bias_rows(extent, trained_extent)                               # inference slot -> trained row
    step_of = {ncp.linear(o, grid): i for i, o in enumerate(order)}
    N = len(order)
    rel = torch.full((N, N), -1, dtype=torch.long)
    for i, slots in enumerate(plan.slots):
        for c, lin in enumerate(slots):
            if lin >= 0:
                rel[i, step_of[lin]] = rows[c]
        rel[i, i] = adc.rel_index((0, 0, 0), trained_extent)
    return rel


def block_mask(table, rel, P: int) -> torch.Tensor:
    """Additive mask [H, N*(P+1), 1 + N*(P+1)] of the chain: column 0 is the null key.

    table [R, H] ADC bias of one layer; rel [N, N] from context(). Row (i, s) sees key (j, c)
    (c = 1..P: token c-1) when rel[i, j] >= 0 and (j != i or c <= s). Column (j, 0), the start row,
    has no key and is never seen.
    """
    N = rel.shape[0]
    R, H = table.shape
    dev = table.device
    sel = rel >= 0                                                              # [N, N]
    bias = table[rel.clamp_min(0)].permute(2, 0, 1)                             # [H, N, N]
    s = torch.arange(P + 1, device=dev)
    own_ok = (s[None, :] >= 1) & (s[None, :] <= s[:, None])                     # [P+1 rows, P+1 cols]
    ctx_ok = (s >= 1)[None, :].expand(P + 1, P + 1)
    eye = torch.eye(N, dtype=torch.bool, device=dev)
    vis = torch.where(eye[:, None, :, None], own_ok[None, :, None, :], ctx_ok[None, :, None, :])
    vis = vis & sel.to(dev)[:, None, :, None]                                   # [N, P+1, N, P+1]
    m = bias[:, :, None, :, None].expand(H, N, P + 1, N, P + 1)
    m = m.masked_fill(~vis[None], float("-inf")).reshape(H, N * (P + 1), N * (P + 1))
    return F.pad(m, (1, 0), value=0.0)                                          # null column: bias 0


def repeat_text(text, n: int):
    """Per-layer text keys/values of B samples -> of B*n rows (each sample's patches share its text)."""
    return [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0), m.repeat_interleave(n, 0)) for k, v, m in text]


def parallel_logits(dec, chain, rel, text, logits=True, where=None):
    """chain [B, N, P] tokens, rel [N, N], text: per-layer (k, v, mask) of B samples -> [B, N, P, V].
    where: chain_where(...) of the B*N patches (needed by rope/layout configs)."""
    B, N, P = chain.shape
    rows = P + 1
    masks = {}

    def attend(attn, q, k, v, q_start):                                         # [B*N, H, P+1, D] each
        _, H, _, D = q.shape
        l = attn.layer
        q, k, v = (t.reshape(B, N, H, rows, D).transpose(1, 2).reshape(B, H, N * rows, D) for t in (q, k, v))
        k = torch.cat([attn.null_k.to(k.dtype)[None, :, None].expand(B, H, 1, D), k], 2)   # [B, H, 1+N*rows, D]
        v = torch.cat([attn.null_v.to(v.dtype)[None, :, None].expand(B, H, 1, D), v], 2)
        if l not in masks:
            masks[l] = block_mask(dec.adc_bias[l], rel.to(q.device), P)         # [H, N*rows, 1+N*rows]
        s = torch.einsum("bhmd,bhnd->bhmn", q, k).float() * dec.scale + masks[l][None]
        o = torch.einsum("bhmn,bhnd->bhmd", torch.softmax(s, -1).to(v.dtype), v)  # [B, H, N*rows, D]
        return o.reshape(B, H, N, rows, D).transpose(1, 2).reshape(B * N, H, rows, D)

    out = dec(chain.reshape(B * N, P), 0, rows, attend, repeat_text(text, N), logits=logits, where=where)
    return out.reshape(B, N, rows, -1)[:, :, :P]                                # rows 0..P-1 predict tokens


def patch_forward(dec, buf, ctx, text, logits=True, where=None):
    """One patch, rows 0..P, dense attention against context pages.

    buf [B, P] tokens; ctx: list of (pages, bias_row) with pages = [(k, v) per layer], k/v [B, H, P, D].
    Returns (logits or hidden [B, P, ...] of rows 0..P-1, this patch's page [(k, v) per layer]).
    """
    P = buf.shape[1]
    own_row = adc.rel_index((0, 0, 0), dec.cfg.extent)
    page = []

    def attend(attn, q, k, v, q_start):
        Bq, H, M, D = q.shape
        l = attn.layer
        table = dec.adc_bias[l]                                                  # [R, H]
        if ctx:
            ck = torch.cat([pg[l][0] for pg, _ in ctx], 2)                       # [B, H, n*P, D]
            cv = torch.cat([pg[l][1] for pg, _ in ctx], 2)
            cb = torch.cat([table[r][None].expand(P, H) for _, r in ctx], 0)     # [n*P, H]
        else:
            ck = cv = q.new_zeros(Bq, H, 0, D)
            cb = table.new_zeros(0, H)
        page.append((k[:, :, 1:], v[:, :, 1:]))                                  # keys of tokens 0..P-1
        return dense_attention(q, k[:, :, 1:], v[:, :, 1:], 0, ck, cv, cb, table[own_row],
                               attn.null_k, attn.null_v, attn.scale)

    out = dec(buf, 0, P + 1, attend, text, logits=logits, where=where)
    return out[:, :P], page


def sequential_logits(dec, chain, order, extent, text, where=None):
    """The oracle's computation with teacher forcing: patches in order, each against its selected
    context pages (brute-force selection from the definition). chain [B, N, P] -> [B, N, P, V]."""
    B, N = chain.shape[:2]
    step_of = {tuple(o): i for i, o in enumerate(order)}
    rows = adc.bias_rows(extent, dec.cfg.extent)                                # inference slot -> trained row
    pages, outs = {}, []
    for i, (t, y, x) in enumerate(order):
        ctx = [(pages[j], rows[c]) for c, j in adc.context(step_of, i, (t, y, x), extent)]
        lg, pages[(t, y, x)] = patch_forward(dec, chain[:, i], ctx, text, where=where_step(where, B, N, i))
        outs.append(lg)
    return torch.stack(outs, 1)
