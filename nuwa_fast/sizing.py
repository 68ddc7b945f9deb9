"""What a canvas will cost, computed before its order or plan is built.

adc.order and ncp.plan materialise Python lists (about 48 R + 256 bytes per patch, R = NCP slots), and
the result, its tokens and a source's known tokens are arrays of the canvas' size. check_canvas adds
these up arithmetically and compares them with the memory available, then sizes the NCP pool:
peak_pages is exact (vectorised over the grid: a few int64 arrays of the grid's size) up to
EXACT_MAX patches, and beyond it a closed form that is an upper bound (exact for the four basic
orders once the grid is wider than the window; ring sizes for "outward").
"""
from __future__ import annotations

import numpy as np

from . import adc
from .errors import BadArgument, DoesNotFit

EXACT_MAX = 1 << 20                 # patches: exact peak pages below (~100 MB of int64 arrays), the closed form above
PLAN_BYTES_PER_SLOT = 48            # host bytes per patch and NCP slot of adc.order + ncp.plan (measured ~40)
PLAN_BYTES_PER_PATCH = 256


def order_names(order, T: int) -> list[str]:
    """One valid order name per frame (adc.order's rules), without building the order."""
    if isinstance(order, str):
        names = [order] * T
    elif isinstance(order, (list, tuple)) and all(isinstance(n, str) for n in order):
        names = list(order)
    else:
        raise TypeError(f"order must be one of {list(adc.ORDERS)} or a list with one per frame, got {order!r}")
    if len(names) != T:
        raise ValueError(f"got {len(names)} per-frame orders for {T} frames; give one name or one per frame")
    for n in names:
        if n not in adc.ORDERS:
            raise ValueError(f"unknown order {n!r}; choose one of {list(adc.ORDERS)}")
    return names


def check_region(region, H: int, W: int):
    """(y0, x0, y1, x1) inclusive patch rectangle inside the grid, as ints; None stays None."""
    if region is None:
        return None
    if isinstance(region, (str, bytes)) or not hasattr(region, "__len__") or len(region) != 4:
        raise BadArgument(f"region must be four whole numbers (y0, x0, y1, x1) of patches, inclusive; "
                          f"got {region!r}")
    out = []
    for v in region:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise BadArgument(f"region must be four whole numbers (y0, x0, y1, x1) of patches; got {region!r}")
        out.append(int(v))
    y0, x0, y1, x1 = out
    if not (0 <= y0 <= y1 < H and 0 <= x0 <= x1 < W):
        raise BadArgument(f"outward region {tuple(out)} (y0, x0, y1, x1, inclusive) must lie inside the "
                          f"patch grid {H} x {W}")
    return tuple(out)


