"""The static step: context gathered once per patch, one fixed-shape function for every row.

Attention modes "gathered", "sdpa" and "flex" share the buffers and the model's own layers; they
differ only in the kernel that reads the buffer, a small strategy object chosen once (kernels()):

  MatmulKernel  matmul -> fp32 softmax -> matmul over the buffer with an additive bias ("gathered")
  SdpaKernel    F.scaled_dot_product_attention with the same bias as a float mask ("sdpa")
  FlexKernel    torch.nn.attention.flex_attention with a block mask and a score_mod (nuwa_fast.flex)

Buffer layout per layer and row (K and V alike); a page takes Pb key positions (Pb = P rounded up
to the kernel's block: 1, or 16 for flex, the smallest block FlexAttention's kernels take):
    [0, nc)                nc = n_max * Pb: the context pages, the valid slots of the lane's step
                           first (slot order), then padding (zero keys, bias -inf). n_max = the most
                           context pages any step of the plan has, so the shapes never change.
    [own_off, +Pb)         the own page: row s writes key s-1 in place; causal mask in the bias
    [null_off, Ntot)       the null key (1 position; flex: one page block, so blocks stay aligned)
kbias [L, R, H, Ntot] fp32 holds the ADC bias of every key of every row (-inf = not visible); its
context part comes from ops.adc_gather (bias by slot, -inf for an empty slot) once per group.
Nothing ever writes the padding positions, so they stay zero keys with bias -inf.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ops
from .layers import op_range

NEG_INF = float("-inf")


class MatmulKernel:
    """Dense matmul-softmax-matmul; the own page's causal mask lives in kbias."""
    name = "gathered"
    block = 1                      # a page's key positions are rounded up to a multiple of this
    null_positions = 1             # key positions of the null key
    causal_in_bias = True          # False: the kernel masks the own page itself (flex's mask_mod)

    def setup(self, step):
        pass

    def on_gather(self, step, valid, nr: int):
        """After begin_group gathered the context: valid [nr, n_max] bool per row and context page."""

    def __call__(self, step, l, q, K, V, mask, decode: bool):
        """q [nr, H, M, D], K/V [nr, H, Ntot, D], mask [nr, H, 1 or M, Ntot] fp32 -> [nr, H, M, D]."""
        s = torch.matmul(q, K.transpose(-1, -2)) * step.scale + mask                    # [nr, H, M, Ntot]
        return torch.matmul(torch.softmax(s.float(), dim=-1).to(q.dtype), V)


class SdpaKernel(MatmulKernel):
    name = "sdpa"

    def __call__(self, step, l, q, K, V, mask, decode: bool):
        return F.scaled_dot_product_attention(q, K, V, attn_mask=mask.to(q.dtype), scale=step.scale)


def kernels():
    from .flex import FlexKernel
    return {k.name: k for k in (MatmulKernel, SdpaKernel, FlexKernel)}


class GatheredKV:
    """The kv source of the model's layers in the static step: own keys/values into the buffer,
    then the step's kernel over [context | own | null]."""

    def __init__(self, step, decode: bool):
        self.step, self.decode = step, decode

    def __call__(self, attn, q, k, v, q_start):
        st, l = self.step, attn.layer
        nr = q.shape[0]
        K, V = st.kv[l][0][:nr], st.kv[l][1][:nr]                                      # [nr, H, Ntot, D]
        if self.decode:                                      # q_start: the row, a device scalar
            pos = (q_start - 1).clamp(min=0).view(1) + st.own_off   # row 0's key lands in slot 0, masked, then overwritten
            K.index_copy_(2, pos, k.to(K.dtype))
            V.index_copy_(2, pos, v.to(V.dtype))
            mask = st.kbias[l][:nr, :, None, :]                                         # [nr, H, 1, Ntot]
        else:                                                # prefill: rows 1..P, keys of tokens 0..P-1
            K[:, :, st.own_off:st.own_off + st.sh.P] = k.to(K.dtype)
            V[:, :, st.own_off:st.own_off + st.sh.P] = v.to(V.dtype)
            mask = st.prefill_mask[l]
        with op_range(f"{st.kernel.name} attention L{l}"):
            return st.kernel(st, l, q, K, V, mask, self.decode)


