"""CUDA backend (csrc/ via nuwa_fast._C) vs the torch reference (nuwa_fast.ops.reference). GPU only.

patch_attention tolerance (flash-attention's rule): with ref32 = the reference on the same inputs with
fp32 math, |cuda - ref32| <= 2 * |plain PyTorch in the input dtype - ref32| + atol, where "plain" does
the matmuls and the softmax in the input dtype (flash-attention's out_pt). The error of the reference
run in the input dtype (fp32 accumulation, one final rounding) is printed beside it. Unused pages and
not-yet-visible own-page positions are NaN-filled, so any read of them shows up as NaN.
The k/v caches are strided views pool[:, layer, 0/1] of a 6-D pool that lives on the device.
"""
import warnings

import pytest
import torch

from nuwa_fast import ops
from nuwa_fast.ops import reference as ref

if "cuda" not in ops.available_backends():
    pytest.skip("cuda backend absent (no CUDA device or nuwa_fast._C not built)", allow_module_level=True)

from nuwa_fast import _cuda_backend as cb  # noqa: E402

pytestmark = pytest.mark.gpu
DEV = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}

try:  # fp32 "plain" attention must not run in TF32
    torch.backends.cuda.matmul.fp32_precision = "ieee"
except (AttributeError, RuntimeError):
    torch.backends.cuda.matmul.allow_tf32 = False


def make_case(B, H, D, P, C, M, q_start, *, empty=0.4, layers=2, pages=64, dtype=torch.float32, seed=0,
              strided=True, bias_t=False):
    """Random inputs in the engine's layout: k/v are pool[:, layer, 0/1] of a NaN-filled 6-D device pool."""
    g = torch.Generator().manual_seed(seed)
    pages = max(pages, 2 * B * (C + 1) + 4)                                  # a pool larger than the tables
    perm = torch.randperm(pages, generator=g)
    page_table = perm[:B * C].reshape(B, C).to(torch.int32)
    if empty >= 1:
        page_table.fill_(-1)
    elif empty > 0:
        page_table[torch.rand(B, C, generator=g) < empty] = -1
    own_page = perm[B * C:B * C + B].to(torch.int32)
    pool = torch.full((pages, layers, 2, H, P, D), float("nan"))
    used = page_table[page_table >= 0].long()
    pool[used] = torch.randn(len(used), layers, 2, H, P, D, generator=g)
    n_vis = q_start + M - 1                                                 # own keys anyone can see
    pool[own_page.long(), :, :, :, :n_vis] = torch.randn(B, layers, 2, H, n_vis, D, generator=g)
    pool = pool.to(device=DEV, dtype=dtype)                                 # contiguous pool, then views
    layer = layers - 1
    k, v = pool[:, layer, 0], pool[:, layer, 1]                             # [pages, H, P, D] strided
    if not strided:
        k, v = k.contiguous(), v.contiguous()
    R = C + 2
    bias = torch.randn(H, R, generator=g).t() if bias_t else torch.randn(R, H, generator=g)
    q = torch.randn(B, M, H, D, generator=g).transpose(1, 2)                # [B, H, M, D], strided rows
    return dict(
        q=q.to(DEV, dtype), k_cache=k, v_cache=v, page_table=page_table.to(DEV), own_page=own_page.to(DEV),
        q_start=q_start, bias=bias.to(DEV), own_rel=R - 1, null_k=torch.randn(H, D, generator=g).to(DEV, dtype),
        null_v=torch.randn(H, D, generator=g).to(DEV, dtype), scale=D ** -0.5)


