"""The scheduler: the one owner of the NCP cycle, wave by wave.

    for each wave of the plan (ncp.plan(..., schedule)):
        for each group of its lanes (given patches: prefill; the others: decode P+1 rows):
            select the context pages of every lane, add its own page
            run the group in one batched step (lane = sample x patch)
            write the tokens out
        remove the pages no later wave selects

A lane's context is exactly its sequential one: a wave only holds patches whose whole selection is
finished in earlier waves, and no two patches of a wave lie inside each other's extent (one would
select the other), so selecting lane by lane on the device tables sees only finished pages.
"""
from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass

import numpy as np
import torch

from . import ncp, nvtx, ops, runtime


class PatchKind(enum.IntEnum):
    FREE = 0             # every token sampled
    PARTLY_KNOWN = 1     # decoded row by row; the known rows are forced
    GIVEN = 2            # all P tokens known: prefilled in one pass


@dataclass
class Group:
    """Lanes of one wave that run as one batched step."""
    kind: str                            # "prefill" | "decode"
    steps: list                          # indices in the order, ascending
    offset: int                          # where `steps` start in Scheduler.lane_steps
    bucket: int                          # lanes the step runs (>= len(steps); the rest pad)


def bucket_sizes(widest: int) -> list:
    """Lane counts a CUDA graph is captured for: powers of two below the widest group, and it."""
    out, b = [], 1
    while b < widest:
        out.append(b)
        b *= 2
    return out + [max(widest, 1)]


class Scheduler:
    def __init__(self, sh, step, rows, plan, kinds: np.ndarray, n: int, buckets: bool):
        self.sh, self.step, self.rows, self.plan = sh, step, rows, plan
        self.n = n
        sizes = bucket_sizes(sh.K) if buckets else None
        self.waves, flat, freed = [], [], []
        added = {ncp.linear(plan.order[i], plan.grid) for i in range(n)}     # pages that will exist
        for w, steps in enumerate(plan.waves):
            steps = [i for i in steps if i < n]                        # max_patches: the steps run
            if not steps:
                continue
            groups = []
            for kind, sel in (("prefill", [i for i in steps if kinds[i] == PatchKind.GIVEN]),
                              ("decode", [i for i in steps if kinds[i] != PatchKind.GIVEN])):
                if sel:
                    nb = len(sel) if sizes is None else next(b for b in sizes if b >= len(sel))
                    groups.append(Group(kind, sel, len(flat), nb))
                    flat += sel
            self.waves.append(groups)
            freed.append([j for j in plan.freed[w] if j in added])
        dev = sh.dev
        self.lane_steps = torch.tensor(flat or [0], dtype=torch.long, device=dev)     # [n] steps, wave order
        F = max((len(f) for f in freed), default=1) or 1
        fr = torch.full((max(len(freed), 1), F), -1, dtype=torch.int32)
        for w, f in enumerate(freed):
            fr[w, :len(f)] = torch.tensor(f, dtype=torch.int32)
        self.freed = fr.to(dev)                                                      # [waves, F]

    def buckets(self, kind: str) -> list:
        return sorted({g.bucket for groups in self.waves for g in groups if g.kind == kind})

    @property
    def lanes_run(self) -> int:
        return sum(len(g.steps) for groups in self.waves for g in groups)

    def select_add(self, g: Group):
        """NCP select then add, lane by lane, into the static page table / own pages of the group."""
        sh = self.sh
        pool, Bt = sh.pool, sh.Bt
        for k, i in enumerate(g.steps):
            cur = sh.cur_ids[i:i + 1]
            ops.ncp_select(pool.page_index, cur, sh.spec.grid, sh.extent, Bt, out=sh.page_table[k * Bt:(k + 1) * Bt],
                           backend=sh.backend)
            sh.own[k * Bt:(k + 1) * Bt].copy_(pool.add(cur))
        a, b = len(g.steps) * Bt, g.bucket * Bt
        if b > a:                                                      # padding lanes: no context, spare pages
            sh.page_table[a:b].fill_(-1)
            sh.own[a:b].copy_(sh.pad_own[a:b])

    def run_group(self, g: Group):
        sh, rows = self.sh, self.rows
        steps = self.lane_steps[g.offset:g.offset + len(g.steps)]
        # A step with its own CPU thread pool (the fused row step): torch's threads stay out of its way
        # for the group, except for a prefill, which is torch's work.
        own = self.step.owns_cpu_threads
        with runtime.torch_threads(1) if own else contextlib.nullcontext(torch.get_num_threads()) as threads:
            with nvtx.range("select+add+gather"):
                self.select_add(g)
                sh.load_lanes(steps, g.bucket)
                self.step.begin_group(steps)
            if g.kind == "prefill":
                with nvtx.range("prefill"), runtime.torch_threads(threads):
                    rows.prefill(g.bucket)
            else:
                with nvtx.range("decode"):
                    for s in range(sh.P + 1):
                        with nvtx.range(f"row {s}"):
                            rows.row(s, g.bucket)
            with nvtx.range("write-back"):
                self.step.end_group()
                sh.write_out(steps)

    def run(self, on_wave=None):
        """The patch loop. on_wave(steps) after each wave, with the order indices it wrote (progress, callbacks, timings)."""
        for w, groups in enumerate(self.waves):
            with nvtx.range(f"wave {w} ({sum(len(g.steps) for g in groups)} lanes)"):
                for g in groups:
                    self.run_group(g)
                with nvtx.range("remove"):
                    self.sh.pool.remove(self.freed[w])
            if on_wave is not None:
                on_wave([i for g in groups for i in g.steps])
