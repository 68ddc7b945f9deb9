"""The engine: one patch loop for all five tasks.

For each patch of the order: select its context pages (NCP select), allocate its own page (add),
then either prefill its P known tokens in one pass (a given patch) or decode its P+1 rows one at a
time (a generated patch; rows whose token is known are forced), writing each row's keys/values
straight into the own page; finally free the pages no later patch needs (remove). B samples (2B
with classifier-free guidance) move in lockstep.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import adc, ncp, ops
from .model import dense_attention
from .sampling import Sampling, guide, sample


@dataclass
class TaskSpec:
    """What to generate, in tokens. Built by nuwa_fast.api for each task."""
    grid: tuple                          # (T, Hg, Wg) patch grid
    order: list                          # [(t, y, x)]
    prompts: list                        # [B] str ("" = unconditional)
    known: np.ndarray | None = None      # [T, Hg*p, Wg*p] int64 tokens, same for every sample
    known_mask: np.ndarray | None = None  # [T, Hg*p, Wg*p] bool
    extent: tuple | None = None          # None = the checkpoint's extent

    @property
    def batch(self) -> int:
        return len(self.prompts)


@dataclass
class Stats:
    patches: int = 0
    tokens: int = 0                      # tokens per sample (known ones included)
    generated_tokens: int = 0            # sampled tokens, all samples
    seconds: float = 0.0
    peak_pages: int = 0                  # logical pages (each holds B samples' pages)
    pool_bytes: int = 0
    backend: str = "torch"
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def patch_known(spec: TaskSpec, tyx, p: int):
    """Known tokens and mask [P] of one patch (numpy), or (None, None) if nothing is known."""
    if spec.known_mask is None:
        return None, None
    t, y, x = tyx
    m = spec.known_mask[t, y * p:(y + 1) * p, x * p:(x + 1) * p].reshape(-1)
    if not m.any():
        return None, None
    return spec.known[t, y * p:(y + 1) * p, x * p:(x + 1) * p].reshape(-1), m


def check_extent(model, extent):
    extent = tuple(int(e) for e in (extent or model.cfg.extent))
    if len(extent) != 3 or min(extent) < 0:
        raise ValueError(f"extent must be three non-negative ints (e_t, e_h, e_w), got {extent}")
    adc.bias_rows(extent, model.cfg.extent)          # raises if it does not fit the checkpoint
    return extent


def validate_spec(model, spec: TaskSpec):
    p = model.cfg.patch
    if spec.batch < 1:
        raise ValueError("batch must be >= 1")
    T, Hg, Wg = spec.grid
    if spec.known is not None:
        want = (T, Hg * p, Wg * p)
        if spec.known.shape != want or spec.known_mask.shape != want:
            raise ValueError(f"known tokens must have shape {want}, got {spec.known.shape}")
        V = model.cfg.vq.codebook_size
        k = spec.known[spec.known_mask]
        if k.size and (k.min() < 0 or k.max() >= V):
            raise ValueError(f"known tokens must lie in [0, {V}) for this checkpoint's codebook")


@torch.no_grad()
def run(model, spec: TaskSpec, seed: int = 0, sampling: Sampling = Sampling(), backend=None,
        progress: bool = False, pool_dtype=None, attention: str | None = None):
    """Generate the tokens of `spec`. Returns (tokens [B, T, Hg*p, Wg*p] int64, Stats).

    attention: "paged" calls ops.patch_attention on the pool for every row (the kernels' path);
    "gathered" copies the patch's context pages out of the pool once per patch and attends to
    that copy for all P+1 rows (the fast path of the torch backend on a CPU). Default: gathered
    for the torch backend, paged otherwise.
    """
    validate_spec(model, spec)
    cfg, dec = model.cfg, model.decoder
    dev = model.device
    p, P, L, H, D = cfg.patch, cfg.P, cfg.layers, cfg.heads, cfg.head_dim
    extent = check_extent(model, spec.extent)
    backend = ops.resolve_backend(backend, dev)
    attention = attention or ("gathered" if backend == "torch" else "paged")
    if attention not in ("paged", "gathered"):
        raise ValueError(f"attention must be 'paged' or 'gathered', got {attention!r}")
    T, Hg, Wg = spec.grid
    extent = (min(extent[0], T - 1), min(extent[1], Hg - 1), min(extent[2], Wg - 1))  # no always-empty slots
    B = spec.batch
    cfg_guided = sampling.guidance != 1.0
    Bt = 2 * B if cfg_guided else B
    t0 = time.perf_counter()

    plan = ncp.plan(spec.order, extent, spec.grid)
    bias = dec.adc_bias[:, adc.bias_rows(extent, cfg.extent), :].float()       # [L, C, H] ADC gather
    own_rel = adc.rel_index((0, 0, 0), extent)
    pool = ncp.PagePool(plan.peak_pages, Bt, L, H, P, D, T * Hg * Wg, pool_dtype or dec.start.dtype,
                        dev, backend=backend)
    text = model.encode_text(list(spec.prompts) + ([""] * B if cfg_guided else []))
    cur_ids = torch.tensor([ncp.linear(o, spec.grid) for o in spec.order], dtype=torch.int32, device=dev)
    freed = torch.full((len(spec.order), max(plan.max_freed, 1)), -1, dtype=torch.int32)
    for i, f in enumerate(plan.freed):
        freed[i, :len(f)] = torch.tensor(f, dtype=torch.int32)
    freed = freed.to(dev)
    sample_ids = torch.arange(B, device=dev)
    out = torch.zeros(B, T, Hg * p, Wg * p, dtype=torch.long, device=dev)
    stats = Stats(patches=len(spec.order), tokens=T * Hg * Wg * P, backend=backend)

    steps = spec.order
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="patches", unit="patch")
    for i, (t, y, x) in enumerate(steps):
        cur = cur_ids[i:i + 1]
        page_table = pool.select(cur, spec.grid, extent)                 # [Bt, C] int32
        own = pool.add(cur)                                              # [Bt] int32

        def write(l, k, v, q_start, own=own):
            m0 = 1 if q_start == 0 else 0                                # row 0 (start) has no key
            if k.shape[2] > m0:
                s0 = q_start + m0 - 1
                pool.pages[own, l, 0, :, s0:s0 + k.shape[2] - m0] = k[:, :, m0:].to(pool.pages.dtype)
                pool.pages[own, l, 1, :, s0:s0 + k.shape[2] - m0] = v[:, :, m0:].to(pool.pages.dtype)

        def attend_paged(l, q, k, v, q_start, page_table=page_table, own=own):
            write(l, k, v, q_start)
            kc, vc = pool.layer_kv(l)
            layer = dec.layers[l]
            return ops.patch_attention(q.to(kc.dtype), kc, vc, page_table, own, q_start, bias[l], own_rel,
                                       layer.null_k.to(kc.dtype), layer.null_v.to(kc.dtype), dec.scale,
                                       backend=backend).to(q.dtype)

        if attention == "gathered":
            valid = [c for c, j in enumerate(plan.slots[i]) if j >= 0]   # host-side, from the plan
            ctx_pages = page_table[:, valid].long()                       # [Bt, n]
            ctx_bias = bias[:, valid].repeat_interleave(P, dim=1)         # [L, n*P, H]
            ctx = []
            for l in range(L):
                kc, vc = pool.layer_kv(l)
                ctx.append(tuple(c[ctx_pages].permute(0, 2, 1, 3, 4).reshape(Bt, H, len(valid) * P, D)
                                 .to(dec.start.dtype) for c in (kc, vc)))  # 2 x [Bt, H, n*P, D]

            def attend_gathered(l, q, k, v, q_start, own=own, ctx=ctx, ctx_bias=ctx_bias):
                write(l, k, v, q_start)
                n_own = q_start + q.shape[2] - 1                          # own keys visible to the last row
                ko = pool.pages[own, l, 0, :, :max(n_own, 0)].to(q.dtype)  # [Bt, H, n_own, D]
                vo = pool.pages[own, l, 1, :, :max(n_own, 0)].to(q.dtype)
                layer = dec.layers[l]
                return dense_attention(q, ko, vo, q_start, ctx[l][0], ctx[l][1], ctx_bias[l], bias[l, own_rel],
                                       layer.null_k, layer.null_v, dec.scale)
            attend = attend_gathered
        else:
            attend = attend_paged

        known, kmask = patch_known(spec, (t, y, x), p)
        buf = torch.zeros(Bt, P, dtype=torch.long, device=dev)
        if kmask is not None and kmask.all():                            # given patch: prefill
            buf[:] = torch.as_tensor(known, device=dev)
            dec(buf, 1, P, attend, text, logits=False)
        else:
            for s in range(P + 1):
                logits = dec(buf, s, 1, attend, text, logits=s < P)
                if s == P:
                    break
                lg = guide(logits[:, 0], B, sampling.guidance) if cfg_guided else logits[:, 0]
                tok = sample(lg, sampling, seed, sample_ids, i, s)       # [B]
                if kmask is not None and kmask[s]:
                    tok = torch.full_like(tok, int(known[s]))
                else:
                    stats.generated_tokens += B
                buf[:, s] = tok.repeat(Bt // B)
        out[:, t, y * p:(y + 1) * p, x * p:(x + 1) * p] = buf[:B].view(B, p, p)
        pool.remove(freed[i])
    stats.seconds = time.perf_counter() - t0
    stats.peak_pages = int(pool.peak.item())
    stats.pool_bytes = pool.nbytes
    stats.extra["pages_left"] = pool.in_use()
    stats.extra["plan_peak_pages"] = plan.peak_pages
    return out, stats