def plain_attention(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel, null_k, null_v, scale):
    """The op in plain PyTorch in the input dtype (no fp32 upcast): the error scale of the tolerance."""
    dt = q.dtype
    B, H, M, D = q.shape
    P, C = k_cache.shape[2], page_table.shape[1]
    pt = page_table.long()
    valid = pt >= 0
    safe = pt.clamp(min=0)
    kc = torch.where(valid[:, :, None, None, None], k_cache[safe], 0).permute(0, 2, 1, 3, 4).reshape(B, H, C * P, D)
    vc = torch.where(valid[:, :, None, None, None], v_cache[safe], 0).permute(0, 2, 1, 3, 4).reshape(B, H, C * P, D)
    rows = torch.arange(M, device=q.device) + q_start
    own_vis = torch.arange(P, device=q.device)[None, :] < rows[:, None]    # [M, P]
    seen = own_vis.any(0)[None, None, :, None]
    ko = torch.where(seen, k_cache[own_page.long()], 0)
    vo = torch.where(seen, v_cache[own_page.long()], 0)
    keys = torch.cat([null_k[None, :, None, :].expand(B, H, 1, D), kc, ko], 2)
    vals = torch.cat([null_v[None, :, None, :].expand(B, H, 1, D), vc, vo], 2)
    b_ctx = torch.where(valid[:, None, :], bias[:C].t()[None].to(dt), float("-inf")).repeat_interleave(P, 2)
    b_own = bias[own_rel].to(dt)[None, :, None].expand(B, H, P)
    b_all = torch.cat([torch.zeros(B, H, 1, dtype=dt, device=q.device), b_ctx, b_own], 2)   # [B, H, keys]
    s = (q @ keys.transpose(-1, -2)) * scale + b_all[:, :, None, :]
    s[..., 1 + C * P:] = s[..., 1 + C * P:].masked_fill(~own_vis[None, None], float("-inf"))
    return torch.softmax(s, dim=-1) @ vals


def check_attention(case, **kw):
    out = cb.patch_attention(**case, **kw)
    dtype = case["q"].dtype
    # The reference upcasts every input before any math (k/v after the gather), so with q in fp32 it
    # returns the fp32 result of these inputs without copying the whole pool to fp32.
    ref32 = ref.patch_attention(**dict(case, q=case["q"].float()))
    err = (out.float() - ref32).abs().max().item()
    err_plain = (plain_attention(**case).float() - ref32).abs().max().item()
    err_ref = (ref.patch_attention(**case).float() - ref32).abs().max().item()
    B, H, M, D = case["q"].shape
    print(f"\n{str(dtype)[6:]} B={B} H={H} M={M} D={D} P={case['k_cache'].shape[2]} {kw}: max err cuda "
          f"{err:.3e}, plain torch {err_plain:.3e}, reference in dtype {err_ref:.3e}")
    assert out.shape == case["q"].shape and out.dtype == dtype
    assert not out.isnan().any(), "NaN leaked from an unused page or an unwritten own-page slot"
    assert err <= 2 * err_plain + ATOL[dtype], f"err {err} > 2 * {err_plain} + {ATOL[dtype]}"


# (B, H, D, P, C, M, q_start, options): the Triton test list, plus the brief's grid below
ATTN_CASES = {
    "p9_decode_qs0": (3, 2, 32, 9, 5, 1, 0, {}),
    "p9_decode_qs4": (3, 2, 32, 9, 5, 1, 4, {}),
    "p9_decode_qsP": (3, 2, 32, 9, 5, 1, 9, {}),
    "p16_prefill": (2, 2, 32, 16, 3, 17, 0, {}),
    "p9_prefill_qs1": (2, 2, 32, 9, 3, 9, 1, {}),
    "one_head_c25": (2, 1, 32, 9, 25, 1, 5, {}),
    "all_empty_decode": (2, 2, 32, 9, 4, 1, 3, {"empty": 1.0}),
    "all_empty_prefill": (1, 2, 32, 9, 4, 10, 0, {"empty": 1.0}),
    "no_slots": (2, 2, 32, 9, 0, 1, 5, {}),
    "batch33": (33, 1, 32, 4, 2, 1, 2, {}),
    "d64_decode": (2, 2, 64, 16, 4, 1, 7, {}),
    "d64_prefill": (1, 2, 64, 16, 2, 17, 0, {}),
    "d128_prefill": (1, 1, 128, 16, 2, 17, 0, {}),
    "contiguous_kv": (2, 2, 32, 9, 3, 1, 4, {"strided": False}),
    "bias_transposed": (2, 3, 64, 9, 7, 1, 4, {"bias_t": True}),
    "split2_decode": (2, 2, 32, 9, 6, 1, 4, {"num_splits": 2}),
    "split4_c25": (1, 2, 32, 9, 25, 1, 9, {"num_splits": 4}),
    "split_all_empty": (1, 2, 32, 9, 6, 1, 0, {"num_splits": 3, "empty": 1.0}),
    "split_more_than_keys": (1, 1, 32, 9, 2, 1, 1, {"num_splits": 64}),
    "split_prefill": (1, 1, 32, 9, 4, 10, 0, {"num_splits": 2}),
    "p100_prefill": (1, 1, 32, 100, 2, 101, 0, {}),
    "p100_prefill_qs37": (2, 2, 64, 100, 3, 40, 37, {}),
    "p100_decode_split": (2, 2, 32, 100, 6, 1, 50, {"num_splits": 3}),
    "d128_decode_c25": (2, 2, 128, 16, 25, 1, 16, {}),
    "p64_prefill_tiny": (2, 4, 64, 64, 25, 65, 0, {}),
    "paper_decode": (2, 4, 64, 256, 25, 1, 200, {"empty": 0.5}),
    "paper_prefill": (1, 2, 64, 256, 25, 257, 0, {"empty": 0.5}),
    "paper_prefill_d128": (1, 1, 128, 256, 13, 129, 128, {"empty": 0.3}),
}