class StaticStep:
    """Gathered context in a static [context | own | null] key/value buffer; one function for all rows."""
    owns_cpu_threads = False     # True: the step runs its own CPU thread pool (torch's stay at 1 meanwhile)
    per_row = False

    def __init__(self, sh, mode: str, compile_step: bool = False):
        self.sh = sh
        self.kernel = kernels()[mode]()
        dec, dev = sh.dec, sh.dev
        L, H, D, P, R = sh.L, sh.H, sh.D, sh.P, sh.R
        slots = [[c for c, j in enumerate(row) if j >= 0] for row in sh.plan.slots]
        self.n_max = max((len(s) for s in slots), default=0)   # whole plan: max_patches keeps the shapes
        slots = slots[:max(sh.n, 1)]
        pad = sh.own_rel                           # the own slot is empty at select time (select runs before add)
        idx = [s + [pad] * (self.n_max - len(s)) for s in slots]
        self.slot_idx = torch.tensor(idx, dtype=torch.long, device=dev).view(len(idx), self.n_max)   # [n, n_max]
        b = self.kernel.block
        self.Pb = Pb = -(-P // b) * b
        self.nc = self.n_max * Pb
        self.own_off, self.null_off = self.nc, self.nc + Pb
        self.Ntot = self.null_off + (Pb if self.kernel.null_positions > 1 else 1)
        self.scale = dec.scale
        dtype = dec.start.dtype
        # one tensor per layer and K/V (not views of one): torch.compile then mutates them in place
        self.kv = [tuple(torch.zeros(R, H, self.Ntot, D, dtype=dtype, device=dev) for _ in range(2))
                   for _ in range(L)]                                                  # L x 2 x [R, H, Ntot, D]
        for lay, (K, V) in zip(dec.layers, self.kv):
            K[:, :, self.null_off] = lay.attn.null_k.to(dtype)
            V[:, :, self.null_off] = lay.attn.null_v.to(dtype)
        self.own_b = sh.bias[:, sh.own_rel, :].contiguous()                           # [L, H]
        self.kbias = torch.full((L, R, H, self.Ntot), NEG_INF, device=dev)
        self.kbias[..., self.own_off:self.own_off + P] = self.own_b[:, None, :, None]
        self.kbias[..., self.null_off] = 0.0
        vis = torch.arange(P, device=dev)[None, :] < torch.arange(P + 1, device=dev)[:, None]
        self.causal = torch.zeros(P + 1, P, device=dev).masked_fill(~vis, NEG_INF)      # [P+1, P] row s: keys < s
        self.pos = dec.positions()                                                     # [P, W]
        # one layer's selected pages, gathered into a static buffer: a fresh tensor of every layer's pages
        # per group is tens of MB, and on a CPU its first-touch page faults cost more than the copy itself
        # (tiny, 36 pages: 45 ms vs 1.3 ms into a reused buffer)
        self.gather_buf = torch.empty(R * self.n_max, 2, H, P, D, dtype=sh.pool.pages.dtype, device=dev)
        self.staging_bytes = (2 * L * self.kv[0][0].numel() * self.kv[0][0].element_size() + self.kbias.numel() * 4
                              + self.gather_buf.numel() * self.gather_buf.element_size())
        self.row_kv, self.prefill_kv = GatheredKV(self, decode=True), GatheredKV(self, decode=False)
        self.prefill_mask = None
        self.kernel.setup(self)
        self.compiled = bool(compile_step)
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
        idx, pages = self.lane_pages(nr)
        valid = pages >= 0                                                             # [nr, n]
        flat = pages.clamp(min=0).view(-1).long()
        src = self.gather_buf[:nr * n]                                                 # [nr*n, 2, H, P, D]
        for l in range(L):
            torch.index_select(sh.pool.pages[:, l], 0, flat, out=src)
            both = src.view(nr, n, 2, H, P, D).permute(2, 0, 3, 1, 4, 5)              # [2, nr, H, n, P, D]
            for j in range(2):
                ctx = self.kv[l][j][:nr, :, :self.nc].unflatten(2, (n, Pb))[:, :, :, :P]   # [nr, H, n, P, D] view
                ctx.copy_(both[j])
                ctx.masked_fill_(~valid[:, None, :, None, None], 0.0)  # unused pages may hold NaN: never let it in
        b = self.slot_bias_of(idx, nr)                                                 # [L, nr, H, n]
        self.kbias[:, :nr, :, :self.nc].unflatten(3, (n, Pb))[..., :P].copy_(b[..., None].expand(L, nr, H, n, P))
        self.kernel.on_gather(self, valid, nr)

    def lane_pages(self, nr: int):
        """The context slots of every row's step (idx [nr, n_max] into the page table, padded with the
        own slot, empty at select time) and the page in each (pages [nr, n_max] int32, -1 = empty)."""
        sh = self.sh
        idx = self.slot_idx.index_select(0, sh.lane_steps[:sh.nb]).repeat_interleave(sh.Bt, 0)   # [nr, n]
        return idx, sh.page_table[:nr].gather(1, idx)

    def slot_bias_of(self, idx, nr: int):
        """The ADC bias of every row's context slots: [L, nr, H, n_max] (-inf for an empty slot)."""
        sh = self.sh
        pt = sh.page_table[:nr]
        b = torch.stack([ops.adc_gather(sh.bias[l], pt, backend=sh.backend) for l in range(sh.L)])  # [L, nr, H, C]
        return b.gather(3, idx[None, :, None, :].expand(sh.L, nr, sh.H, self.n_max))

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
        """Row sh.row_t of every lane: embed, the model's layers (keys/values from row_kv), sample."""
        sh, dec = self.sh, self.sh.dec
        nr = nb * sh.Bt
        row = sh.row_t
        r = row.view(1)
        if self.kernel.causal_in_bias:                 # own keys < row visible
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
        for layer in dec.layers:
            x = layer(x, self.row_kv, row, text, rope)
        logits = dec.head(dec.ln_f(x))[:, 0]                                           # [nr, V]
        sh.pick(logits, row)

    def _prefill(self, nb: int):
        """Rows 1..P of every (given) lane at once: the keys/values of its P known tokens."""
        sh, dec = self.sh, self.sh.dec
        nr = nb * sh.Bt
        sh.load_known_patch()
        mp = self.kbias[:, :nr, :, None, :]                                            # [L, nr, H, 1, Ntot]
        if self.kernel.causal_in_bias:
            mp = mp.repeat(1, 1, 1, sh.P, 1)                                           # [L, nr, H, P, Ntot]
            mp[..., self.own_off:self.own_off + sh.P] = self.own_b[:, None, :, None, None] + self.causal[1:]
        self.prefill_mask = mp
        text, placed = sh.views(nb)
        x = dec.embed(sh.buf[:nr], 1, sh.P, placed)                                    # rows 1..P
        rope = placed.rows(1, sh.P) if placed is not None else None
        for layer in dec.layers:
            x = layer(x, self.prefill_kv, 1, text, rope)



class FusedStep(StaticStep):
    """attention="fused" (CPU): the whole decode row in one C++ call (csrc/cpu/row_step.cpp through
    nuwa_fast.cpu_ext): embed, every layer's self-attention, cross-attention, MLP, ln_f, head and the
    sampler. Its self-attention reads the context straight from the page pool through each lane's page
    table (fp32 or bf16 pages, nothing copied per lane; lanes of a wave that select the same page share
    its reads); the own page and the null key live in StaticStep's buffer, which the prefill of given
    patches also uses (the context is gathered there only for a group that prefills). One lane's row is
    computed by the same instruction sequence whatever the lane count or the thread count, so waves and
    the sequential schedule give identical tokens."""

    owns_cpu_threads = True

    def __init__(self, sh, threads: int | None = None):
        from . import cpu_ext
        self.ext = cpu_ext.load()
        if self.ext is None:
            raise RuntimeError("attention='fused' needs the CPU row step, which could not be built "
                               "(see the warning above); use attention='gathered'")
        why = fused_unsupported(sh.dec, sh.dev, self.ext)
        if why:
            raise ValueError(f"attention='fused' cannot run this model: {why}; use attention='gathered'")
        super().__init__(sh, "gathered", compile_step=False)
        if sh.pool.pages.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"attention='fused' reads float32 or bfloat16 pages, the pool's are "
                             f"{sh.pool.pages.dtype}; pass pool_dtype=torch.float32 or torch.bfloat16")
        dec = sh.dec
        cfg = dec.cfg
        keep = []

        def ptr(t):
            if t is None:
                return 0
            if not t.is_contiguous() or t.dtype not in (torch.float32, torch.int64, torch.bool, torch.bfloat16):
                raise ValueError(f"fused step: a buffer is not contiguous fp32/bf16/int64/bool ({t.dtype}, {tuple(t.shape)})")
            keep.append(t)
            return t.data_ptr()

        R, V, n = sh.R, cfg.vq.codebook_size, self.n_max
        self.logits = torch.empty(R, V, dtype=torch.float32)
        # every row's page per context slot (-1: empty) and the ADC bias per slot, filled per group
        self.page_ids = torch.full((R, max(n, 1)), -1, dtype=torch.int64)
        self.slot_bias = torch.full((sh.L, R, sh.H, max(n, 1)), NEG_INF)
        self.staging_bytes += self.page_ids.numel() * 8 + self.slot_bias.numel() * 4
        self._context_in_buffer = False
        pl = sh.placed
        rope = pl.rope if pl is not None and pl.rope is not None else (None,) * 4
        add = pl.add if pl is not None else None
        pw = self.ext.PANEL
        packed = []

        def panels(w):                               # the C++ products read [N, K] weights as panels
            packed.append(pack_panels(w.detach(), pw))
            return packed[-1]

        g = [dec.tok.weight, self.pos.contiguous(), dec.start, dec.ln_f.weight, dec.ln_f.bias, panels(dec.head.weight),
             sh.buf, add, *rope, self.logits, self.own_b, sh.pool.pages, self.page_ids, self.slot_bias]
        ptrs = [ptr(t) for t in g]
        Lt = sh.text[0][0].shape[2]
        for l, lay in enumerate(dec.layers):
            tk, tv, tm = sh.text[l]
            fc1, fc2 = lay.mlp[0], lay.mlp[2]
            ptrs += [ptr(t) for t in (
                lay.ln1.weight, lay.ln1.bias, panels(lay.attn.qkv.weight), panels(lay.attn.proj.weight),
                lay.ln2.weight, lay.ln2.bias, panels(lay.cross.q.weight), panels(lay.cross.proj.weight),
                lay.ln3.weight, lay.ln3.bias, panels(fc1.weight), fc1.bias, panels(fc2.weight), fc2.bias,
                self.kv[l][0], self.kv[l][1], self.kbias[l], tk, tv, tm)]
        assert len(ptrs) == self.ext.NGLOBAL + cfg.layers * self.ext.NLAYER
        self.staging_bytes += sum(t.numel() * t.element_size() for t in packed)
        dims = [cfg.layers, cfg.width, cfg.heads, cfg.head_dim, sh.P, V, Lt, fc1.weight.shape[0], self.Ntot,
                n, self.own_off, self.null_off, int(sh.pool.pages.dtype == torch.bfloat16), R]
        assert len(dims) == self.ext.NDIMS
        self._ptrs = torch.tensor(ptrs, dtype=torch.int64)
        self._dims = torch.tensor(dims, dtype=torch.int64)
        # the sampler runs in the same call unless top-k / top-p filtering is on (then: the torch sampler)
        smp = sh.sampling
        self._sampler = None
        if not smp.top_k and smp.top_p >= 1.0:
            known = sh.known is not None
            sp = [sh.B, sh.Bt, sh.seed & 0xFFFFFFFF, (sh.seed >> 32) & 0xFFFFFFFF, ptr(sh.sample_ids),
                  ptr(sh.sample_steps), ptr(sh.known_rows) if known else 0, ptr(sh.kmask_rows) if known else 0]
            assert len(sp) == self.ext.NSAMPLER
            self._sampler = torch.tensor(sp, dtype=torch.int64)
            self._temperature, self._guidance = float(smp.temperature), float(smp.guidance)
        self._keep = keep
        self.ext.set_threads(int(threads or torch.get_num_threads()))

    def begin_group(self, steps):
        """The page table and slot bias of every lane; the context stays in the pool (gathered into the
        static buffer only if this group prefills, see prefill_fn)."""
        self._context_in_buffer = False
        self._steps = steps
        if not self.n_max:
            return
        nr = self.sh.nb * self.sh.Bt
        idx, pages = self.lane_pages(nr)
        self.page_ids[:nr].copy_(pages)
        self.slot_bias[:, :nr].copy_(self.slot_bias_of(idx, nr))

    def prefill_fn(self, nb: int):
        if not self._context_in_buffer:              # the torch prefill reads the gathered buffer
            super().begin_group(self._steps)
            self._context_in_buffer = True
        super().prefill_fn(nb)

    def row_fn(self, s, nb: int):
        sh = self.sh
        last = s >= sh.P                              # row P only stores the key/value of token P-1
        if self._sampler is not None:
            with op_range("fused row + sample"):
                self.ext.row_step(self._dims.data_ptr(), self._ptrs.data_ptr(), int(s), nb * sh.Bt, not last,
                                  0 if last else self._sampler.data_ptr(), self._temperature, self._guidance)
            return
        with op_range("fused row"):
            self.ext.row_step(self._dims.data_ptr(), self._ptrs.data_ptr(), int(s), nb * sh.Bt, not last)
        if not last:
            sh.pick(self.logits[:nb * sh.Bt], sh.rows_t[s])


