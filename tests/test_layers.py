"""NCPAttention (the drop-in module) against dense attention from the definition."""
import torch

from nuwa_fast import NCPAttention, adc, ncp
from nuwa_fast.model import dense_attention


def test_ncp_attention_module_matches_dense():
    torch.manual_seed(0)
    W, H, p, B = 32, 2, 3, 2
    P, ext, grid = p * p, (0, 1, 1), (1, 2, 2)
    attn = NCPAttention(W, H, extent=ext)
    with torch.no_grad():
        attn.adc_bias.normal_()
        attn.null_v.normal_()
    order = adc.order("down", grid)
    plan = ncp.plan(order, ext, grid)
    pool = ncp.PagePool(plan.peak_pages, B, 1, H, P, W // H, len(order), torch.float32, "cpu")
    keys = {}                                                       # patch -> (k, v) [B, H, P, D]
    for i, patch in enumerate(order):
        cur = torch.tensor([ncp.linear(patch, grid)], dtype=torch.int32)
        table, own = pool.select(cur, grid, ext), pool.add(cur)
        x = torch.randn(B, P + 1, W)
        ys = torch.cat([attn(x[:, s:s + 1], pool.layer_kv(0), table, own, s) for s in range(P + 1)], 1)
        # dense reference: whole patch at once, context from the plan's brute-force slots
        qkv = attn.qkv(x).view(B, P + 1, 3, H, W // H)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
        ctx = [(j, c) for c, j in enumerate(plan.slots[i]) if j >= 0]
        ck = torch.cat([keys[j][0] for j, _ in ctx], 2) if ctx else q.new_zeros(B, H, 0, W // H)
        cv = torch.cat([keys[j][1] for j, _ in ctx], 2) if ctx else q.new_zeros(B, H, 0, W // H)
        cb = torch.cat([attn.adc_bias[c][None].expand(P, H) for _, c in ctx], 0) if ctx else q.new_zeros(0, H)
        o = dense_attention(q, k[:, :, 1:], v[:, :, 1:], 0, ck, cv, cb, attn.adc_bias[attn.own_rel],
                            attn.null_k, attn.null_v, attn.scale)
        want = attn.proj(o.transpose(1, 2).reshape(B, P + 1, W))
        keys[ncp.linear(patch, grid)] = (k[:, :, 1:], v[:, :, 1:])
        err = (ys - want).abs().max().item()
        print("patch", i, "max err", err)
        assert err < 1e-5
        pool.remove(torch.tensor(plan.freed[i], dtype=torch.int32))
    assert pool.in_use() == 0