def _attn_params():
    return [pytest.param(case, dtype, id=f"{name}-{str(dtype)[6:]}")
            for name, case in ATTN_CASES.items() for dtype in DTYPES]


@pytest.mark.parametrize("case,dtype", _attn_params())
def test_patch_attention(case, dtype):
    B, H, D, P, C, M, q_start, opts = case
    opts = dict(opts)
    kw = {"num_splits": opts.pop("num_splits")} if "num_splits" in opts else {}
    c = make_case(B, H, D, P, C, M, q_start, dtype=dtype, **opts)
    check_attention(c, **kw)
    if M > 1 and dtype != torch.float32:   # both prefill kernels for 16-bit types
        check_attention(c, prefill_impl="simt")
        check_attention(c, prefill_impl="wmma")


# The brief's grid: P=9, one head, C=25 slots (some or all empty), batch 1 and 33, head dims 32/64/128.
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("B", [1, 33])
@pytest.mark.parametrize("empty", [0.4, 1.0], ids=["some_empty", "all_empty"])
@pytest.mark.parametrize("q_start,splits", [(0, 1), (1, None), (5, 1), (5, 4), (9, None), (9, 7)])
def test_decode_grid(q_start, splits, empty, B, D, dtype):
    check_attention(make_case(B, 1, D, 9, 25, 1, q_start, empty=empty, dtype=dtype, seed=B + D + q_start),
                    num_splits=splits)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("B", [1, 33])
@pytest.mark.parametrize("q_start,M", [(0, 10), (3, 7), (8, 2)])
def test_prefill_grid(q_start, M, B, D, dtype):
    c = make_case(B, 1, D, 9, 25, M, q_start, dtype=dtype, seed=B + D + M)
    for impl in (["simt"] if dtype == torch.float32 else ["simt", "wmma"]):
        check_attention(c, prefill_impl=impl)


HOPPER = torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.parametrize("reduce", ["auto", "kernel",
                                    pytest.param("cluster", marks=pytest.mark.skipif(not HOPPER, reason="sm_90+"))])
@pytest.mark.parametrize("D", [32, 64, 128])
def test_split_matches_one_pass(D, reduce):
    """Flash-decoding split (reduce kernel or cluster/DSMEM merge) and the one-pass kernel agree."""
    case = make_case(2, 2, D, 9, 8, 1, 6)
    one = cb.patch_attention(**case, num_splits=1)
    for s in (2, 3, 5, 8, 40):
        if reduce == "cluster" and s > 8:
            continue
        split = cb.patch_attention(**case, num_splits=s, split_reduce=reduce)
        print(f"\nsplits={s} {reduce} max diff {(split - one).abs().max().item():.3e}")
        torch.testing.assert_close(split, one, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not HOPPER, reason="thread block clusters need sm_90+")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("splits", [2, 4, 8])
def test_cluster_split(splits, dtype):
    c = make_case(33, 1, 64, 9, 25, 1, 5, dtype=dtype)
    check_attention(c, num_splits=splits, split_reduce="cluster")
    check_attention(c, num_splits=splits, split_reduce="kernel")


def test_prefill_rows_match_decode():
    """Each prefill row equals a decode call at its own q_start (the batched-vs-simple check)."""
    case = make_case(3, 2, 64, 9, 6, 10, 0, dtype=torch.float16)
    full = cb.patch_attention(**case)
    for m in range(10):
        row = cb.patch_attention(**dict(case, q=case["q"][:, :, m:m + 1], q_start=m), num_splits=1)
        torch.testing.assert_close(full[:, :, m:m + 1], row, atol=2e-3, rtol=2e-3)


