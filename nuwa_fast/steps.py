"""The engine's static state and its two fixed-shape functions: the per-row decode step and the prefill.

Shared      buffers every mode uses: the page pool and its device tables, the text keys/values, the
            token buffer of the current patch, the step/row indices as device tensors, the known
            tokens of every step. Built once per run, before the loop (the run's only host -> device
            copies).
PagedStep   "paged": each row writes its keys/values into its own page in place and calls
            ops.patch_attention on the pool (q_start is an int there, so one function per row index).
StaticStep  "gathered" / "sdpa" / "flex": once per patch the selected context pages are copied out of
            the pool into a static key/value buffer; every row then reads it with the row index as a
            device tensor (one function for all rows), and the own keys are written back to the pool
            after the patch.
GraphedStep runs either step eagerly, or, on CUDA, warms each function up once and captures it as a
            CUDA graph before the loop; the loop then only replays.

Nothing here reads a device value on the host: no .item(), no tensor-valued Python indexing, no
boolean masks (index_select / index_copy_ / torch.where with device indices only).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings

import torch
import torch.nn.functional as F

from . import adc, ncp, nvtx, ops
from .model import Placement, Where, apply_rope
from .sampling import guide, sample

NEG_INF = float("-inf")


def _op_range(name):
    """Per-op profiler range, only in eager code (not while torch.compile traces)."""
    if nvtx.enabled() and not torch.compiler.is_compiling():
        return nvtx.range(name)
    return contextlib.nullcontext()


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
        with _op_range("sample"):
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
    """Every row: write k/v into the own pages in place, ops.patch_attention over the pool."""
    per_row = True

    def __init__(self, sh: Shared):
        self.sh = sh
        self.staging_bytes = 0

    def begin_group(self, steps):
        pass

    def end_group(self):
        pass

    def _attend(self, l, q, k, v, q_start):
        sh = self.sh
        nr = q.shape[0]
        pages, own = sh.pool.pages, sh.own[:nr]
        m0 = 1 if q_start == 0 else 0                                    # row 0 (start) has no key
        if k.shape[2] > m0:
            s0 = q_start + m0 - 1
            ol = own.long()
            pages[ol, l, 0, :, s0:s0 + k.shape[2] - m0] = k[:, :, m0:].to(pages.dtype)
            pages[ol, l, 1, :, s0:s0 + k.shape[2] - m0] = v[:, :, m0:].to(pages.dtype)
        kc, vc = sh.pool.layer_kv(l)
        layer = sh.dec.layers[l]
        with _op_range(f"patch_attention L{l}"):
            return ops.patch_attention(q.to(kc.dtype), kc, vc, sh.page_table[:nr], own, q_start, sh.bias[l],
                                       sh.own_rel, layer.null_k.to(kc.dtype), layer.null_v.to(kc.dtype),
                                       sh.dec.scale, backend=sh.backend).to(q.dtype)

    def row_fn(self, s: int, nb: int):
        sh = self.sh
        text, placed = sh.views(nb)
        logits = sh.dec(sh.buf[:nb * sh.Bt], s, 1, self._attend, text, logits=s < sh.P, where=placed)
        if s < sh.P:
            sh.pick(logits[:, 0], sh.rows_t[s])

    def prefill_fn(self, nb: int):
        sh = self.sh
        sh.load_known_patch()
        text, placed = sh.views(nb)
        sh.dec(sh.buf[:nb * sh.Bt], 1, sh.P, self._attend, text, logits=False, where=placed)


class StaticStep:
    """Gathered context in a static [context | own | null] key/value buffer; one function for all rows.

    Buffer layout per layer and row (K and V alike); a page takes Pb key positions (Pb = P; flex: P
    rounded up to 16, the smallest block FlexAttention's kernels take, the tail masked):
        [0, nc)                nc = n_max * Pb: the context pages, the valid slots of the lane's step
                               first (slot order), then padding (zero keys, bias -inf). n_max = the
                               most context pages any step of the plan has, so the shapes never change.
        [own_off, +Pb)         the own page: row s writes key s-1 in place; causal mask in the bias
        [null_off, Ntot)       the null key (1 position; flex: one page block, so blocks stay aligned)
    kbias [L, R, H, Ntot] fp32 holds the ADC bias of every key of every row (-inf = not visible).
    Nothing ever writes the padding positions, so they stay zero keys with bias -inf.
    """
    per_row = False

    def __init__(self, sh: Shared, mode: str, compile_step: bool = False):
        self.sh, self.mode = sh, mode
        dec, dev = sh.dec, sh.dev
        L, H, D, P, R = sh.L, sh.H, sh.D, sh.P, sh.R
        slots = [[c for c, j in enumerate(row) if j >= 0] for row in sh.plan.slots]
        self.n_max = max((len(s) for s in slots), default=0)   # whole plan: max_patches keeps the shapes
        slots = slots[:max(sh.n, 1)]
        pad = sh.own_rel                           # the own slot is empty at select time (select runs before add)
        idx = [s + [pad] * (self.n_max - len(s)) for s in slots]
        self.slot_idx = torch.tensor(idx, dtype=torch.long, device=dev).view(len(idx), self.n_max)   # [n, n_max]
        self.Pb = Pb = -(-P // 16) * 16 if mode == "flex" else P
        self.nc = self.n_max * Pb
        self.own_off, self.null_off = self.nc, self.nc + Pb
        self.Ntot = self.null_off + (Pb if mode == "flex" else 1)
        dtype = dec.start.dtype
        # one tensor per layer and K/V (not views of one): torch.compile then mutates them in place
        self.kv = [tuple(torch.zeros(R, H, self.Ntot, D, dtype=dtype, device=dev) for _ in range(2))
                   for _ in range(L)]                                                  # L x 2 x [R, H, Ntot, D]
        for lay, (K, V) in zip(dec.layers, self.kv):
            K[:, :, self.null_off] = lay.null_k.to(dtype)
            V[:, :, self.null_off] = lay.null_v.to(dtype)
        self.own_b = sh.bias[:, sh.own_rel, :].contiguous()                           # [L, H]
        self.kbias = torch.full((L, R, H, self.Ntot), NEG_INF, device=dev)
        self.kbias[..., self.own_off:self.own_off + P] = self.own_b[:, None, :, None]
        self.kbias[..., self.null_off] = 0.0
        vis = torch.arange(P, device=dev)[None, :] < torch.arange(P + 1, device=dev)[:, None]
        self.causal = torch.zeros(P + 1, P, device=dev).masked_fill(~vis, NEG_INF)      # [P+1, P] row s: keys < s
        cfg = dec.cfg
        self.pos = (dec.pos_y[:, None, :] + dec.pos_x[None, :, :]).reshape(cfg.patch * cfg.patch, -1)  # [P, W]
        self.lin = _row_linears(dec, transpose=dev.type == "cpu")
        self.staging_bytes = 2 * L * self.kv[0][0].numel() * self.kv[0][0].element_size() + self.kbias.numel() * 4
        if mode == "flex":
            self._init_flex()
        if compile_step:               # automatic dynamic: one recompile per new shape or seed, then general
            self._row = torch.compile(self._row)
            self._prefill = torch.compile(self._prefill)

    # ---- per group of lanes (eager: a handful of launches) ---------------------------------------------
    def begin_group(self, steps):
        """Gather the context pages of every lane (the scheduler has selected them into page_table)."""
        sh = self.sh
        if not self.n_max:
            return
        L, H, D, P, Pb, n = sh.L, sh.H, sh.D, sh.P, self.Pb, self.n_max
        nr = sh.nb * sh.Bt
        idx = self.slot_idx.index_select(0, sh.lane_steps[:sh.nb]).repeat_interleave(sh.Bt, 0)   # [nr, n]
        pages = sh.page_table[:nr].gather(1, idx)                                      # [nr, n] int32
        valid = pages >= 0                                                             # [nr, n]
        src = sh.pool.pages.index_select(0, pages.clamp(min=0).view(-1).long())        # [nr*n, L, 2, H, P, D]
        src = src.view(nr, n, L, 2, H, P, D).permute(2, 3, 0, 4, 1, 5, 6)              # [L, 2, nr, H, n, P, D]
        for l in range(L):
            for j in range(2):
                ctx = self.kv[l][j][:nr, :, :self.nc].unflatten(2, (n, Pb))[:, :, :, :P]   # [nr, H, n, P, D] view
                ctx.copy_(src[l, j])
                ctx.masked_fill_(~valid[:, None, :, None, None], 0.0)  # unused pages may hold NaN: never let it in
        b = sh.bias[:, idx]                                                            # [L, nr, n, H]
        b = b.masked_fill(~valid[None, :, :, None], NEG_INF).permute(0, 1, 3, 2)        # [L, nr, H, n]
        self.kbias[:, :nr, :, :self.nc].unflatten(3, (n, Pb))[..., :P].copy_(b[..., None].expand(L, nr, H, n, P))
        if self.mode == "flex":
            self.key_ok[:nr, :self.nc].unflatten(1, (n, Pb))[..., :P].copy_(valid[..., None].expand(nr, n, P))
            self.full_num[:nr].copy_(valid.sum(1).view(nr, 1, 1))
            self.full_num_p[:nr].copy_(self.full_num[:nr].expand(nr, 1, self.full_num_p.shape[2]))

    def end_group(self):
        """Write the own keys/values of every lane back to its page."""
        sh = self.sh
        nr = sh.nb * sh.Bt
        o = slice(self.own_off, self.own_off + sh.P)
        own_kv = torch.stack([torch.stack([K[:nr, :, o], V[:nr, :, o]], 1) for K, V in self.kv], 1)  # [nr, L, 2, H, P, D]
        sh.pool.pages.index_copy_(0, sh.own[:nr].long(), own_kv.to(sh.pool.pages.dtype))

    # ---- the captured functions ------------------------------------------------------------------------
    def row_fn(self, s, nb: int):
        self._row(nb)

    def prefill_fn(self, nb: int):
        self._prefill(nb)

    def _row(self, nb: int):
        sh, dec = self.sh, self.sh.dec
        nr = nb * sh.Bt
        row = sh.row_t
        r = row.view(1)
        if self.mode != "flex":                        # own keys < row visible (flex: in mask_mod)
            self.kbias[:, :nr, :, self.own_off:self.own_off + sh.P] = \
                (self.own_b[:, :, None] + self.causal.index_select(0, r))[:, None]      # [L, 1, H, P]
        prev = (row - 1).clamp(min=0).view(1)
        e = dec.tok(sh.buf[:nr].index_select(1, prev)) + self.pos.index_select(0, prev)  # [nr, 1, W]
        x = torch.where(row == 0, dec.start.view(1, 1, -1), e)
        text, placed = sh.views(nb)
        rope = None
        if placed is not None:
            if placed.add is not None:
                x = x + placed.add
            if placed.rope is not None:
                rope = tuple(t.index_select(2, r) for t in placed.rope)                # 4 x [nr, 1, 1, D/2]
        for l in range(sh.L):
            x = self._layer(x, l, row, self._attend_row, text, rope)
        logits = self.lin["head"](dec.ln_f(x))[:, 0]                                   # [nr, V]
        sh.pick(logits, row)

    def _layer(self, x, l, q_start, attend, text, rope=None):
        """DecoderLayer.forward (nuwa_fast.model) with the row-step linears of `self.lin`."""
        layer, sh = self.sh.dec.layers[l], self.sh
        Bq, M, W = x.shape
        qkv = self.lin[l, "qkv"](layer.ln1(x)).view(Bq, M, 3, sh.H, sh.D)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))                     # 3 x [nr, H, M, D]
        if rope is not None:
            q, k = apply_rope(q, rope[0], rope[1]), apply_rope(k, rope[2], rope[3])
        a = attend(l, q, k, v, q_start)                                                # [nr, H, M, D]
        x = x + layer.proj(a.transpose(1, 2).reshape(Bq, M, W))
        tk, tv, tmask = text[l]
        cross = layer.cross
        cq = cross.q(layer.ln2(x)).view(Bq, M, sh.H, sh.D).transpose(1, 2)
        co = F.scaled_dot_product_attention(cq, tk, tv, attn_mask=tmask[:, None, None, :])
        x = x + cross.proj(co.transpose(1, 2).reshape(Bq, M, W))
        fc1, act, fc2 = layer.mlp
        return x + fc2(act(self.lin[l, "fc1"](layer.ln3(x))))

    def _attend_row(self, l, q, k, v, row):
        nr = q.shape[0]
        pos = (row - 1).clamp(min=0).view(1) + self.own_off      # row 0's key lands in slot 0, masked, then overwritten
        K, V = self.kv[l][0][:nr], self.kv[l][1][:nr]                                  # [nr, H, Ntot, D]
        K.index_copy_(2, pos, k.to(K.dtype))
        V.index_copy_(2, pos, v.to(V.dtype))
        return self._attention(l, q, K, V, self.kbias[l][:nr, :, None, :], decode=True)

    def _prefill(self, nb: int):
        sh, dec = self.sh, self.sh.dec
        nr = nb * sh.Bt
        sh.load_known_patch()
        mp = self.kbias[:, :nr, :, None, :]                                            # flex: causal in mask_mod
        if self.mode != "flex":
            mp = mp.repeat(1, 1, 1, sh.P, 1)                                           # [L, nr, H, P, Ntot]
            mp[..., self.own_off:self.own_off + sh.P] = self.own_b[:, None, :, None, None] + self.causal[1:]

        def attend(l, q, k, v, q_start):
            K, V = self.kv[l][0][:nr], self.kv[l][1][:nr]
            K[:, :, self.own_off:self.own_off + sh.P] = k.to(K.dtype)                   # keys of tokens 0..P-1
            V[:, :, self.own_off:self.own_off + sh.P] = v.to(V.dtype)
            return self._attention(l, q, K, V, mp[l], decode=False)

        text, placed = sh.views(nb)
        x = dec.embed(sh.buf[:nr], 1, sh.P, placed)                                    # rows 1..P
        rope = placed.rows(1, sh.P) if placed is not None else None
        for l in range(sh.L):
            x = self._layer(x, l, 1, attend, text, rope)

    def _attention(self, l, q, K, V, mask, decode):
        with _op_range(f"{self.mode} attention L{l}"):
            return self._attention_impl(l, q, K, V, mask, decode)

    def _attention_impl(self, l, q, K, V, mask, decode):
        scale = self.sh.dec.scale
        if self.mode == "gathered":
            s = torch.matmul(q, K.transpose(-1, -2)) * scale + mask                     # [nr, H, M, Ntot]
            return torch.matmul(torch.softmax(s.float(), dim=-1).to(q.dtype), V)
        if self.mode == "sdpa":
            return F.scaled_dot_product_attention(q, K, V, attn_mask=mask.to(q.dtype), scale=scale)
        bm = self._block_masks(q.shape[0])[0 if decode else 1]
        return self._flex(q, K, V, score_mod=self.score_mods[l], block_mask=bm, scale=scale)

    # ---- FlexAttention: page-aligned blocks [context pages | own | null page] ---------------------------
    def _init_flex(self):
        from torch.nn.attention.flex_attention import flex_attention
        sh, dev, P, R = self.sh, self.sh.dev, self.sh.P, self.sh.R
        own_off, null_off, row_t = self.own_off, self.null_off, sh.row_t
        self.key_ok = torch.zeros(R, self.Ntot, dtype=torch.bool, device=dev)   # per row: context keys + null key
        self.key_ok[:, null_off] = True
        key_ok = self.key_ok

        def mask_dec(b, h, q_idx, kv_idx):
            own = (kv_idx >= own_off) & (kv_idx < null_off)
            return torch.where(own, kv_idx - own_off < row_t, key_ok[b, kv_idx])

        def mask_pre(b, h, q_idx, kv_idx):                       # query q_idx is row q_idx + 1
            own = (kv_idx >= own_off) & (kv_idx < null_off)
            return torch.where(own, kv_idx - own_off <= q_idx, key_ok[b, kv_idx])

        def score_mod_for(kb):
            return lambda score, b, h, q_idx, kv_idx: score + kb[b, h, kv_idx]

        self._mask_mods = (mask_dec, mask_pre)
        self.score_mods = [score_mod_for(self.kbias[l]) for l in range(sh.L)]
        self.QB = 128
        self.n_q = {True: 1, False: math.ceil(P / self.QB)}
        self.full_num = torch.zeros(R, 1, 1, dtype=torch.int32, device=dev)        # valid context pages per row
        self.full_num_p = torch.zeros(R, 1, self.n_q[False], dtype=torch.int32, device=dev)
        self._bms: dict = {}
        if dev.type == "cuda":
            self._flex = _compiled_flex()
        else:
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            self._flex = flex_attention

    def _block_masks(self, nr: int):
        """(decode, prefill) block masks over the first nr rows, built once per row count. Context pages
        are "full" blocks (mask_mod skipped); with Pb > P their tails are still masked by the -inf
        bias that score_mod adds there."""
        if nr not in self._bms:
            from torch.nn.attention.flex_attention import BlockMask
            dev, P, nb = self.sh.dev, self.sh.P, self.n_max + 2
            bms = []
            for decode in (True, False):
                nq = self.n_q[decode]
                full_idx = torch.arange(nb, dtype=torch.int32, device=dev).expand(nr, 1, nq, nb).contiguous()
                part_idx = torch.zeros(nr, 1, nq, nb, dtype=torch.int32, device=dev)
                part_idx[..., 0], part_idx[..., 1] = nb - 2, nb - 1                    # own page, null page
                bms.append(BlockMask.from_kv_blocks(
                    torch.full((nr, 1, nq), 2, dtype=torch.int32, device=dev), part_idx,
                    self.full_num[:nr] if decode else self.full_num_p[:nr], full_idx,
                    BLOCK_SIZE=(self.QB, self.Pb), mask_mod=self._mask_mods[0 if decode else 1],
                    seq_lengths=(1 if decode else P, self.Ntot), compute_q_blocks=False))
            self._bms[nr] = tuple(bms)
        return self._bms[nr]


class _TLinear:
    """y = x @ Wt (+ b) with the weight stored transposed, [in, out] contiguous.

    On the CPU (MKL, one thread) a one-row product against a wide weight [out > in] runs about 3x
    faster this way than F.linear's x @ W.T (measured: 1024x256 fp32, weights not in cache, 33 vs
    108 us); square and narrow weights gain nothing, so they keep F.linear."""

    def __init__(self, linear):
        self.wt = linear.weight.detach().t().contiguous()                             # [in, out]
        self.b = None if linear.bias is None else linear.bias.detach()

    def __call__(self, x):
        y = torch.matmul(x, self.wt)
        return y if self.b is None else y + self.b


def _row_linears(dec, transpose: bool):
    """The linears of the row step whose weight is wider than tall: qkv, fc1 and the head."""
    pick = (lambda m: _TLinear(m) if m.out_features > m.in_features else m) if transpose else (lambda m: m)
    lin = {"head": pick(dec.head)}
    for l, layer in enumerate(dec.layers):
        lin[l, "qkv"] = pick(layer.qkv)
        lin[l, "fc1"] = pick(layer.mlp[0])
    return lin


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


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
