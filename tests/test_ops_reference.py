"""The torch reference ops against literal definitions (loops over keys, no shared code)."""
import math

import pytest
import torch

from nuwa_fast import ops
from nuwa_fast.ops import reference


def definition(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel, null_k, null_v, scale):
    B, H, M, D = q.shape
    P = k_cache.shape[2]
    out = torch.zeros(B, H, M, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for m in range(M):
                qv = q[b, h, m].double()
                keys, vals, bs = [null_k[h].double()], [null_v[h].double()], [0.0]
                for c, pg in enumerate(page_table[b].tolist()):
                    if pg < 0:
                        continue
                    for n in range(P):
                        keys.append(k_cache[pg, h, n].double())
                        vals.append(v_cache[pg, h, n].double())
                        bs.append(float(bias[c, h]))
                for n in range(q_start + m):
                    keys.append(k_cache[int(own_page[b]), h, n].double())
                    vals.append(v_cache[int(own_page[b]), h, n].double())
                    bs.append(float(bias[own_rel, h]))
                s = torch.stack([qv @ k for k in keys]) * scale + torch.tensor(bs, dtype=torch.float64)
                out[b, h, m] = torch.softmax(s, 0) @ torch.stack(vals)
    return out


def make_inputs(B=3, H=2, M=1, D=8, P=9, C=9, pages=16, q_start=4, empty_frac=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    pages = max(pages, B * (C + 1) + 4)                                     # room for unused pages
    pool = torch.randn(pages, 2, 2, H, P, D, generator=g)                 # [pages, layers, 2, H, P, D]
    q = torch.randn(B, H, M, D, generator=g)
    perm = torch.randperm(pages, generator=g)
    table = perm[:B * (C + 1)].view(B, C + 1).to(torch.int32)
    own, table = table[:, 0].contiguous(), table[:, 1:].contiguous()
    table[torch.rand(B, C, generator=g) < empty_frac] = -1
    used = set(table[table >= 0].tolist()) | set(own.tolist())
    for pg in range(pages):                                                 # unused pages hold NaN
        if pg not in used:
            pool[pg] = float("nan")
    vis = q_start + M - 1
    pool[own.long(), :, :, :, vis:] = float("nan")                          # not yet written
    bias = torch.randn(C + 2, H, generator=g)
    return (q, pool[:, 1, 0], pool[:, 1, 1], table, own, q_start, bias, C + 1,
            torch.randn(H, D, generator=g), torch.randn(H, D, generator=g), 1 / math.sqrt(D))


@pytest.mark.parametrize("shape", [dict(), dict(M=10, q_start=0), dict(M=9, q_start=1), dict(q_start=0),
                                   dict(q_start=9), dict(H=1, C=25, pages=40), dict(empty_frac=1.0),
                                   dict(B=1, P=4, C=3)])
def test_patch_attention_matches_definition(shape):
    args = make_inputs(**shape)
    got = reference.patch_attention(*args)
    want = definition(*args)
    err = (got.double() - want).abs().max().item()
    print("max abs err", err)
    assert torch.isfinite(got).all()
    assert err < 1e-5


def test_registry_dispatch_and_bad_backend(monkeypatch):
    args = make_inputs()
    assert "torch" in ops.available_backends()
    torch.testing.assert_close(ops.patch_attention(*args, backend="torch"), reference.patch_attention(*args))
    with pytest.raises(ValueError, match="not available"):
        ops.patch_attention(*args, backend="nonexistent")
    monkeypatch.setenv("NUWA_FAST_BACKEND", "nonexistent")
    with pytest.raises(ValueError, match="not available"):
        ops.patch_attention(*args)


def test_adc_gather():
    bias = torch.randn(25, 3)
    table = torch.tensor([[0, -1, 5], [-1, -1, 2]], dtype=torch.int32)
    out = reference.adc_gather(bias, table)
    assert out.shape == (2, 3, 3)
    assert out[0, :, 0].tolist() == bias[0].tolist() and out[1, :, 2].tolist() == bias[2].tolist()
    assert torch.isinf(out[0, :, 1]).all() and torch.isinf(out[1, :, :2]).all()


def test_pool_dtype_defaults_to_bf16_on_gpu():
    """The GPU pool holds bf16 pages unless fp32 is asked for; a CPU pool keeps the model's dtype."""
    from nuwa_fast.ncp import default_pool_dtype
    assert default_pool_dtype(torch.float32, "cuda") == torch.bfloat16
    assert default_pool_dtype(torch.float32, torch.device("cuda", 0)) == torch.bfloat16
    assert default_pool_dtype(torch.float32, "cuda", torch.float32) == torch.float32
    assert default_pool_dtype(torch.float32, "cpu") == torch.float32
    assert default_pool_dtype(torch.bfloat16, "cpu") == torch.bfloat16
