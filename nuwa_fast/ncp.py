"""Nearby Context Pool: the host-side plan and the device-side paged pool.

plan(order, extent, grid, schedule) answers, ahead of time and on the host, which context patch
fills each slot of each step, which steps run together (the waves), which pages can be freed after
each wave, and how many pages are ever live at once (peak_pages).

Waves: wave(i) = 1 + max(wave(j) for j in select(i)), 1 when the selection is empty. Every patch of a
wave has its whole selection finished in earlier waves, so the patches of a wave can be decoded
together and each still sees exactly its sequential context. "sequential" puts one step per wave
(the reference schedule). max_lanes splits a wave wider than that into consecutive waves. The PagePool holds the pages on the device and runs select/add/remove through the
ops registry, so the patch loop never waits for the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import adc, ops
from .errors import human_bytes


@dataclass
class Plan:
    order: list                      # [(t, y, x)] visiting order
    grid: tuple                      # (T, H, W)
    extent: tuple                    # (e_t, e_h, e_w)
    slots: list                      # per step: [C] linear patch id of the context at each slot, -1 empty
    freed: list                      # per wave: linear patch ids whose pages are freed after the wave
    live: list                       # per wave: pages in use during the wave (own pages included)
    waves: list = None               # [[step]] the steps of each wave, ascending; sequential: [[0], [1], ...]
    schedule: str = "sequential"

    def __post_init__(self):
        if self.waves is None:
            self.waves = [[i] for i in range(len(self.order))]

    @property
    def max_lanes(self) -> int:
        return max((len(w) for w in self.waves), default=0)

    @property
    def mean_lanes(self) -> float:
        return len(self.order) / len(self.waves) if self.waves else 0.0

    @property
    def peak_pages(self) -> int:
        return max(self.live) if self.live else 0

    @property
    def max_freed(self) -> int:
        return max((len(f) for f in self.freed), default=0)


def linear(tyx, grid) -> int:
    t, y, x = tyx
    return (t * grid[1] + y) * grid[2] + x


SCHEDULES = ("waves", "sequential")


def check_schedule(schedule, max_lanes=None):
    """Raise a ValueError naming the choices for an unknown schedule or a lane cap below 1."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if max_lanes is not None and (isinstance(max_lanes, bool) or not isinstance(max_lanes, int)
                                  or max_lanes < 1):
        raise ValueError(f"max_lanes must be a whole number >= 1 (lanes decoded at once) or None "
                         f"(as many as memory allows), got {max_lanes!r}")


def wave_numbers(slots, step_of_linear) -> list:
    """wave(i) = 1 + max wave over the steps i selects (1 for an empty selection), per step."""
    wave = []
    for row in slots:
        wave.append(1 + max((wave[step_of_linear[j]] for j in row if j >= 0), default=0))
    return wave


def plan(order, extent, grid=None, schedule: str = "sequential", max_lanes: int | None = None) -> Plan:
    """Context slots per step, and the waves, frees and live pages of `schedule`, under NCP `extent`."""
    check_schedule(schedule, max_lanes)
    order = [tuple(int(v) for v in p) for p in order]
    if grid is None:
        grid = tuple(max(p[i] for p in order) + 1 for i in range(3))
    T, H, W = grid
    if len(set(order)) != len(order) or len(order) != T * H * W:
        raise ValueError("order must visit every patch of the grid exactly once")
    C = adc.num_offsets(extent)
    step_of = {p: i for i, p in enumerate(order)}
    slots = []
    order_of_linear = {linear(p, grid): p for p in order}
    for i, patch in enumerate(order):
        row = [-1] * C
        for c, j in adc.context(step_of, i, patch, extent):
            row[c] = linear(j, grid)
        slots.append(row)
    if schedule == "sequential":
        waves = [[i] for i in range(len(order))]
    else:
        step_lin = {lin: step_of[p] for lin, p in order_of_linear.items()}
        by_wave: dict = {}
        for i, w in enumerate(wave_numbers(slots, step_lin)):
            by_wave.setdefault(w, []).append(i)
        cap = max_lanes or len(order) or 1
        waves = [steps[a:a + cap] for w in sorted(by_wave) for steps in [by_wave[w]]
                 for a in range(0, len(steps), cap)]
    wave_of = [0] * len(order)
    for w, steps in enumerate(waves):
        for i in steps:
            wave_of[i] = w
    last_wave = {j: wave_of[step_of[j]] for j in order}
    for i, row in enumerate(slots):           # a later step may run in an earlier wave: take the max
        for lin in row:
            if lin >= 0:
                j = order_of_linear[lin]
                last_wave[j] = max(last_wave[j], wave_of[i])
    freed = [[] for _ in waves]
    for j in order:               # after the last wave that selects j (its own wave if none does)
        freed[last_wave[j]].append(linear(j, grid))
    live, n = [], 0
    for w, steps in enumerate(waves):
        n += len(steps)
        live.append(n)
        n -= len(freed[w])
    return Plan(order=order, grid=tuple(grid), extent=tuple(extent), slots=slots, freed=freed, live=live,
                waves=waves, schedule=schedule)


class PoolTooLarge(MemoryError):
    """The NCP pool asked for does not fit the device: raised before any work, with the numbers."""


