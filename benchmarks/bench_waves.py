"""Waves vs sequential, and the engine vs a plain full-context KV-cache decoder, in one process.

    python benchmarks/bench_waves.py                       # CPU: tiny model, writes results/waves_cpu.json
    python benchmarks/bench_waves.py --device cuda --out benchmarks/results/waves_gpu.json

Cases (bundled tiny model, batch 1 unless named): 8 x 8, 16 x 16 and 32 x 32 patches in order
"down" (32 x 32: the first --rows32 patch rows only, max_patches), a 4 x 64 panorama in order
"right", and 8 x 8 patches at batch 8. Each case runs both schedules back to back, --repeats times
interleaved (waves, sequential, waves, ...), and reports the median tokens/s of each, the waves, the
mean lanes, the peak pages, and whether the tokens are identical.

Baseline: what a user would write instead, a minGPT-style decoder of the same size (layers, width,
heads, vocabulary), one token per step over a preallocated full-context KV cache (the whole canvas
so far), random weights, Gumbel-max sampling; run on the 64 x 64-token canvas (8 x 8 patches of
the tiny model) in the same process. Tokens/s = generated tokens / wall seconds, the same definition.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import nuwa_fast
from nuwa_fast import adc, engine

HERE = os.path.dirname(os.path.abspath(__file__))
import sys                                                                      # noqa: E402
sys.path.insert(0, HERE)
from bench_common import _cpu_model, cpu_isa                                    # noqa: E402


class Block(nn.Module):
    def __init__(self, W, H):
        super().__init__()
        self.H = H
        self.ln1, self.ln2 = nn.LayerNorm(W), nn.LayerNorm(W)
        self.qkv, self.proj = nn.Linear(W, 3 * W, bias=False), nn.Linear(W, W, bias=False)
        self.mlp = nn.Sequential(nn.Linear(W, 4 * W), nn.GELU(approximate="tanh"), nn.Linear(4 * W, W))

    def forward(self, x, cache, t):                 # x [B, 1, W]; cache [2, B, H, N, D]
        B, _, W = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, 1, 3, self.H, W // self.H).unbind(2)
        cache[0, :, :, t] = k[:, 0]
        cache[1, :, :, t] = v[:, 0]
        a = F.scaled_dot_product_attention(q.transpose(1, 2), cache[0, :, :, :t + 1], cache[1, :, :, :t + 1])
        x = x + self.proj(a.transpose(1, 2).reshape(B, 1, W))
        return x + self.mlp(self.ln2(x))


class FullCacheGPT(nn.Module):
    """One token per step; every earlier token of the canvas stays in the cache."""

    def __init__(self, layers, width, heads, vocab, n_ctx):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(n_ctx, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)
        self.shape = (layers, 2, heads, n_ctx, width // heads)

    @torch.no_grad()
    def generate(self, n, batch=1, seed=0):
        L, two, H, N, D = self.shape
        dev = self.head.weight.device
        cache = torch.zeros(L, 2, batch, H, N, D, device=dev)      # preallocated once
        g = torch.Generator(device=dev).manual_seed(seed)
        idx = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        out = torch.empty(batch, n, dtype=torch.long, device=dev)
        for t in range(n):
            x = self.tok(idx) + self.pos.weight[t]
            for l, blk in enumerate(self.blocks):
                x = blk(x, cache[l], t)
            logits = self.head(self.ln(x))[:, 0]
            u = torch.rand(logits.shape, generator=g, device=dev)
            idx = torch.argmax(logits - torch.log(-torch.log(u)), dim=-1, keepdim=True)
            out[:, t] = idx[:, 0]
        return out


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class RowTimer:
    """Wall time of each fused decode row by the number of lanes in it (attention="fused" only): what a
    row of n lanes costs against a row of one, the figure that bounds the waves' speedup."""

    def __init__(self):
        from nuwa_fast import gathered
        self.cls, self.orig, self.by_lanes = gathered.FusedStep, gathered.FusedStep.row_fn, {}

    def __enter__(self):
        orig, by = self.orig, self.by_lanes

        def row_fn(step, s, nb):
            t0 = time.perf_counter()
            orig(step, s, nb)
            by.setdefault(nb, []).append(time.perf_counter() - t0)
        self.cls.row_fn = row_fn
        return self

    def __exit__(self, *exc):
        self.cls.row_fn = self.orig

    def summary(self):
        return {str(n): {"rows": len(v), "median_us": round(1e6 * statistics.median(v), 1)}
                for n, v in sorted(self.by_lanes.items())}