def _frame_positions(name: str, H: int, W: int, region) -> np.ndarray:
    """int64 [H, W]: the step at which each patch of a frame is visited (adc._frame_order, vectorised)."""
    y, x = np.arange(H, dtype=np.int64)[:, None], np.arange(W, dtype=np.int64)[None, :]     # broadcast [H, W]
    if name == "down":
        return y * W + x
    if name == "up":
        return (H - 1 - y) * W + x
    if name == "right":
        return x * H + y
    if name == "left":
        return (W - 1 - x) * H + y
    y, x = np.broadcast_to(y, (H, W)), np.broadcast_to(x, (H, W))
    if region is None:
        region = ((H - 1) // 2, (W - 1) // 2, (H - 1) // 2, (W - 1) // 2)
    y0, x0, y1, x1 = region
    r = np.maximum(np.maximum(y0 - y, y - y1), np.maximum(x0 - x, x - x1)).clip(min=0)   # ring
    ty, by, lx, rx = y0 - r, y1 + r, x0 - r, x1 + r
    seg = np.where(y == ty, 0, np.where(x == rx, 1, np.where(y == by, 2, 3)))
    off = np.select([seg == 0, seg == 1, seg == 2], [x - lx, y - ty, rx - x], by - y)
    inside = r == 0
    seg, off = np.where(inside, 0, seg), np.where(inside, (y - y0) * W + (x - x0), off)
    big = 2 * (H + W) + H * W + 1
    key = (r * 4 + seg) * big + off
    del r, ty, by, lx, rx, seg, off, inside
    pos = np.empty(H * W, dtype=np.int64)
    pos[np.argsort(key, axis=None, kind="stable")] = np.arange(H * W, dtype=np.int64)
    return pos.reshape(H, W)


def positions(names, grid, region=None) -> np.ndarray:
    """int64 [T, H, W]: the index of each patch in adc.order(names, grid, region)."""
    T, H, W = grid
    return np.stack([t * H * W + _frame_positions(n, H, W, region) for t, n in enumerate(names)])


def peak_pages_exact(pos: np.ndarray, extent) -> int:
    """ncp.plan(order, extent).peak_pages from the positions alone: a patch's page lives from its
    own step to the last later step whose window holds it."""
    T, H, W = pos.shape
    last = pos.copy()
    for dt, dy, dx in adc.offsets(extent):             # patch i selects j = i + d, so j's selectors are j - d
        # j spans the slice where i = j - d is inside the grid
        jt, jy, jx = slice(max(dt, 0), T + min(dt, 0)), slice(max(dy, 0), H + min(dy, 0)), slice(max(dx, 0), W + min(dx, 0))
        it, iy, ix = slice(max(-dt, 0), T + min(-dt, 0)), slice(max(-dy, 0), H + min(-dy, 0)), slice(max(-dx, 0), W + min(-dx, 0))
        pj, pi = pos[jt, jy, jx], pos[it, iy, ix]
        lj = last[jt, jy, jx]
        np.maximum(lj, np.where(pi > pj, pi, pj), out=lj)
    n = pos.size
    ends = np.bincount(last.ravel() + 1, minlength=n + 1)[:n]      # pages freed before each step
    return int((np.arange(1, n + 1) - np.cumsum(ends)).max())     # live = steps so far - freed so far


def peak_pages_bound(names, grid, extent, region=None) -> int:
    """An upper bound of the peak pages in closed form (no array of the grid's size)."""
    T, H, W = grid
    et, eh, ew = extent
    n, HW = T * H * W, H * W
    lags = []
    for nm in set(names):
        if nm in ("down", "up"):
            lags.append(eh * W + ew + 1)
        elif nm in ("right", "left"):
            lags.append(ew * H + eh + 1)
        else:
            e = max(eh, ew)
            ring0 = 1 if region is None else (region[2] - region[0] + 1) * (region[3] - region[1] + 1)
            lags.append(min(HW, (e + 1) * max(ring0, 2 * (H + W))))
    frame = max(lags)
    if et and len(set(names)) > 1:
        return min(n, (et + 1) * HW)
    return min(n, et * HW + frame)


def peak_pages(order, grid, extent, region=None) -> int:
    names = order_names(order, grid[0])
    if grid[0] * grid[1] * grid[2] <= EXACT_MAX:
        return peak_pages_exact(positions(names, grid, region), extent)
    return peak_pages_bound(names, grid, extent, region)


def _human(n: float) -> str:
    from .ncp import _human as h
    return h(int(n))


def host_available_bytes() -> int:
    """MemAvailable of the host (NUWA_FAST_MAX_POOL_BYTES caps the pool only, not this)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def host_bytes(grid, R: int, result_bytes: int, token_bytes: int) -> int:
    n = grid[0] * grid[1] * grid[2]
    return n * (PLAN_BYTES_PER_SLOT * R + PLAN_BYTES_PER_PATCH) + result_bytes + token_bytes


def check_canvas(model, grid, order, region, batch: int, extent, sampling, pixels: tuple, known: bool = False,
                 pool: bool = True):
    """Refuse a canvas that cannot fit, before adc.order builds it.

    pixels: (T, H, W) of the result. Raises DoesNotFit (host memory: the order, the plan, the result
    and its tokens) or ncp.PoolTooLarge (the NCP pool on the device). Returns (peak pages, region).
    """
    from . import engine, ncp
    T, Hg, Wg = grid
    names = order_names(order, T)
    region = check_region(region, Hg, Wg) if "outward" in names else None
    cfg = model.cfg
    e = engine.grid_extent(engine.check_extent(model, extent), grid)
    R = adc.num_offsets(e)
    p = cfg.patch
    toks = T * Hg * p * Wg * p
    result = batch * pixels[0] * pixels[1] * pixels[2] * 3                 # uint8 pixels
    token_bytes = batch * toks * 8 * 2 + (toks * 9 if known else 0)       # tokens (+ a copy), known + mask
    need = host_bytes(grid, R, result, token_bytes)
    avail = host_available_bytes()
    if need > avail:
        raise DoesNotFit(
            f"a {pixels[2]} x {pixels[1]} pixel canvas ({T} frame(s), {Hg} x {Wg} patches, batch {batch}) needs "
            f"about {_human(need)} of host memory (the result {_human(result)}, its tokens {_human(token_bytes)}, "
            f"the patch order and NCP plan {_human(need - result - token_bytes)}), but {_human(avail)} is "
            f"available; ask for fewer pixels, frames or samples")
    pages = None
    if pool:
        pages = peak_pages(names, grid, e, region)
        Bt = batch * (2 if sampling is not None and sampling.guidance != 1.0 else 1)
        dtype = model.decoder.start.dtype
        ncp.check_pool_fits(pages, Bt, cfg, dtype, model.device)
    return pages, region
