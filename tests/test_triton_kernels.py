"""Triton backend vs the torch reference (nuwa_fast.ops.reference).

Runs in the Triton interpreter on a CPU (tests/conftest.py sets TRITON_INTERPRET=1) and natively on a
CUDA device when there is one; the device a run cannot use is skipped, not failed.

patch_attention tolerance (flash-attention's rule): with ref32 = the reference on fp32 upcasts of the
same inputs, |triton - ref32| <= 2 * |reference in the same dtype - ref32| + atol. Unused pages and
not-yet-visible own-page positions are NaN-filled, so any read of them shows up as NaN.
"""
import os

import pytest
import torch

from nuwa_fast.ops import reference as ref

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()

triton = pytest.importorskip("triton")
from nuwa_fast.kernels import adc_gather as tk_adc  # noqa: E402
from nuwa_fast.kernels import ncp as tk_ncp  # noqa: E402
from nuwa_fast.kernels import patch_attention as tk_attn  # noqa: E402

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="CPU runs need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not HAS_CUDA or INTERPRET,
                                                   reason="needs a CUDA device (and no interpreter)")]),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}


def make_case(B, H, D, P, C, M, q_start, *, empty=0.4, layers=2, pages=64, dtype=torch.float32,
              device="cpu", seed=0, strided=True):
    """Random inputs in the engine's layout: k/v are pool[:, layer, 0/1] of a NaN-filled 6-D pool."""
    g = torch.Generator().manual_seed(seed)
    pages = max(pages, B * (C + 1) + 4)
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
    layer = layers - 1
    k, v = pool[:, layer, 0], pool[:, layer, 1]
    if not strided:
        k, v = k.contiguous(), v.contiguous()
    R = C + 2
    inputs = dict(
        q=torch.randn(B, H, M, D, generator=g), k_cache=k, v_cache=v, page_table=page_table,
        own_page=own_page, q_start=q_start, bias=torch.randn(R, H, generator=g), own_rel=R - 1,
        null_k=torch.randn(H, D, generator=g), null_v=torch.randn(H, D, generator=g), scale=D ** -0.5)
    return {n: (x.to(device=device, dtype=dtype) if torch.is_tensor(x) and x.is_floating_point()
                and n != "bias" else x.to(device) if torch.is_tensor(x) else x) for n, x in inputs.items()}


def check_attention(case, **kw):
    out = tk_attn.patch_attention(**case, **kw)
    dtype = case["q"].dtype
    up = {n: (x.float() if torch.is_tensor(x) and x.is_floating_point() else x) for n, x in case.items()}
    ref32 = ref.patch_attention(**up)
    ref_lo = ref.patch_attention(**case)
    err = (out.float() - ref32).abs().max().item()
    err_ref = (ref_lo.float() - ref32).abs().max().item()
    B, H, M, D = case["q"].shape
    key = ("decode" if M == 1 else "prefill", M, case["k_cache"].shape[2], D, str(dtype)[6:])
    print(f"\n{str(dtype)[6:]} max err: triton {err:.3e}, torch in {str(dtype)[6:]} {err_ref:.3e}; "
          f"config {tk_attn.CHOSEN_CONFIGS.get(key)}")
    assert out.shape == case["q"].shape and out.dtype == dtype
    assert not out.isnan().any(), "NaN leaked from an unused page or an unwritten own-page slot"
    assert err <= 2 * err_ref + ATOL[dtype], f"err {err} > 2 * {err_ref} + {ATOL[dtype]}"