def engine_case(model, name, grid, order, batch, repeats, max_patches=None, row_costs=False, **kw):
    spec = engine.TaskSpec(grid=grid, order=adc.order(order, grid), prompts=[""] * batch,
                           directions=adc.directions(order, grid))
    rates = {"waves": [], "sequential": []}
    stats, tokens, timers = {}, {}, {}
    for _ in range(repeats):
        for sch in ("waves", "sequential"):
            timer = timers.setdefault(sch, RowTimer())
            if row_costs:
                with timer:
                    tok, st = engine.run(model, spec, seed=0, schedule=sch, max_patches=max_patches, **kw)
            else:
                tok, st = engine.run(model, spec, seed=0, schedule=sch, max_patches=max_patches, **kw)
            rates[sch].append(st.tokens_per_second)
            stats[sch], tokens[sch] = st, tok
    w, s = stats["waves"], stats["sequential"]
    med = {k: statistics.median(v) for k, v in rates.items()}
    row = dict(case=name, grid=list(grid), order=order, batch=batch, patches=w.patches, max_patches=max_patches,
               tokens=w.generated_tokens, waves=w.waves, mean_lanes=round(w.mean_lanes, 2),
               peak_pages_waves=w.peak_pages, peak_pages_sequential=s.peak_pages,
               tok_s_waves=round(med["waves"], 1), tok_s_sequential=round(med["sequential"], 1),
               spread_waves=[round(min(rates["waves"]), 1), round(max(rates["waves"]), 1)],
               spread_sequential=[round(min(rates["sequential"]), 1), round(max(rates["sequential"]), 1)],
               speedup=round(med["waves"] / med["sequential"], 2),
               same_tokens=bool(torch.equal(tokens["waves"], tokens["sequential"])),
               attention=w.attention, backend=w.backend)
    if row_costs and w.attention == "fused":
        row["row_us_by_lanes"] = {sch: t.summary() for sch, t in timers.items()}
    print(f"{name:>22}: waves {row['tok_s_waves']:8.1f} tok/s ({w.waves} waves, {row['mean_lanes']} lanes, "
          f"{w.peak_pages} pages) | sequential {row['tok_s_sequential']:8.1f} tok/s ({s.peak_pages} pages) | "
          f"x{row['speedup']} | same tokens {row['same_tokens']}", flush=True)
    return row, med["waves"]


def baseline_case(model, n_tok, repeats, dev):
    cfg = model.cfg
    torch.manual_seed(0)
    gpt = FullCacheGPT(cfg.layers, cfg.width, cfg.heads, cfg.vq.codebook_size, n_tok).to(dev).eval()
    rates = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        gpt.generate(n_tok)
        sync(dev)
        rates.append(n_tok / (time.perf_counter() - t0))
    med = statistics.median(rates)
    print(f"{'full-KV-cache baseline':>22}: {med:8.1f} tok/s over {n_tok} tokens "
          f"(spread {min(rates):.1f}..{max(rates):.1f})", flush=True)
    return dict(case="full_kv_cache_baseline", tokens=n_tok, layers=cfg.layers, width=cfg.width, heads=cfg.heads,
                vocab=cfg.vq.codebook_size, tok_s=round(med, 1), spread=[round(min(rates), 1), round(max(rates), 1)])


def git_rev():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoint", default="tiny")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows32", type=int, default=4, help="patch rows of the 32 x 32 case (0: skip it)")
    ap.add_argument("--cases", default="8x8,baseline,16x16,4x64,8x8_b8,32x32",
                    help="comma-separated, run in this order")
    ap.add_argument("--attention", default=None)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--pool-dtype", default=None, choices=["float32", "bfloat16"],
                    help="NCP page pool dtype (default: the engine's for the model and device)")
    ap.add_argument("--row-costs", action="store_true",
                    help="fused step: also record the median wall time of a decode row per lane count")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "waves_cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = nuwa_fast.load(args.checkpoint, device=dev)
    kw = dict(attention=args.attention, backend=args.backend,
              pool_dtype=getattr(torch, args.pool_dtype) if args.pool_dtype else None)
    cases = args.cases.split(",")
    rows, res = [], {}
    todo = {"8x8": ((1, 8, 8), "down", 1, None), "16x16": ((1, 16, 16), "down", 1, None),
            "32x32": ((1, 32, 32), "down", 1, 32 * args.rows32), "4x64": ((1, 4, 64), "right", 1, None),
            "8x8_b8": ((1, 8, 8), "down", 8, None)}
    out = dict(bench="waves", device=str(dev), cpu=_cpu_model() or platform.machine(), cpu_isa=cpu_isa(),
               threads=torch.get_num_threads(), torch=torch.__version__, git=git_rev(), checkpoint=args.checkpoint,
               repeats=args.repeats, pool_dtype=args.pool_dtype, rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with torch.no_grad():
        for name in cases:                                              # in the order given
            if name == "baseline":
                p = model.cfg.patch
                base = baseline_case(model, (8 * p) ** 2, args.repeats, dev)   # 64 x 64 tokens (tiny)
                rows.append(base)
            else:
                grid, order, batch, mp = todo[name]
                row, res[name] = engine_case(model, name, grid, order, batch, args.repeats, mp,
                                             row_costs=args.row_costs, **kw)
                rows.append(row)
            base = next((r for r in rows if r["case"] == "full_kv_cache_baseline"), None)
            if base is not None and "8x8" in res:
                base["engine_waves_over_baseline"] = round(res["8x8"] / base["tok_s"], 2)
                base["engine_sequential_over_baseline"] = round(
                    next(r for r in rows if r["case"] == "8x8")["tok_s_sequential"] / base["tok_s"], 2)
            with open(args.out, "w") as fh:                             # after every case: partial runs survive
                json.dump(out, fh, indent=1)
    if base is not None and "8x8" in res:
        print(f"engine / full-KV-cache baseline at 64 x 64 tokens: waves x{base['engine_waves_over_baseline']}, "
              f"sequential x{base['engine_sequential_over_baseline']}")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
