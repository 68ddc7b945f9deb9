"""Arbitrary Direction Controller: patch orders (Split) and the relative-offset index (Emb).

Patch coordinates are (t, y, x); frames are always outermost, t ascending.
"""
from __future__ import annotations

from typing import Sequence

BASIC_ORDERS = ("down", "right", "up", "left")
ORDERS = BASIC_ORDERS + ("outward",)


def _grid3(grid) -> tuple[int, int, int]:
    grid = tuple(int(g) for g in grid)
    if len(grid) == 2:
        grid = (1,) + grid
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"patch grid must be (T, H, W) or (H, W) of positive ints, got {grid}")
    return grid


def _frame_order(name: str, H: int, W: int, region) -> list[tuple[int, int]]:
    if name == "down":
        return [(y, x) for y in range(H) for x in range(W)]
    if name == "right":
        return [(y, x) for x in range(W) for y in range(H)]
    if name == "up":
        return [(y, x) for y in reversed(range(H)) for x in range(W)]
    if name == "left":
        return [(y, x) for x in reversed(range(W)) for y in range(H)]
    if name == "outward":
        return _outward(H, W, region)
    raise ValueError(f"unknown order {name!r}; choose one of {list(ORDERS)}")


def _outward(H: int, W: int, region) -> list[tuple[int, int]]:
    """Ring by ring (Chebyshev distance to the region); inside a ring clockwise from top-left.

    region = (y0, x0, y1, x1) inclusive patch rectangle, default the centre patch. Ring 0 is the
    region itself in raster order.
    """
    if region is None:
        region = ((H - 1) // 2, (W - 1) // 2, (H - 1) // 2, (W - 1) // 2)
    y0, x0, y1, x1 = (int(v) for v in region)
    if not (0 <= y0 <= y1 < H and 0 <= x0 <= x1 < W):
        raise ValueError(f"outward region {region} (y0, x0, y1, x1, inclusive) must lie inside the "
                         f"patch grid {H} x {W}")
    out = [(y, x) for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)]
    r = 0
    while len(out) < H * W:
        r += 1
        ty, by, lx, rx = y0 - r, y1 + r, x0 - r, x1 + r
        ring = [(ty, x) for x in range(lx, rx + 1)]                  # top edge, left -> right
        ring += [(y, rx) for y in range(ty + 1, by + 1)]             # right edge, top -> bottom
        ring += [(by, x) for x in range(rx - 1, lx - 1, -1)]         # bottom edge, right -> left
        ring += [(y, lx) for y in range(by - 1, ty, -1)]             # left edge, bottom -> top
        out += [(y, x) for y, x in ring if 0 <= y < H and 0 <= x < W]
    return out


def order(name: str | Sequence[str], grid, region=None) -> list[tuple[int, int, int]]:
    """The visiting order of all patches of `grid` = (T, H, W) (or (H, W) for an image).

    name: one of ORDERS, or a sequence with one name per frame (per-frame orders for video).
    region: for "outward", the (y0, x0, y1, x1) inclusive patch rectangle to grow from.
    """
    T, H, W = _grid3(grid)
    if not isinstance(name, str) and not (isinstance(name, (list, tuple)) and all(isinstance(n, str) for n in name)):
        raise TypeError(f"order must be one of {list(ORDERS)} or a list with one per frame, got {name!r}")
    names = [name] * T if isinstance(name, str) else list(name)
    if len(names) != T:
        raise ValueError(f"got {len(names)} per-frame orders for {T} frames; give one name or one per frame")
    out = []
    for t, nm in enumerate(names):
        out += [(t, y, x) for y, x in _frame_order(nm, H, W, region)]
    return out


def directions(name: str | Sequence[str], grid) -> list[int]:
    """Per step of order(name, grid): the index in ORDERS of the order its frame follows (the
    decoder's layout conditioning)."""
    T, H, W = _grid3(grid)
    names = [name] * T if isinstance(name, str) else list(name)
    return [ORDERS.index(nm) for nm in names for _ in range(H * W)]


def num_offsets(extent) -> int:
    """R = (e_t+1)(2e_h+1)(2e_w+1): the offsets of an extent = NCP slots = rows of its ADC bias table."""
    et, eh, ew = extent
    return (et + 1) * (2 * eh + 1) * (2 * ew + 1)


def rel_index(offset, extent) -> int:
    """Row of the ADC bias table for offset d = context - current = (dt, dy, dx); -1 if outside."""
    dt, dy, dx = offset
    et, eh, ew = extent
    if not (-et <= dt <= 0 and abs(dy) <= eh and abs(dx) <= ew):
        return -1
    return ((dt + et) * (2 * eh + 1) + (dy + eh)) * (2 * ew + 1) + (dx + ew)


def offsets(extent) -> list[tuple[int, int, int]]:
    """All offsets in rel_index order."""
    et, eh, ew = extent
    return [(dt, dy, dx) for dt in range(-et, 1) for dy in range(-eh, eh + 1) for dx in range(-ew, ew + 1)]


def context(step_of: dict, i: int, patch, extent) -> list[tuple[int, tuple]]:
    """NCP select(i) from the definition: [(slot, j)] in slot (rel_index) order, for every offset d of
    the extent whose patch j = patch + d is visited before step i. step_of: patch (t, y, x) -> its
    step in the order."""
    t, y, x = patch
    out = []
    for c, (dt, dy, dx) in enumerate(offsets(extent)):
        j = (t + dt, y + dy, x + dx)
        if step_of.get(j, i) < i:
            out.append((c, j))
    return out


def bias_rows(extent, trained_extent) -> list[int]:
    """For inference with a smaller extent: row of the trained table for each inference slot."""
    if any(e > t for e, t in zip(extent, trained_extent)):
        raise ValueError(f"extent {tuple(extent)} is larger than the extent {tuple(trained_extent)} the "
                         f"checkpoint was trained with; use an extent <= {tuple(trained_extent)} in every axis")
    return [rel_index(d, trained_extent) for d in offsets(extent)]