# (B, H, D, P, C, M, q_start, options)
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
    "batch33": (33, 1, 16, 4, 2, 1, 2, {}),
    "d64_decode": (2, 2, 64, 16, 4, 1, 7, {}),
    "d64_prefill": (1, 2, 64, 16, 2, 17, 0, {}),
    "d128_prefill": (1, 1, 128, 16, 2, 17, 0, {}),
    "d48_padded": (2, 1, 48, 9, 3, 1, 4, {}),
    "contiguous_kv": (2, 2, 32, 9, 3, 1, 4, {"strided": False}),
    "split2_decode": (2, 2, 32, 9, 6, 1, 4, {"num_splits": 2}),
    "split4_c25": (1, 2, 32, 9, 25, 1, 9, {"num_splits": 4}),
    "split_all_empty": (1, 2, 32, 9, 6, 1, 0, {"num_splits": 3, "empty": 1.0}),
    "split_prefill": (1, 1, 32, 9, 4, 10, 0, {"num_splits": 2}),
}
SLOW_CASES = {
    "p100_prefill": (1, 1, 32, 100, 2, 101, 0, {}),
    "p100_decode_split": (2, 2, 32, 100, 6, 1, 50, {"num_splits": 3}),
    "d128_decode_c25": (2, 2, 128, 16, 25, 1, 16, {}),
    "p64_prefill_tiny": (2, 4, 64, 64, 25, 65, 0, {}),
}


def _attn_params():
    params = []
    for cases, marks in ((ATTN_CASES, []), (SLOW_CASES, [pytest.mark.slow])):
        for name, case in cases.items():
            for dtype in DTYPES:
                params.append(pytest.param(case, dtype, id=f"{name}-{str(dtype)[6:]}", marks=marks))
    return params


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,dtype", _attn_params())
def test_patch_attention(case, dtype, device):
    B, H, D, P, C, M, q_start, opts = case
    opts = dict(opts)
    kw = {"num_splits": opts.pop("num_splits")} if "num_splits" in opts else {}
    check_attention(make_case(B, H, D, P, C, M, q_start, dtype=dtype, device=device, **opts), **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_split_matches_one_pass(device):
    """Flash-decoding split and the one-pass kernel agree (the batched-vs-simple check)."""
    case = make_case(2, 2, 32, 9, 8, 1, 6, device=device)
    one = tk_attn.patch_attention(**case, num_splits=1)
    for s in (2, 3, 8):
        split = tk_attn.patch_attention(**case, num_splits=s)
        print(f"\nsplits={s} max diff {(split - one).abs().max().item():.3e}")
        torch.testing.assert_close(split, one, atol=1e-5, rtol=1e-5)


def down_table(case, filled=12):
    """The "down" order's context at extent (0, 2, 2): of the 25 slots only the first 12 (rows above,
    left in this row) are ever filled, the other 13 stay -1."""
    pt = case["page_table"].clone()
    pt[:, filled:] = -1
    return dict(case, page_table=pt)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [3, 7, 40])
def test_flat_key_split_down_table(splits, dtype, device):
    """Splits over the flat range of valid keys: ranges cut through pages (P = 9 is no multiple of
    BLOCK_N), more splits than valid pages, and splits past the last key (S = 40) all agree with the
    reference under the tolerance rule."""
    case = down_table(make_case(2, 2, 16, 9, 25, 1, 5, empty=0.0, dtype=dtype, device=device))
    check_attention(case, num_splits=splits)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_pool_fp32_model(device):
    """The GPU default: an fp32 model over a bf16 pool. The engine casts q and the null key/value to
    the pool dtype, as here; error against fp32 math within the tolerance rule, split and not."""
    case32 = down_table(make_case(2, 2, 32, 16, 25, 1, 9, empty=0.0, device=device))
    case = {n: (x.to(torch.bfloat16) if torch.is_tensor(x) and x.is_floating_point() and n != "bias" else x)
            for n, x in case32.items()}
    for splits in (1, 4):
        check_attention(case, num_splits=splits)


@pytest.mark.parametrize("device", DEVICES)
def test_registry_dispatch(device):
    from nuwa_fast import ops
    assert "triton" in ops.available_backends()
    case = make_case(1, 2, 32, 9, 3, 1, 2, device=device)
    out = ops.patch_attention(*case.values(), backend="triton")
    torch.testing.assert_close(out, ref.patch_attention(**case), atol=1e-5, rtol=1e-5)


