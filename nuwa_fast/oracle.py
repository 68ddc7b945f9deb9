"""The deliberately naive generator: the test oracle of the engine.

It shares nothing with the engine's fast path but the model's layers, the sampler and the
definition of the context (adc.context: every earlier patch of the order within the extent, which
ncp.plan also tabulates; the engine selects on the device with ops.ncp_select): no plan, no pool,
no page tables, no ops. Every patch's keys/values are kept forever, and for every row the whole
patch is recomputed from row 0 with dense attention.
"""
from __future__ import annotations

import time

import torch

from . import adc
from .engine import Stats, TaskSpec, check_extent, patch_known, validate_spec
from .layers import dense_attention
from .model import Where
from .sampling import Sampling, guide, sample


@torch.no_grad()
def run(model, spec: TaskSpec, seed: int = 0, sampling: Sampling = Sampling(), **_):
    validate_spec(model, spec)
    cfg, dec = model.cfg, model.decoder
    dev = model.device
    p, P = cfg.patch, cfg.P
    extent = check_extent(model, spec.extent)
    T, Hg, Wg = spec.grid
    B = spec.batch
    guided = sampling.guidance != 1.0
    Bt = 2 * B if guided else B
    t0 = time.perf_counter()
    text = model.encode_text(list(spec.prompts) + ([""] * B if guided else []))
    step_of = {tuple(o): i for i, o in enumerate(spec.order)}
    rows = adc.bias_rows(extent, cfg.extent)                   # inference slot -> trained bias row
    kv = {}                                                   # (t, y, x) -> [(k, v) per layer], [Bt, H, P, D]
    out = torch.zeros(B, T, Hg * p, Wg * p, dtype=torch.long, device=dev)
    sample_ids = torch.arange(B, device=dev)
    stats = Stats(patches=len(spec.order), tokens=T * Hg * Wg * P, backend="oracle", attention="oracle")

    for i, (t, y, x) in enumerate(spec.order):
        ctx = [(j, rows[c]) for c, j in adc.context(step_of, i, (t, y, x), extent)]   # (patch, trained bias row)
        own_row = adc.rel_index((0, 0, 0), cfg.extent)
        captured = {}

        def attend(attn, q, k, v, q_start, ctx=ctx, captured=captured):
            assert q_start == 0                               # the oracle always starts at row 0
            l = attn.layer
            Bq, H, M, D = q.shape
            table = dec.adc_bias[l]                           # [R, H]
            if ctx:
                ck = torch.cat([kv[j][l][0] for j, _ in ctx], dim=2)               # [Bt, H, n*P, D]
                cv = torch.cat([kv[j][l][1] for j, _ in ctx], dim=2)
                cb = torch.cat([table[r][None].expand(P, H) for _, r in ctx], 0)   # [n*P, H]
            else:
                ck = cv = q.new_zeros(Bq, H, 0, D)
                cb = table.new_zeros(0, H)
            captured[l] = (k[:, :, 1:], v[:, :, 1:])          # keys of tokens 0 .. M-2
            return dense_attention(q, k[:, :, 1:], v[:, :, 1:], 0, ck, cv, cb, table[own_row],
                                   attn.null_k, attn.null_v, attn.scale)

        where = Where.of((y, x), Hg, spec.directions[i] if spec.directions else 0, Bt, dev)
        known, kmask = patch_known(spec, (t, y, x), p)
        buf = torch.zeros(Bt, P, dtype=torch.long, device=dev)
        if kmask is not None and kmask.all():
            buf[:] = torch.as_tensor(known, device=dev)
        else:
            for s in range(P):                                # recompute rows 0..s for every row s
                logits = dec(buf, 0, s + 1, attend, text, where=where)[:, s]
                lg = guide(logits, B, sampling.guidance) if guided else logits
                tok = sample(lg, sampling, seed, sample_ids, i, s)
                if kmask is not None and kmask[s]:
                    tok = torch.full_like(tok, int(known[s]))
                else:
                    stats.generated_tokens += B
                buf[:, s] = tok.repeat(Bt // B)
        dec(buf, 0, P + 1, attend, text, logits=False, where=where)   # final pass: the keys/values of all P tokens
        kv[(t, y, x)] = [captured[l] for l in range(cfg.layers)]
        out[:, t, y * p:(y + 1) * p, x * p:(x + 1) * p] = buf[:B].view(B, p, p)
    stats.seconds = time.perf_counter() - t0
    stats.peak_pages = len(kv)
    return out, stats
