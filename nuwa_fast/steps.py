"""The engine's static state and its fixed-shape functions: the per-row decode step and the prefill.

Shared      buffers every mode uses: the page pool and its device tables, the text keys/values, the
            token buffer of the current patch, the step/row indices as device tensors, the known
            tokens of every step. Built once per run, before the loop (the run's only host -> device
            copies).
PagedStep   "paged": each row writes its keys/values into its own page in place and calls
            ops.patch_attention on the pool (layers.PagedKV; q_start is an int there, so one
            function per row index).
StaticStep  (nuwa_fast.gathered) "gathered" / "sdpa" / "flex": once per patch the selected context
            pages are copied out of the pool into a static key/value buffer; every row then reads it
            with the row index as a device tensor (one function for all rows), and the own keys are
            written back to the pool after the patch.
GraphedStep runs either step eagerly, or, on CUDA, warms each function up once and captures it as a
            CUDA graph before the loop; the loop then only replays.
Both steps run the model's own layers (model.DecoderLayer): a step only chooses where the
self-attention reads its keys and values (the `kv` source of nuwa_fast.layers).

Nothing here reads a device value on the host: no .item(), no tensor-valued Python indexing, no
boolean masks (index_select / index_copy_ / torch.where with device indices only).
"""
from __future__ import annotations

import time

import torch

from . import adc, ncp
from .layers import PagedKV, op_range
from .model import Placement, Where
from .sampling import sample


