"""Patch attention: torch reference vs SDPA over gathered K/V vs FlexAttention vs the Triton kernel.

    python3 benchmarks/bench_patch_attention.py                 # GPU: tiny + paper presets, bf16
    python3 benchmarks/bench_patch_attention.py --quick         # CPU: torch-side rows at reduced sizes
    python3 benchmarks/bench_patch_attention.py --no-flex --budget-s 60   # GPU check: no Flex compiles

The JSON is rewritten after every shape, so a run stopped by a timeout keeps the shapes it finished;
--budget-s stops starting new shapes once that many seconds have passed.

Shapes: an image with extent (0, 2, 2) -> C = 25 NCP slots; an interior patch in "down" order has 12 of
them filled (the two rows above and the two patches to its left), plus its own page. Decode: M = 1 row
at q_start = P // 2; prefill: M = P + 1 rows from q_start = 0. k/v are strided views pool[:, layer, 0/1]
of a [pages, layers, 2, H, P, D] pool, physical page = logical * B + b as in the engine.

Every implementation is checked against the reference before it is timed (max err column).
Bytes and FLOPs are the op's useful work, the same for every row (so GB/s is effective bandwidth):
    bytes = 2 (K and V) * H * D * e * sum_b (filled_b * P + q_start + M - 1)   K/V pages actually read
          + 2 * B * H * M * D * e                                                q + out
          + 2 * H * D * e + (C + 1) * H * 4 + B * (C + 1) * 4                    null k/v, bias rows, tables
    flops = 4 * H * D * sum_b sum_m (1 + filled_b * P + q_start + m)             q.k and p.v
with e the element size. The device copy bandwidth (clone of a large tensor, bytes = 2 * size) is
measured in the same run; "% copy" = GB/s / copy GB/s. On the GPU the L2 is flushed before each repeat.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nuwa_fast import adc  # noqa: E402
from nuwa_fast.config import PRESETS  # noqa: E402
from nuwa_fast.ops import reference as ref  # noqa: E402

EXTENT_IMAGE = (0, 2, 2)                                                  # C = 25 slots


# ---- inputs -----------------------------------------------------------------------------------------
def make_inputs(cfg, B, M, q_start, dtype, device, layers=2, seed=0):
    P, H, D = cfg.P, cfg.heads, cfg.head_dim
    C = adc.num_offsets(EXTENT_IMAGE)
    filled = C // 2                                   # "down" interior: slots before the centre offset
    G = filled + 2                                    # logical pages: context + own + one spare
    g = torch.Generator().manual_seed(seed)
    logical = torch.randperm(G, generator=g)
    b = torch.arange(B)[:, None]
    page_table = torch.full((B, C), -1, dtype=torch.int32)
    page_table[:, :filled] = (logical[None, :filled] * B + b).to(torch.int32)
    own_page = (logical[filled] * B + torch.arange(B)).to(torch.int32)
    pool = torch.randn(G * B, layers, 2, H, P, D, dtype=dtype, device=device)
    mt, mh, mw = cfg.extent
    own_rel = ((mt * (2 * mh + 1)) + mh) * (2 * mw + 1) + mw                  # rel_index((0, 0, 0))
    return dict(
        q=torch.randn(B, H, M, D, generator=g).to(device, dtype), k_cache=pool[:, layers - 1, 0],
        v_cache=pool[:, layers - 1, 1], page_table=page_table.to(device), own_page=own_page.to(device),
        q_start=q_start, bias=torch.randn(cfg.R, H, generator=g).to(device), own_rel=own_rel,
        null_k=torch.randn(H, D, generator=g).to(device, dtype),
        null_v=torch.randn(H, D, generator=g).to(device, dtype), scale=D ** -0.5)


def work(inp):
    """Useful bytes and FLOPs of one call (formulas in the module docstring)."""
    B, H, M, D = inp["q"].shape
    P, C = inp["k_cache"].shape[2], inp["page_table"].shape[1]
    e = inp["q"].element_size()
    q0 = inp["q_start"]
    filled = (inp["page_table"] >= 0).sum(1).cpu()                          # [B]
    keys_read = int((filled * P).sum()) + B * (q0 + M - 1)
    nbytes = 2 * H * D * e * keys_read + 2 * B * H * M * D * e + 2 * H * D * e + (C + 1) * H * 4 + B * (C + 1) * 4
    keys_per_row = sum(int(f) * P * M + sum(1 + q0 + m for m in range(M)) for f in filled)
    return nbytes, 4 * H * D * keys_per_row


# ---- what a PyTorch user would write instead -------------------------------------------------------
def sdpa_gathered(q, k_cache, v_cache, page_table, own_page, q_start, bias, own_rel, null_k, null_v, scale):
    """Gather the selected pages into contiguous K/V, build the dense additive bias, call SDPA."""
    B, H, M, D = q.shape
    P, C = k_cache.shape[2], page_table.shape[1]
    valid = page_table >= 0                                                  # [B, C]
    safe = page_table.long().clamp(min=0)
    kc = torch.where(valid[:, :, None, None, None], k_cache[safe], 0)       # [B, C, H, P, D]
    vc = torch.where(valid[:, :, None, None, None], v_cache[safe], 0)
    k = torch.cat([null_k[None, :, None].expand(B, H, 1, D), kc.transpose(1, 2).reshape(B, H, C * P, D),
                   k_cache[own_page.long()]], dim=2)                        # [B, H, 1 + C*P + P, D]
    v = torch.cat([null_v[None, :, None].expand(B, H, 1, D), vc.transpose(1, 2).reshape(B, H, C * P, D),
                   v_cache[own_page.long()]], dim=2)
    b_ctx = torch.where(valid[:, None, :], bias[:C].t()[None], float("-inf"))   # [B, H, C]
    rows = torch.arange(M, device=q.device) + q_start
    own_vis = torch.arange(P, device=q.device)[None, :] < rows[:, None]      # [M, P]
    b_own = torch.where(own_vis[None, None], bias[own_rel][None, :, None, None], float("-inf"))
    mask = torch.cat([torch.zeros(B, H, M, 1, device=q.device),
                      b_ctx.repeat_interleave(P, dim=2)[:, :, None, :].expand(B, H, M, C * P),
                      b_own.expand(B, H, M, P)], dim=3).to(q.dtype)         # [B, H, M, 1 + C*P + P]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def make_flex(inp, compiled):
    """FlexAttention over the pool flattened to [1, H, (pages + 1) * P, D] (last page: the null key).

    Block mask from the page table (one KV block = one page: context pages full, own page and null page
    partial); the mask_mod states the whole rule too, since eager flex applies it to every key.
    score_mod adds the ADC bias through a per-(sample, page) bias-row map. The layout conversion and the
    mask are built once, outside the timing (an engine would keep its pool in this layout).
    """
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    q, k_cache, v_cache = inp["q"], inp["k_cache"], inp["v_cache"]
    B, H, M, D = q.shape
    N, _, P, _ = k_cache.shape
    dev = q.device
    null = N                                                                 # index of the null page

    def flat(cache, null_vec):
        nullpage = torch.zeros(1, H, P, D, dtype=cache.dtype, device=dev)
        nullpage[0, :, 0] = null_vec
        return torch.cat([cache, nullpage]).transpose(0, 1).reshape(1, H, (N + 1) * P, D)

    k, v = flat(k_cache, inp["null_k"]), flat(v_cache, inp["null_v"])
    pt, own, q_start, own_rel = inp["page_table"].long(), inp["own_page"].long(), inp["q_start"], inp["own_rel"]
    C = pt.shape[1]
    row_map = torch.full((B, N + 1), -1, dtype=torch.long, device=dev)       # bias row per (sample, page)
    ctx_map = torch.zeros((B, N + 1), dtype=torch.bool, device=dev)
    for b in range(B):
        ok = pt[b] >= 0
        row_map[b, pt[b][ok]] = torch.arange(C, device=dev)[ok]
        ctx_map[b, pt[b][ok]] = True
        row_map[b, own[b]] = own_rel
    bias = inp["bias"]

    def mask_mod(b, h, q_idx, kv_idx):
        page, off = kv_idx // P, kv_idx % P
        return (((page == null) & (off == 0)) | ctx_map[b, page]
                | ((page == own[b]) & (off < q_start + q_idx)))

    def score_mod(score, b, h, q_idx, kv_idx):
        r = row_map[b, kv_idx // P]
        return score + torch.where(r >= 0, bias[r.clamp(min=0), h], 0.0).to(score.dtype)

    n_q = math.ceil(M / 128)

    def blocks(idx):                  # [B, n] page ids -> [B, 1, n_q, N + 1] (BlockMask wants all columns)
        full = torch.zeros(B, N + 1, dtype=torch.int32, device=dev)
        n = min(idx.shape[1], N + 1)                  # C may exceed the pool; valid pages come first
        full[:, :n] = idx[:, :n]
        return full[:, None, None, :].expand(B, 1, n_q, N + 1).contiguous()

    n_full = (pt >= 0).sum(1)                                                # [B]
    full_idx = torch.sort(torch.where(pt >= 0, pt, N + 1), dim=1).values.clamp(max=N)   # valid pages first
    block_mask = BlockMask.from_kv_blocks(
        kv_num_blocks=torch.full((B, 1, n_q), 2, dtype=torch.int32, device=dev),
        kv_indices=blocks(torch.stack([own, torch.full_like(own, null)], 1)),
        full_kv_num_blocks=n_full[:, None, None].expand(B, 1, n_q).to(torch.int32).contiguous(),
        full_kv_indices=blocks(full_idx),
        BLOCK_SIZE=(128, P), mask_mod=mask_mod, seq_lengths=(M, (N + 1) * P))
    if compiled:
        fn = torch.compile(flex_attention, dynamic=False)
    else:
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        fn = flex_attention
    scale = inp["scale"]
    return lambda: fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


# ---- timing -----------------------------------------------------------------------------------------
def timeit(fn, repeats, warmup, device):
    times = []
    if device.type == "cuda":
        flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device=device)   # > L2
        for _ in range(warmup):
            fn()
        for _ in range(repeats):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
    else:
        for _ in range(warmup):
            fn()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]          # noqa: E731
    return statistics.median(times), q(0.1), q(0.9)


def copy_bandwidth(device, quick):
    n = (64 if quick or device.type != "cuda" else 2048) * 2 ** 20
    x = torch.empty(n, dtype=torch.uint8, device=device)
    med, _, _ = timeit(lambda: x.clone(), 5 if quick else 20, 2, device)
    return 2 * n / med / 1e9


def git_rev():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


# ---- main -------------------------------------------------------------------------------------------
def shapes(quick, on_gpu):
    # (preset, mode, B), most telling first: paper decode at batch 1 (split-K path, SMs hard to fill),
    # then the batch sweep, prefill (compute-bound) and the tiny preset
    if quick:
        return [("tiny", "decode", 4), ("tiny", "prefill", 2), ("paper", "decode", 2), ("paper", "prefill", 1)]
    out = [("paper", "decode", 1), ("paper", "decode", 16), ("paper", "prefill", 8), ("paper", "decode", 64),
           ("tiny", "decode", 64), ("tiny", "prefill", 16)]
    if on_gpu:
        out.insert(1, ("paper", "decode", 4))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (CPU, < 1 minute)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bfloat16 (GPU default) | float16 | float32 (CPU default)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--layers", type=int, default=2, help="layers in the pool (k/v are strided views)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/patch_attention_<device>.json)")
    ap.add_argument("--no-flex", action="store_true", help="leave FlexAttention out (its compiles take minutes)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new shape after this many seconds")
    args = ap.parse_args()
    t_start = time.perf_counter()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    repeats = args.repeats or (3 if args.quick or not on_gpu else 50)
    dev_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"

    from nuwa_fast import ops
    triton_version = None
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        pass
    kernels, absent = {}, ops.absent_backends()
    for name in ("triton", "cuda"):
        if not on_gpu:
            absent.setdefault(name, "GPU only (the interpreter is no timing)")
        elif name in ops.available_backends():
            kernels[name] = ops.get("patch_attention", name)

    copy_gbps = copy_bandwidth(device, args.quick)
    print(f"device {dev_name} | torch {torch.__version__} | triton {triton_version} | git {git_rev()} | "
          f"{dtype} | copy bandwidth {copy_gbps:.0f} GB/s")
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"patch_attention_{dev_name.replace(' ', '_')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    def dump(rows, done):
        with open(out + ".tmp", "w") as f:
            json.dump(dict(device=dev_name, torch=torch.__version__, triton=triton_version, git=git_rev(),
                           dtype=str(dtype), copy_gbps=copy_gbps, quick=args.quick, repeats=repeats,
                           absent_backends=absent, complete=done, rows=rows), f, indent=1)
        os.replace(out + ".tmp", out)

    rows = []
    for preset, mode, B in shapes(args.quick, on_gpu):
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            print(f"\nbudget of {args.budget_s:.0f} s spent: stopping before {preset} {mode} B={B}")
            break
        cfg = PRESETS[preset]
        M, q_start = (1, cfg.P // 2) if mode == "decode" else (cfg.P + 1, 0)
        inp = make_inputs(cfg, B, M, q_start, dtype, device, args.layers)
        nbytes, flops = work(inp)
        expect = ref.patch_attention(**{n: (x.float() if torch.is_tensor(x) and x.is_floating_point() else x)
                                        for n, x in inp.items()})
        impls = [("torch-ref", lambda: ref.patch_attention(**inp), None),
                 ("sdpa-gathered", lambda: sdpa_gathered(**inp), None)]
        if args.no_flex:
            impls.append(("flex", None, "--no-flex"))
        else:
            try:
                impls.append(("flex" + ("-compiled" if on_gpu else "-eager"), make_flex(inp, compiled=on_gpu), None))
            except Exception as e:                                           # noqa: BLE001
                impls.append(("flex", None, f"{type(e).__name__}: {str(e)[:80]}"))
        for name in ("triton", "cuda"):
            fn = kernels.get(name)
            impls.append((name, (lambda fn=fn: fn(**inp)) if fn else None, None if fn else absent.get(name)))
            if fn is not None and M == 1:          # the default split-K against none and 8 (one cluster)
                impls.append((f"{name}-nosplit", lambda fn=fn: fn(**inp, num_splits=1), None))
                impls.append((f"{name}-s8", lambda fn=fn: fn(**inp, num_splits=8), None))
        shape = f"{preset} {mode} B={B} H={cfg.heads} M={M} P={cfg.P} D={cfg.head_dim} C=25"
        print(f"\n{shape}  ({nbytes / 1e6:.1f} MB, {flops / 1e9:.2f} GFLOP)")
        print(f"  {'impl':16s} {'median ms':>10s} {'p10-p90 ms':>17s} {'GB/s':>8s} {'TFLOP/s':>8s} "
              f"{'% copy':>7s} {'max err':>9s}  speed-up vs ref / sdpa / flex")
        results = {}
        for name, fn, why in impls:
            row = dict(shape=shape, preset=preset, mode=mode, B=B, M=M, impl=name, bytes=nbytes, flops=flops)
            if fn is not None:
                try:
                    err = (fn().float() - expect).abs().max().item()
                    med, p10, p90 = timeit(fn, repeats, 0 if args.quick else 5, device)
                    row.update(median_s=med, p10_s=p10, p90_s=p90, max_err=err, gbps=nbytes / med / 1e9,
                               tflops=flops / med / 1e12, pct_copy=100 * nbytes / med / 1e9 / copy_gbps)
                    results[name.split("-")[0]] = med
                except Exception as e:                                       # noqa: BLE001
                    why = f"{type(e).__name__}: {str(e)[:80]}"
            if why is not None:
                row["skipped"] = why
                print(f"  {name:16s} skipped: {why}")
            else:
                sp = " / ".join(f"{results[o] / row['median_s']:.2f}x" if o in results else "-"
                                for o in ("torch", "sdpa", "flex"))
                print(f"  {name:16s} {med * 1e3:10.3f} {p10 * 1e3:8.3f}-{p90 * 1e3:<8.3f} {row['gbps']:8.3g} "
                      f"{row['tflops']:8.3g} {row['pct_copy']:6.1f}% {err:9.2e}  {sp}")
            rows.append(row)
        if "triton" in kernels:
            from nuwa_fast.kernels.patch_attention import CHOSEN_CONFIGS
            key = (mode, M, cfg.P, cfg.head_dim, str(dtype).replace("torch.", ""))
            print(f"  triton config: {CHOSEN_CONFIGS.get(key)}")
            rows[-1]["config"] = CHOSEN_CONFIGS.get(key)
        dump(rows, False)
        del inp, expect
        if on_gpu:
            torch.cuda.empty_cache()

    dump(rows, True)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