def test_int64_page_offsets():
    """Pages past 2**31 elements of the pool: index arithmetic must be int64."""
    H, P, D, layers = 1, 256, 128, 1
    per_page = layers * 2 * H * P * D                                       # 65536 elements
    pages = 2 ** 31 // per_page + 64
    if torch.cuda.get_device_properties(0).total_memory < 2 * pages * per_page * 2:
        pytest.skip("needs ~9 GB of device memory")
    pool = torch.full((pages, layers, 2, H, P, D), float("nan"), dtype=torch.float16, device=DEV)
    page_table = torch.tensor([[pages - 1, -1, pages - 7, 5]], dtype=torch.int32, device=DEV)
    own_page = torch.tensor([pages - 3], dtype=torch.int32, device=DEV)
    for p in (pages - 1, pages - 7, 5, pages - 3):
        pool[p] = torch.randn(layers, 2, H, P, D, device=DEV, dtype=torch.float16)
    case = dict(q=torch.randn(1, H, 1, D, device=DEV, dtype=torch.float16), k_cache=pool[:, 0, 0],
                v_cache=pool[:, 0, 1], page_table=page_table, own_page=own_page, q_start=100,
                bias=torch.randn(6, H, device=DEV), own_rel=5,
                null_k=torch.randn(H, D, device=DEV, dtype=torch.float16),
                null_v=torch.randn(H, D, device=DEV, dtype=torch.float16), scale=D ** -0.5)
    check_attention(case, num_splits=1)
    check_attention(case, num_splits=3)
    check_attention(dict(case, q=torch.randn(1, H, 30, D, device=DEV, dtype=torch.float16)))
    del pool


def test_fp32_null_with_half_inputs():
    case = make_case(2, 2, 64, 9, 5, 1, 4, dtype=torch.bfloat16)
    case32 = dict(case, null_k=case["null_k"].float(), null_v=case["null_v"].float())
    torch.testing.assert_close(cb.patch_attention(**case32), cb.patch_attention(**case), atol=0, rtol=0)


