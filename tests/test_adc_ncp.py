import itertools

import pytest
import torch

from nuwa_fast import adc, ncp


def brute_force_context(order, i, extent):
    """Definition: the patches before step i within the extent, one per offset (rel_index order)."""
    t, y, x = order[i]
    before = set(order[:i])
    return [(t + d[0], y + d[1], x + d[2]) if (t + d[0], y + d[1], x + d[2]) in before else None
            for d in adc.offsets(extent)]


GRIDS = [(1, 1, 1), (1, 3, 4), (1, 5, 2), (2, 3, 3), (3, 2, 5)]


@pytest.mark.parametrize("name", adc.ORDERS)
@pytest.mark.parametrize("grid", GRIDS)
def test_order_is_permutation(name, grid):
    o = adc.order(name, grid)
    T, H, W = grid
    assert sorted(o) == sorted(itertools.product(range(T), range(H), range(W)))
    assert [t for t, _, _ in o] == sorted(t for t, _, _ in o)          # frames outermost


def test_basic_orders_literal():
    g = (1, 2, 3)
    assert adc.order("down", g) == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2)]
    assert adc.order("right", g) == [(0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (0, 0, 2), (0, 1, 2)]
    assert adc.order("up", g) == [(0, 1, 0), (0, 1, 1), (0, 1, 2), (0, 0, 0), (0, 0, 1), (0, 0, 2)]
    assert adc.order("left", g) == [(0, 0, 2), (0, 1, 2), (0, 0, 1), (0, 1, 1), (0, 0, 0), (0, 1, 0)]


@pytest.mark.parametrize("region", [None, (1, 1, 2, 3), (0, 0, 0, 0), (4, 5, 4, 5)])
def test_outward_rings(region):
    H, W = 5, 6
    o = adc.order("outward", (H, W), region=region)
    y0, x0, y1, x1 = region or ((H - 1) // 2, (W - 1) // 2, (H - 1) // 2, (W - 1) // 2)
    ring = [max(y0 - y, 0, y - y1, x0 - x, 0, x - x1) for _, y, x in o]
    assert ring == sorted(ring)                                           # grows ring by ring
    first = [(y, x) for _, y, x in o[:(y1 - y0 + 1) * (x1 - x0 + 1)]]
    assert first == [(y, x) for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)]
    if region is None:                                                    # clockwise from top-left
        assert [(y, x) for _, y, x in o[1:9]] == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1), (2, 1)]


def test_per_frame_orders():
    o = adc.order(["down", "up"], (2, 2, 2))
    assert o[:4] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    assert o[4:] == [(1, 1, 0), (1, 1, 1), (1, 0, 0), (1, 0, 1)]


def test_bad_orders():
    with pytest.raises(ValueError, match="unknown order"):
        adc.order("diagonal", (2, 2))
    with pytest.raises(ValueError, match="per-frame"):
        adc.order(["down"], (2, 2, 2))
    with pytest.raises(ValueError, match="inside the patch grid"):
        adc.order("outward", (2, 2), region=(0, 0, 5, 5))
    with pytest.raises(ValueError, match="positive"):
        adc.order("down", (0, 2))


def test_rel_index():
    ext = (1, 2, 2)
    seen = [adc.rel_index(d, ext) for d in adc.offsets(ext)]
    assert seen == list(range(adc.num_offsets(ext)))
    assert adc.rel_index((0, 0, 0), (0, 2, 2)) == 12
    assert adc.rel_index((1, 0, 0), ext) == -1 and adc.rel_index((0, 3, 0), ext) == -1
    assert adc.bias_rows((0, 1, 1), (1, 2, 2)) == [adc.rel_index(d, (1, 2, 2)) for d in adc.offsets((0, 1, 1))]
    with pytest.raises(ValueError, match="larger than the extent"):
        adc.bias_rows((0, 3, 2), (1, 2, 2))


@pytest.mark.parametrize("name", adc.ORDERS)
@pytest.mark.parametrize("grid,extent", [((1, 4, 5), (0, 1, 1)), ((1, 3, 7), (0, 2, 2)), ((3, 3, 2), (1, 1, 1)),
                                         ((2, 2, 3), (2, 0, 1))])
def test_plan_matches_definition(name, grid, extent):
    o = adc.order(name, grid)
    pl = ncp.plan(o, extent, grid)
    live = set()
    for i, p in enumerate(o):
        want = [ncp.linear(j, grid) if j else -1 for j in brute_force_context(o, i, extent)]
        assert pl.slots[i] == want
        live.add(ncp.linear(p, grid))
        assert all(s in live for s in want if s >= 0)                    # never freed while selected
        assert pl.live[i] == len(live)
        live -= set(pl.freed[i])
    assert not live                                                       # everything freed in the end
    assert pl.peak_pages == max(pl.live)


def run_pool(o, extent, grid, batch=2):
    """Drive a PagePool through the plan, checking every select against the brute-force definition."""
    pl = ncp.plan(o, extent, grid)
    pool = ncp.PagePool(pl.peak_pages, batch, 1, 1, 1, 1, len(o), torch.float32, "cpu")
    page_of = {}
    for i, p in enumerate(o):
        cur = torch.tensor([ncp.linear(p, grid)], dtype=torch.int32)
        table = pool.select(cur, grid, extent)
        for c, j in enumerate(brute_force_context(o, i, extent)):
            want = [-1] * batch if j is None else [page_of[j] * batch + b for b in range(batch)]
            assert table[:, c].tolist() == want, (i, c)
        own = pool.add(cur)
        page_of[p] = int(own[0]) // batch
        assert own.tolist() == [page_of[p] * batch + b for b in range(batch)]
        freed = torch.tensor(pl.freed[i] + [-1], dtype=torch.int32)
        pool.remove(freed)
    return pl, pool


@pytest.mark.parametrize("name", adc.ORDERS)
def test_pool_agrees_with_plan(name):
    grid, extent = (2, 4, 5), (1, 1, 2)
    pl, pool = run_pool(adc.order(name, grid), extent, grid)
    assert int(pool.peak) == pl.peak_pages
    assert pool.in_use() == 0
    assert sorted(pool.free_stack[:-1].tolist()) == list(range(pl.peak_pages))
    assert (pool.page_index[:-1] == -1).all()


def test_peak_pages_depend_on_width_only():
    """"down" keeps e_h rows of pages plus e_w + 1: flat in the height, linear in the width."""
    eh, ew = 2, 2
    for W in (2, 8, 64):
        peaks = {H: ncp.plan(adc.order("down", (H, W)), (0, eh, ew)).peak_pages for H in (3, 8, 64)}
        assert set(peaks.values()) == {min(eh * W + ew + 1, 3 * W)}, (W, peaks)
    # a 2 x 64 canvas has only one row above any patch: it needs a row less than 64 x 64, never more
    assert ncp.plan(adc.order("down", (2, 64)), (0, eh, ew)).peak_pages == 64 + ew + 1
    assert ncp.plan(adc.order("down", (64, 64)), (0, eh, ew)).peak_pages == 2 * 64 + ew + 1
