"""Property tests (hypothesis) for ADC orders and the NCP plan and pool."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nuwa_fast import adc, ncp, ops

grids = st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7))
extents = st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 3))
orders = st.sampled_from(adc.ORDERS)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def grid_and_region(draw):
    T, H, W = draw(grids)
    y0, y1 = sorted(draw(st.tuples(st.integers(0, H - 1), st.integers(0, H - 1))))
    x0, x1 = sorted(draw(st.tuples(st.integers(0, W - 1), st.integers(0, W - 1))))
    return (T, H, W), (y0, x0, y1, x1)


@FAST
@given(grids, orders)
def test_every_order_is_a_permutation(grid, name):
    T, H, W = grid
    o = adc.order(name, grid)
    assert len(o) == len(set(o)) == T * H * W
    assert all(0 <= t < T and 0 <= y < H and 0 <= x < W for t, y, x in o)


@FAST
@given(grid_and_region())
def test_outward_grows_ring_by_ring(gr):
    (T, H, W), (y0, x0, y1, x1) = gr
    o = adc.order("outward", (T, H, W), region=(y0, x0, y1, x1))
    for t in range(T):
        ring = [max(y0 - y, 0, y - y1, x0 - x, 0, x - x1) for tt, y, x in o if tt == t]
        assert ring == sorted(ring) and ring[0] == 0


def brute(o, i, extent):
    t, y, x = o[i]
    before = set(o[:i])
    return [(t + a, y + b, x + c) if (t + a, y + b, x + c) in before else None for a, b, c in adc.offsets(extent)]


@FAST
@given(grids, extents, orders)
def test_plan_selection_frees_and_peak(grid, extent, name):
    o = adc.order(name, grid)
    pl = ncp.plan(o, extent, grid)
    freed_at = {j: i for i, fs in enumerate(pl.freed) for j in fs}
    live, largest = set(), 0
    for i, p in enumerate(o):
        want = [ncp.linear(j, grid) if j else -1 for j in brute(o, i, extent)]
        assert pl.slots[i] == want
        for j in want:
            if j >= 0:
                assert freed_at[j] >= i                               # never freed while a later step selects it
        live.add(ncp.linear(p, grid))
        largest = max(largest, len(live))
        live -= set(pl.freed[i])
    assert not live and pl.peak_pages == largest


@pytest.mark.parametrize("backend", [b for b in ("torch", "triton") if b in ops.available_backends("ncp_select")])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(grid=st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4)), extent=extents, name=orders,
       batch=st.integers(1, 3))
def test_device_pool_agrees_with_plan(backend, grid, extent, name, batch):
    o = adc.order(name, grid)
    pl = ncp.plan(o, extent, grid)
    pool = ncp.PagePool(pl.peak_pages, batch, 1, 1, 1, 1, len(o), torch.float32, "cpu", backend=backend)
    page = {}
    for i, p in enumerate(o):
        cur = torch.tensor([ncp.linear(p, grid)], dtype=torch.int32)
        table = pool.select(cur, grid, extent)
        for c, j in enumerate(pl.slots[i]):
            assert table[:, c].tolist() == ([-1] * batch if j < 0 else [page[j] * batch + b for b in range(batch)])
        page[ncp.linear(p, grid)] = int(pool.add(cur)[0]) // batch
        assert pool.in_use() == pl.live[i]
        pool.remove(torch.tensor(pl.freed[i] + [-1], dtype=torch.int32))
    assert pool.in_use() == 0 and int(pool.peak) == pl.peak_pages