def available_bytes(device) -> int:
    """Memory a new pool may take: free CUDA memory, or MemAvailable on the host; capped by the
    NUWA_FAST_MAX_POOL_BYTES environment variable when it is set."""
    import os
    cap = os.environ.get("NUWA_FAST_MAX_POOL_BYTES")
    device = torch.device(device)
    if device.type == "cuda":
        avail = torch.cuda.mem_get_info(device)[0]
    else:
        avail = 1 << 62
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
        except OSError:
            pass
    return min(avail, env_bytes("NUWA_FAST_MAX_POOL_BYTES", cap)) if cap else avail


def env_bytes(name: str, value: str) -> int:
    from .errors import BadArgument
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise BadArgument(f"environment variable {name}={value!r} must be a whole number of bytes "
                          f"(e.g. {name}=8000000000), or unset it")
    return n


def _human(n: int) -> str:
    return human_bytes(n)


def default_pool_dtype(model_dtype, device, requested=None):
    """The page pool's dtype: `requested` when given (e.g. torch.float32 for fp32 pages), else bf16 on a
    GPU (every decode row reads its context pages: bf16 halves those bytes against an fp32 model) and
    the model's dtype on a CPU (the torch reference path)."""
    if requested is not None:
        return requested
    return torch.bfloat16 if torch.device(device).type == "cuda" else model_dtype


class PageShape(NamedTuple):
    """What fixes a page's size (a NuwaConfig has the same fields)."""
    layers: int
    heads: int
    P: int
    head_dim: int


def page_bytes(cfg, dtype) -> int:
    """Bytes of one page of one sample: every layer's keys and values of P tokens,
    layers * 2 * heads * P * head_dim elements. cfg: a NuwaConfig (or anything with layers, heads,
    P, head_dim); dtype: a torch dtype or its element size in bytes."""
    size = dtype if isinstance(dtype, int) else torch.empty((), dtype=dtype).element_size()
    return cfg.layers * 2 * cfg.heads * cfg.P * cfg.head_dim * size


def check_pool_fits(n_pages, batch, cfg, dtype, device) -> int:
    """Bytes the pool needs; raises PoolTooLarge naming the numbers when they do not fit."""
    page = page_bytes(cfg, dtype)
    need = n_pages * batch * page
    avail = available_bytes(device)
    if need > avail:
        fit = avail // (page * batch)
        raise PoolTooLarge(
            f"the Nearby Context Pool needs {n_pages} pages x {batch} samples x {_human(page)} = "
            f"{_human(need)} on {device}, but {_human(avail)} is available: at most {fit} "
            f"pages fit. Use a smaller batch, a narrower canvas (in 'down'/'up' order the pages grow with "
            f"the width: about e_h x width-in-patches), the order that runs along the short side, or a "
            f"smaller extent")
    return need


class PagePool:
    """Preallocated pages [G * B, layers, 2, heads, P, head_dim] plus device tables.

    G logical pages are shared by B lockstep samples: logical page g of sample b is physical page
    g * B + b. Tables: page_index [N + 1] (patch -> logical page, -1; entry N is scratch),
    free_stack [G + 1] with free_top [1] (a stack of free logical pages; last entry scratch).
    """

    def __init__(self, n_pages, batch, layers, heads, P, head_dim, n_patches, dtype, device, backend=None,
                 spare: int = 0):
        """spare: physical pages past the G * B of the pool, never on the free list (the own pages of
        the padding lanes of a bucketed wave: written, never read by a real lane)."""
        self.G, self.B = int(n_pages), int(batch)
        self.backend = backend
        self.device = torch.device(device)
        check_pool_fits(self.G + -(-int(spare) // self.B), self.B, PageShape(layers, heads, P, head_dim), dtype,
                        device)
        self.pages = torch.empty(self.G * self.B + int(spare), layers, 2, heads, P, head_dim, dtype=dtype,
                                 device=device)
        self.page_index = torch.full((n_patches + 1,), -1, dtype=torch.int32, device=device)
        self.free_stack = torch.zeros(self.G + 1, dtype=torch.int32, device=device)
        self.free_stack[: self.G] = torch.arange(self.G - 1, -1, -1, dtype=torch.int32, device=device)
        self.free_top = torch.full((1,), self.G, dtype=torch.int32, device=device)
        self.peak = torch.zeros(1, dtype=torch.int32, device=device)  # max pages in use, on device

    @property
    def nbytes(self) -> int:
        return self.pages.numel() * self.pages.element_size()

    def layer_kv(self, layer):
        """k_cache, v_cache views [G*B, heads, P, head_dim] of one layer (strided)."""
        return self.pages[:, layer, 0], self.pages[:, layer, 1]

    def select(self, cur, grid, extent):
        return ops.ncp_select(self.page_index, cur, grid, extent, self.B, backend=self.backend)

    def add(self, cur):
        """Allocate the current patch's page; returns own physical pages [B] int32."""
        logical = ops.ncp_add(self.page_index, self.free_stack, self.free_top, cur, backend=self.backend)
        torch.maximum(self.peak, self.G - self.free_top, out=self.peak)
        b = torch.arange(self.B, dtype=torch.int32, device=self.device)
        return logical * self.B + b

    def remove(self, patches):
        ops.ncp_remove(self.page_index, self.free_stack, self.free_top, patches, backend=self.backend)

    def in_use(self) -> int:
        return self.G - int(self.free_top.item())