class Shared:
    """Static state of a run. Rows are lane-major: lane k (one patch of the current wave) owns rows
    k*Bt .. k*Bt+Bt-1, its Bt samples (2B with guidance: B conditional, then B unconditional). Buffers
    hold K lanes (the widest group of the schedule); a group of nb lanes uses the first nb*Bt rows."""

    def __init__(self, model, spec, plan, extent, sampling, seed, backend, pool_dtype, known, kmask, n,
                 lanes: int = 1, spare_lane: bool = False):
        cfg, dec = model.cfg, model.decoder
        dev = model.device
        self.dec, self.dev, self.spec, self.plan, self.extent, self.n = dec, dev, spec, plan, extent, n
        self.p, self.P, self.L, self.H, self.D = cfg.patch, cfg.P, cfg.layers, cfg.heads, cfg.head_dim
        self.B = spec.batch
        self.guided = sampling.guidance != 1.0
        self.Bt = 2 * self.B if self.guided else self.B
        self.sampling, self.seed, self.backend = sampling, seed, backend
        T, Hg, Wg = spec.grid
        P, Bt = self.P, self.Bt
        self.K = K = max(int(lanes), 1)
        self.R = R = K * Bt
        self.nb = K                                                       # lanes of the current group
        self.bias = dec.adc_bias[:, adc.bias_rows(extent, cfg.extent), :].float()    # [L, C, H] ADC gather
        self.C = self.bias.shape[1]
        self.own_rel = adc.rel_index((0, 0, 0), extent)
        self.pool = ncp.PagePool(plan.peak_pages, Bt, self.L, self.H, P, self.D, T * Hg * Wg,
                                 ncp.default_pool_dtype(dec.start.dtype, dev, pool_dtype), dev, backend=backend,
                                 spare=Bt if spare_lane else 0)
        text = model.encode_text(list(spec.prompts) + ([""] * self.B if self.guided else []))
        self.text = [(tk.repeat(K, 1, 1, 1), tv.repeat(K, 1, 1, 1), m.repeat(K, 1)) for tk, tv, m in text]
        self._views: dict = {}
        self.cur_ids = torch.tensor([ncp.linear(o, spec.grid) for o in spec.order[:n]] or [0], dtype=torch.int32,
                                    device=dev)                                          # [n] per step
        Wt = Wg * self.p                                                  # out: [B, T, Hg*p, Wt]
        r = torch.arange(P)
        self.out_idx = torch.tensor([[((t * Hg * self.p) + y * self.p) * Wt + x * self.p for t, y, x in spec.order[:n]]
                                     or [[0]]]).view(-1, 1) + (r // self.p * Wt + r % self.p)[None]   # [n, P]
        self.out_idx = self.out_idx.to(dev)
        self.out = torch.zeros(self.B, T, Hg * self.p, Wt, dtype=torch.long, device=dev)
        # static per-lane state, read by the captured functions
        self.buf = torch.zeros(R, P + 1, dtype=torch.long, device=dev)    # tokens; column P is scratch
        self.lane_steps = torch.zeros(K, dtype=torch.long, device=dev)    # step (index in the order) per lane
        self.sample_ids = torch.arange(self.B, device=dev).repeat(K)     # [K*B] sampler's sample id per row
        self.sample_steps = torch.zeros(K * self.B, dtype=torch.long, device=dev)   # [K*B] step per row
        self.row_t = torch.zeros((), dtype=torch.long, device=dev)        # current row (static modes)
        self.rows_t = torch.arange(P + 1, device=dev)                     # rows_t[s]: row s as a device scalar
        self.page_table = torch.full((R, self.C), -1, dtype=torch.int32, device=dev)   # [R, C]
        self.own = torch.arange(R, dtype=torch.int32, device=dev)         # [R] own physical pages
        G = plan.peak_pages
        self.pad_own = (G * Bt + torch.arange(R, device=dev) % Bt).to(torch.int32)     # padding lanes' pages
        self.placed = self.where_tab = None
        if cfg.rope or cfg.layout:            # per-step placement; static per-row Placement buffers (graphs)
            yx = torch.tensor([[y, x] for _, y, x in spec.order[:n]] or [[0, 0]], dtype=torch.long)   # [n, 2]
            dirs = torch.tensor(list(spec.directions[:n]) if spec.directions else [0] * len(yx), dtype=torch.long)
            self.where_tab = Where(yx.to(dev), ((yx[:, 0].float() + 0.5) / Hg).to(dev), dirs.to(dev))
            pl = dec.place(self._where(self.lane_steps))
            self.placed = Placement(None if pl.add is None else pl.add.clone(),
                                    None if pl.rope is None else tuple(t.clone() for t in pl.rope))
        self.known = self.kmask = None
        if known is not None:
            self.known = torch.from_numpy(known).to(dev)                  # [n, P+1]
            self.kmask = torch.from_numpy(kmask).to(dev)
            self.known_rows = torch.zeros(K, P + 1, dtype=torch.long, device=dev)    # [K, P+1] per lane
            self.kmask_rows = torch.zeros(K, P + 1, dtype=torch.bool, device=dev)

    def _where(self, steps) -> Where:
        """Where of every row of the lanes running `steps` [nb] (device), repeated over the Bt samples."""
        w, Bt = self.where_tab, self.Bt
        return Where(w.yx.index_select(0, steps).repeat_interleave(Bt, 0),
                     w.vfrac.index_select(0, steps).repeat_interleave(Bt, 0),
                     w.direction.index_select(0, steps).repeat_interleave(Bt, 0))

    def views(self, nb: int):
        """(text, placement) views of the first nb lanes' rows, made once per lane count."""
        if nb not in self._views:
            nr = nb * self.Bt
            text = [(tk[:nr], tv[:nr], m[:nr]) for tk, tv, m in self.text]
            pl = self.placed
            if pl is not None:
                pl = Placement(None if pl.add is None else pl.add[:nr],
                               None if pl.rope is None else tuple(t[:nr] for t in pl.rope))
            self._views[nb] = (text, pl)
        return self._views[nb]

    def load_lanes(self, steps, nb: int):
        """Per-lane state of a group: steps [nl] (device long, nl <= nb) are its patches; lanes nl..nb-1
        pad a bucket (they repeat lane 0's patch, with an empty page table and a spare own page)."""
        nl = steps.shape[0]
        if nb > nl:
            steps = torch.cat([steps, steps[:1].expand(nb - nl)])
        self.nb = nb
        self.lane_steps[:nb].copy_(steps)
        self.sample_steps[:nb * self.B].copy_(steps.repeat_interleave(self.B))
        if self.placed is not None:
            pl = self.dec.place(self._where(steps))
            nr = nb * self.Bt
            if pl.add is not None:
                self.placed.add[:nr].copy_(pl.add)
            if pl.rope is not None:
                for dst, src in zip(self.placed.rope, pl.rope):
                    dst[:nr].copy_(src)
        if self.known is not None:
            self.known_rows[:nb].copy_(self.known.index_select(0, steps))
            self.kmask_rows[:nb].copy_(self.kmask.index_select(0, steps))

    def pick(self, logits, row):
        """Sample row `row` (device scalar) of every lane from logits [nb*Bt, V], force known tokens,
        write the buffer. Noise is keyed by (seed, sample, step, row): lanes never enter it."""
        nb, B, Bt = self.nb, self.B, self.Bt
        with op_range("sample"):
            lg = logits.view(nb, Bt, -1)
            if self.guided:
                cond, uncond = lg[:, :B].float(), lg[:, B:].float()
                lg = uncond + self.sampling.guidance * (cond - uncond)                  # [nb, B, V]
            lg = lg.reshape(nb * B, -1)
            tok = sample(lg, self.sampling, self.seed, self.sample_ids[:nb * B], self.sample_steps[:nb * B],
                         row).view(nb, B)
            r = row.view(1)
            if self.known is not None:
                tok = torch.where(self.kmask_rows[:nb].index_select(1, r), self.known_rows[:nb].index_select(1, r),
                                  tok)
            self.buf[:nb * Bt].index_copy_(1, r, tok.repeat(1, Bt // B).view(nb * Bt, 1))

    def load_known_patch(self):
        nb = self.nb
        self.buf[:nb * self.Bt, :self.P].copy_(self.known_rows[:nb, :self.P].repeat_interleave(self.Bt, 0))

    def write_out(self, steps):
        """Tokens of the real lanes (steps [nl], device) into the output canvas [B, T, h, w]."""
        nl, B, P = steps.shape[0], self.B, self.P
        tok = self.buf[:nl * self.Bt].view(nl, self.Bt, P + 1)[:, :B, :P]                # [nl, B, P]
        self.out.view(B, -1).index_copy_(1, self.out_idx.index_select(0, steps).view(-1),
                                         tok.transpose(0, 1).reshape(B, nl * P))


class PagedStep:
    """Every row: the decoder's layers with layers.PagedKV, the pool read by ops.patch_attention."""
    per_row = True
    compiled = False                   # the paged step runs eagerly (or as CUDA graphs)
    owns_cpu_threads = False           # torch runs its work

    def __init__(self, sh: Shared):
        self.sh = sh
        self.staging_bytes = 0
        self._kv: dict = {}

    def begin_group(self, steps):
        pass

    def end_group(self):
        pass

    def kv(self, nb: int) -> PagedKV:
        """The pool source of the first nb lanes' rows, made once per lane count."""
        if nb not in self._kv:
            sh, nr = self.sh, nb * self.sh.Bt
            self._kv[nb] = PagedKV(sh.pool, sh.page_table[:nr], sh.own[:nr], sh.bias, sh.own_rel, sh.backend)
        return self._kv[nb]

    def row_fn(self, s: int, nb: int):
        sh = self.sh
        text, placed = sh.views(nb)
        logits = sh.dec(sh.buf[:nb * sh.Bt], s, 1, self.kv(nb), text, logits=s < sh.P, where=placed)
        if s < sh.P:
            sh.pick(logits[:, 0], sh.rows_t[s])

    def prefill_fn(self, nb: int):
        sh = self.sh
        sh.load_known_patch()
        text, placed = sh.views(nb)
        sh.dec(sh.buf[:nb * sh.Bt], 1, sh.P, self.kv(nb), text, logits=False, where=placed)


class GraphedStep:
    """Runs a step's functions eagerly, or replays CUDA graphs captured by prepare(), one per lane-count
    bucket (and, for the paged step, per row index)."""

    def __init__(self, step, graphs: bool):
        self.step, self.graphs = step, graphs
        self.row_graphs, self.prefill_graphs = {}, {}

    def prepare(self, prefill_buckets=(), decode_buckets=()) -> float:
        """Warm every function up once (autotuning, cuBLAS workspaces, torch.compile) and capture it.
        Runs before the loop on the initial buffers (empty page table), whose contents the loop
        overwrites. On CUDA without graphs it still warms up (autotuning synchronises with the host)."""
        step, sh = self.step, self.step.sh
        if sh.dev.type != "cuda":
            return 0.0
        t0 = time.perf_counter()
        todo = []
        for nb in decode_buckets:
            rows = range(sh.P + 1) if step.per_row else [None]
            todo += [((nb, s), (lambda s=s, nb=nb: step.row_fn(s, nb))) for s in rows]
        for nb in prefill_buckets:
            todo.append((("prefill", nb), (lambda nb=nb: step.prefill_fn(nb))))
        if not self.graphs:
            for _, fn in todo[:1] + todo[-1:]:
                fn()
            torch.cuda.synchronize(sh.dev)
            return time.perf_counter() - t0
        side = torch.cuda.Stream(device=sh.dev)
        side.wait_stream(torch.cuda.current_stream(sh.dev))
        with torch.cuda.stream(side):
            for _, fn in todo:
                fn()
        torch.cuda.current_stream(sh.dev).wait_stream(side)
        mempool = torch.cuda.graph_pool_handle()
        for key, fn in todo:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=mempool):
                fn()
            if key[0] == "prefill":
                self.prefill_graphs[key[1]] = g
            else:
                self.row_graphs[key] = g
        torch.cuda.synchronize(sh.dev)
        return time.perf_counter() - t0

    def row(self, s: int, nb: int):
        step = self.step
        if not step.per_row:
            step.sh.row_t.fill_(s)
        g = self.row_graphs.get((nb, s if step.per_row else None))
        if g is not None:
            g.replay()
        else:
            step.row_fn(s, nb)

    def prefill(self, nb: int):
        g = self.prefill_graphs.get(nb)
        if g is not None:
            g.replay()
        else:
            self.step.prefill_fn(nb)