def pack_panels(w: torch.Tensor, width: int) -> torch.Tensor:
    """An nn.Linear weight [N, K] in the C++ products' layout: [ceil(N / width), K, width], float32, zeros
    past N. A step over k then reads `width` consecutive weights of one input (csrc/cpu/row_step.cpp,
    `linear`)."""
    N, K = w.shape
    n = -(-N // width) * width
    out = torch.zeros(n, K, dtype=torch.float32)
    out[:N] = w
    return out.view(n // width, width, K).transpose(1, 2).contiguous()


def fused_unsupported(dec, dev, ext=None) -> str | None:
    """Why the fused CPU row step cannot run this decoder (None: it can); ext: the built module, whose
    vector width fixes the head sizes it takes."""
    if dev.type != "cpu":
        return f"it runs on a CPU, the model is on {dev}"
    if dec.start.dtype != torch.float32:
        return f"it runs float32 weights, the model's are {dec.start.dtype}"
    lay = dec.layers[0]
    if not (isinstance(lay.mlp[1], torch.nn.GELU) and lay.mlp[1].approximate == "tanh"):
        return "its MLP is Linear -> GELU(tanh) -> Linear"
    if dec.cfg.head_dim % 2:
        return "its head dimension must be even (rotary pairs)"
    if ext is not None:
        vw, nvs = int(ext.VW), tuple(ext.HEAD_VECTORS)
        nv, rem = divmod(dec.cfg.head_dim, vw)
        if rem or nv not in nvs:
            return (f"its head dimension ({dec.cfg.head_dim}) must be {vw} x one of {nvs} "
                    f"(this build's vector width is {vw} floats)")
    return None
