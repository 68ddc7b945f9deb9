"""NCPAttention, the model's self-attention and the public drop-in module: in a foreign decoder block
against F.scaled_dot_product_attention, and with the page pool against dense attention."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nuwa_fast import DenseKV, NCPAttention, PagedKV, adc, ncp
from nuwa_fast.layers import dense_attention
from models import small_model


class PlainBlock(nn.Module):
    """A pre-norm transformer block as anyone writes it, with NCPAttention as its self-attention."""

    def __init__(self, width, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = NCPAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):                                            # x [B, M, width]
        x = x + self.attn(self.ln1(x), DenseKV())
        return x + self.mlp(self.ln2(x))


def reference_block(block, x):
    """The same block with the attention written with SDPA: causal over [null, k_1 .. k_{M-1}] (row s
    sees the null key and rows 1..s; row 0 is a start row, its key is never read)."""
    a, (B, M, W) = block.attn, x.shape
    H, D = a.heads, a.head_dim
    q, k, v = a.qkv(block.ln1(x)).view(B, M, 3, H, D).permute(2, 0, 3, 1, 4)        # 3 x [B, H, M, D]
    k = torch.cat([a.null_k[None, :, None].expand(B, H, 1, D), k[:, :, 1:]], 2)      # [B, H, M, D]
    v = torch.cat([a.null_v[None, :, None].expand(B, H, 1, D), v[:, :, 1:]], 2)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + a.proj(o.transpose(1, 2).reshape(B, M, W))
    return x + block.mlp(block.ln2(x))


@pytest.mark.parametrize("heads,M", [(1, 5), (4, 17)])
def test_drop_in_foreign_block_matches_sdpa(heads, M):
    torch.manual_seed(0)
    block = PlainBlock(32, heads)
    with torch.no_grad():
        block.attn.null_v.normal_()
    x = torch.randn(3, M, 32)
    got, want = block(x), reference_block(block, x)
    err = (got - want).abs().max().item()
    print("max err", err)
    assert err < 1e-5
    got.sum().backward()                                             # trainable inside the foreign block
    assert block.attn.qkv.weight.grad is not None and block.attn.null_k.grad is not None


def test_the_model_layers_use_the_public_module():
    model = small_model()
    for i, layer in enumerate(model.decoder.layers):
        assert type(layer.attn) is NCPAttention
        assert layer.attn.layer == i
    n_attn = sum(isinstance(m, NCPAttention) for m in model.modules())
    assert n_attn == model.cfg.layers                                 # no other self-attention in the decoder


def test_paged_source_matches_dense():
    """PagedKV (pool + ops.patch_attention, one row per call) against DenseKV over the same context."""
    torch.manual_seed(0)
    W, H, p, B = 32, 2, 3, 2
    P, ext, grid = p * p, (0, 1, 1), (1, 2, 2)
    attn = NCPAttention(W, H)
    bias = torch.randn(1, adc.num_offsets(ext), H)                  # [layers, R, H]
    own_rel = adc.rel_index((0, 0, 0), ext)
    with torch.no_grad():
        attn.null_v.normal_()
    order = adc.order("down", grid)
    plan = ncp.plan(order, ext, grid)
    pool = ncp.PagePool(plan.peak_pages, B, 1, H, P, W // H, len(order), torch.float32, "cpu")
    keys = {}                                                       # patch -> (k, v) [B, H, P, D]
    for i, patch in enumerate(order):
        cur = torch.tensor([ncp.linear(patch, grid)], dtype=torch.int32)
        table, own = pool.select(cur, grid, ext), pool.add(cur)
        x = torch.randn(B, P + 1, W)
        kv = PagedKV(pool, table, own, bias, own_rel)
        ys = torch.cat([attn(x[:, s:s + 1], kv, s) for s in range(P + 1)], 1)
        ctx = [(j, c) for c, j in enumerate(plan.slots[i]) if j >= 0]
        D = W // H
        ck = torch.cat([keys[j][0] for j, _ in ctx], 2) if ctx else None
        cv = torch.cat([keys[j][1] for j, _ in ctx], 2) if ctx else None
        cb = torch.cat([bias[0, c][None].expand(P, H) for _, c in ctx], 0) if ctx else None
        want = attn(x, DenseKV(ck, cv, cb, bias[0, own_rel]))
        qkv = attn.qkv(x).view(B, P + 1, 3, H, D)
        keys[ncp.linear(patch, grid)] = (qkv[:, 1:, 1].transpose(1, 2), qkv[:, 1:, 2].transpose(1, 2))
        err = (ys - want).abs().max().item()
        print("patch", i, "max err", err)
        assert err < 1e-5
        pool.remove(torch.tensor(plan.freed[i], dtype=torch.int32))
    assert pool.in_use() == 0


def test_dense_source_is_the_definition():
    torch.manual_seed(1)
    attn = NCPAttention(16, 2)
    q, k, v = (torch.randn(2, 2, 4, 8) for _ in range(3))
    o = DenseKV()(attn, q, k, v, 0)
    want = dense_attention(q, k[:, :, 1:], v[:, :, 1:], 0, q.new_zeros(2, 2, 0, 8), q.new_zeros(2, 2, 0, 8),
                           q.new_zeros(0, 2), q.new_zeros(2), attn.null_k, attn.null_v, attn.scale)
    assert torch.equal(o, want)
    with pytest.raises(ValueError, match="row 0"):
        DenseKV()(attn, q, k, v, 1)