def test_unsupported_head_dim_falls_back():
    """A head dim the CUDA kernels do not cover runs on the Triton kernel (else torch) and says so."""
    from nuwa_fast import ops
    case = make_case(2, 1, 48, 9, 3, 1, 4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = cb.patch_attention(**case)
    use = "triton" if "triton" in ops.available_backends() else "torch"
    assert any("head dim 48" in str(w.message) and f"using the {use} backend" in str(w.message) for w in seen)
    torch.testing.assert_close(out, ref.patch_attention(**case), atol=1e-5, rtol=1e-5)


def test_cuda_graph_capture():
    """Decode (split and not) and prefill are capturable: no host sync inside the wrappers."""
    case = make_case(2, 2, 64, 9, 6, 1, 4, dtype=torch.float16)
    pre = make_case(2, 2, 64, 9, 6, 10, 0, dtype=torch.float16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):                                              # warm up outside the graph
        cb.patch_attention(**case, num_splits=3)
        cb.patch_attention(**pre)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out1 = cb.patch_attention(**case, num_splits=1)
        out3 = cb.patch_attention(**case, num_splits=3)
        outp = cb.patch_attention(**pre)
    case["q"].normal_()
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out1, ref.patch_attention(**case), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(out3, out1, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(outp, ref.patch_attention(**pre), atol=2e-3, rtol=2e-3)


def test_registry_dispatch():
    assert ops.resolve_backend(None, torch.device(DEV)) == "cuda"
    case = make_case(1, 2, 32, 9, 3, 1, 2)
    out = ops.patch_attention(*case.values(), backend="cuda")
    torch.testing.assert_close(out, ref.patch_attention(**case), atol=1e-5, rtol=1e-5)


# ---- ADC bias gather ---------------------------------------------------------------------------------
@pytest.mark.parametrize("B,H,C,R", [(1, 1, 1, 1), (3, 4, 25, 50), (33, 20, 100, 100), (2, 3, 7, 9)])
def test_adc_gather(B, H, C, R):
    g = torch.Generator().manual_seed(B * 1000 + C)
    bias = torch.randn(R, H, generator=g).to(DEV)
    pt = torch.randint(-1, 50, (B, C), generator=g, dtype=torch.int32).to(DEV)
    for b in (bias, bias.t().contiguous().t()):                             # row-major and strided bias
        out = cb.adc_gather(b, pt)
        assert out.dtype == torch.float32 and out.shape == (B, H, C)
        assert torch.equal(out, ref.adc_gather(b, pt))


# ---- NCP tables --------------------------------------------------------------------------------------
def random_tables(grid, pages, mapped, seed):
    """A consistent random state: `mapped` patches own distinct pages, the rest are on the free stack."""
    g = torch.Generator().manual_seed(seed)
    N = grid[0] * grid[1] * grid[2]
    page_index = torch.full((N + 1,), -1, dtype=torch.int32)
    perm = torch.randperm(pages, generator=g).to(torch.int32)
    patches = torch.randperm(N, generator=g)[:mapped]
    page_index[patches] = perm[:mapped]
    free_stack = torch.full((pages + 1,), -1, dtype=torch.int32)
    free_stack[:pages - mapped] = perm[mapped:]
    free_top = torch.tensor([pages - mapped], dtype=torch.int32)
    return page_index, free_stack, free_top, patches.to(torch.int32)


@pytest.mark.parametrize("grid,extent,batch", [((1, 3, 4), (0, 1, 1), 1), ((2, 3, 4), (1, 2, 2), 3),
                                               ((1, 5, 5), (0, 2, 2), 33), ((3, 2, 6), (3, 2, 2), 2)])
def test_ncp_select(grid, extent, batch):
    N = grid[0] * grid[1] * grid[2]
    page_index, *_ = random_tables(grid, N + 3, N // 2, seed=N + batch)
    page_index = page_index.to(DEV)
    for cur in range(N):
        cur_t = torch.tensor([cur], dtype=torch.int32, device=DEV)
        out = cb.ncp_select(page_index, cur_t, grid, extent, batch)
        expect = ref.ncp_select(page_index, cur_t, grid, extent, batch)
        assert out.dtype == torch.int32 and torch.equal(out, expect), f"cur={cur}"
    buf = torch.empty_like(expect)
    assert cb.ncp_select(page_index, cur_t, grid, extent, batch, out=buf) is buf
    assert torch.equal(buf, expect)


def test_ncp_add():
    grid = (1, 4, 5)
    for seed in range(3):
        tables = random_tables(grid, 12, 5, seed)
        free = (tables[0][:-1] < 0).nonzero().flatten()
        cur = free[seed % len(free)].reshape(1).to(torch.int32).to(DEV)
        mine = [t.clone().to(DEV) for t in tables[:3]]
        theirs = [t.clone().to(DEV) for t in tables[:3]]
        page = cb.ncp_add(*mine, cur)
        expect = ref.ncp_add(*theirs, cur)
        assert torch.equal(page, expect)
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("K,pad", [(1, 0), (4, 2), (7, 0), (0, 3)])
def test_ncp_remove(K, pad):
    grid = (2, 3, 4)
    tables = random_tables(grid, 20, 9, seed=K * 10 + pad)
    g = torch.Generator().manual_seed(K)
    patches = torch.cat([tables[3][:K], torch.full((pad,), -1, dtype=torch.int32)])
    patches = patches[torch.randperm(len(patches), generator=g)].to(DEV)
    mine = [t.clone().to(DEV) for t in tables[:3]]
    theirs = [t.clone().to(DEV) for t in tables[:3]]
    cb.ncp_remove(*mine, patches)
    ref.ncp_remove(*theirs, patches)
    for a, b in zip(mine, theirs):                                          # scratch entries included
        assert torch.equal(a[:-1], b[:-1]), (a, b)
    assert mine[0][-1].item() == -1


def test_ncp_loop_matches_reference():
    """A whole raster ("down") loop: select, add, then free pages no later patch can select."""
    grid, extent, batch = (1, 3, 4), (0, 1, 1), 2
    N, W = 12, grid[2]
    state = {}
    for name in ("mine", "theirs"):
        page_index = torch.full((N + 1,), -1, dtype=torch.int32)
        free_stack = torch.cat([torch.arange(8, dtype=torch.int32).flip(0), torch.tensor([-1], dtype=torch.int32)])
        state[name] = [page_index.to(DEV), free_stack.to(DEV), torch.tensor([8], dtype=torch.int32, device=DEV)]
    for i in range(N):
        cur = torch.tensor([i], dtype=torch.int32, device=DEV)
        sel = cb.ncp_select(state["mine"][0], cur, grid, extent, batch)
        assert torch.equal(sel, ref.ncp_select(state["theirs"][0], cur, grid, extent, batch))
        assert torch.equal(cb.ncp_add(*state["mine"], cur), ref.ncp_add(*state["theirs"], cur))
        done = i - W - 1                               # row above, one left: out of every later window
        patches = torch.tensor([done if done >= 0 else -1, -1], dtype=torch.int32, device=DEV)
        cb.ncp_remove(*state["mine"], patches)
        ref.ncp_remove(*state["theirs"], patches)
        for a, b in zip(state["mine"], state["theirs"]):
            assert torch.equal(a[:-1], b[:-1]), f"step {i}"