# ---- ADC bias gather ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,H,C,R", [(1, 1, 1, 1), (3, 4, 25, 50), (33, 20, 100, 100), (2, 3, 7, 9)])
def test_adc_gather(B, H, C, R, device):
    g = torch.Generator().manual_seed(B * 1000 + C)
    bias = torch.randn(R, H, generator=g).to(device)
    pt = torch.randint(-1, 50, (B, C), generator=g, dtype=torch.int32).to(device)
    out = tk_adc.adc_gather(bias, pt)
    expect = ref.adc_gather(bias, pt)
    assert out.dtype == torch.float32 and out.shape == (B, H, C)
    assert torch.equal(out, expect)


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grid,extent,batch", [((1, 3, 4), (0, 1, 1), 1), ((2, 3, 4), (1, 2, 2), 3),
                                               ((1, 5, 5), (0, 2, 2), 33), ((3, 2, 6), (3, 2, 2), 2)])
def test_ncp_select(grid, extent, batch, device):
    N = grid[0] * grid[1] * grid[2]
    page_index, *_ = random_tables(grid, N + 3, N // 2, seed=N + batch)
    page_index = page_index.to(device)
    for cur in range(N):
        cur_t = torch.tensor([cur], dtype=torch.int32, device=device)
        out = tk_ncp.ncp_select(page_index, cur_t, grid, extent, batch)
        expect = ref.ncp_select(page_index, cur_t, grid, extent, batch)
        assert out.dtype == torch.int32 and torch.equal(out, expect), f"cur={cur}"
    buf = torch.empty_like(expect)
    assert tk_ncp.ncp_select(page_index, cur_t, grid, extent, batch, out=buf) is buf
    assert torch.equal(buf, expect)


@pytest.mark.parametrize("device", DEVICES)
def test_ncp_add(device):
    grid = (1, 4, 5)
    for seed in range(3):
        tables = random_tables(grid, 12, 5, seed)
        free = (tables[0][:-1] < 0).nonzero().flatten()
        cur = free[seed % len(free)].reshape(1).to(torch.int32).to(device)
        mine = [t.clone().to(device) for t in tables[:3]]
        theirs = [t.clone().to(device) for t in tables[:3]]
        page = tk_ncp.ncp_add(*mine, cur)
        expect = ref.ncp_add(*theirs, cur)
        assert torch.equal(page, expect)
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K,pad", [(1, 0), (4, 2), (7, 0), (0, 3)])
def test_ncp_remove(K, pad, device):
    grid = (2, 3, 4)
    tables = random_tables(grid, 20, 9, seed=K * 10 + pad)
    g = torch.Generator().manual_seed(K)
    patches = torch.cat([tables[3][:K], torch.full((pad,), -1, dtype=torch.int32)])
    patches = patches[torch.randperm(len(patches), generator=g)].to(device)
    mine = [t.clone().to(device) for t in tables[:3]]
    theirs = [t.clone().to(device) for t in tables[:3]]
    tk_ncp.ncp_remove(*mine, patches)
    ref.ncp_remove(*theirs, patches)
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b), (a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_ncp_loop_matches_reference(device):
    """A whole raster ("down") loop: select, add, then free pages no later patch can select."""
    grid, extent, batch = (1, 3, 4), (0, 1, 1), 2
    N, W = 12, grid[2]
    state = {}
    for name in ("mine", "theirs"):
        page_index = torch.full((N + 1,), -1, dtype=torch.int32)
        free_stack = torch.cat([torch.arange(8, dtype=torch.int32).flip(0), torch.tensor([-1], dtype=torch.int32)])
        state[name] = [page_index.to(device), free_stack.to(device), torch.tensor([8], dtype=torch.int32,
                                                                                   device=device)]
    for i in range(N):
        cur = torch.tensor([i], dtype=torch.int32, device=device)
        sel = tk_ncp.ncp_select(state["mine"][0], cur, grid, extent, batch)
        assert torch.equal(sel, ref.ncp_select(state["theirs"][0], cur, grid, extent, batch))
        assert torch.equal(tk_ncp.ncp_add(*state["mine"], cur), ref.ncp_add(*state["theirs"], cur))
        done = i - W - 1                               # row above, one left: out of every later window
        patches = torch.tensor([done if done >= 0 else -1, -1], dtype=torch.int32, device=device)
        tk_ncp.ncp_remove(*state["mine"], patches)
        ref.ncp_remove(*state["theirs"], patches)
        for a, b in zip(state["mine"], state["theirs"]):
            assert torch.equal(a, b), f"step {i}"
