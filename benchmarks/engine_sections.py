"""The sections of the engine benchmark (bench_engine.py documents each and its method)."""
from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from bench_common import (ORDERS, _compile_on, _out_of_time, _print_last, grid_extent, mib, page_bytes, spec_for,
                          steady_start, table)


def sec_memory(model, args, out):
    """Peak pages from ncp.plan (no generation)."""
    from nuwa_fast import adc, ncp
    cfg = model.cfg
    pb = page_bytes(cfg, torch.finfo(model.decoder.start.dtype).bits // 8)
    canvases = [(4, 4), (8, 8), (16, 16), (64, 64), (1, 512)] if args.quick else \
        [(4, 4), (8, 8), (16, 16), (32, 32), (64, 64), (1, 512)]
    rows = []
    for h, w in canvases:
        grid = (1, h, w)
        for order in ORDERS:
            ext = grid_extent(cfg, grid)
            plan = ncp.plan(adc.order(order, grid), ext, grid)
            rows.append(dict(canvas=f"{h}x{w}", order=order, patches=h * w, peak_pages=plan.peak_pages,
                             pool_mib=mib(plan.peak_pages * pb), full_ctx_pages=h * w,
                             full_ctx_mib=mib(h * w * pb)))
    table(f"Peak NCP pages (ncp.plan, extent {cfg.extent} clamped to the canvas; 1 sample, "
          f"{pb / 2 ** 10:.0f} KiB/page) vs a full-context KV cache (every patch kept)", rows,
          [("canvas", "canvas", ""), ("order", "order", ""), ("patches", "patches", "d"),
           ("peak_pages", "NCP pages", "d"), ("pool_mib", "NCP MiB", ".1f"), ("full_ctx_pages", "full pages", "d"),
           ("full_ctx_mib", "full MiB", ".1f")])
    sweep = []
    sizes = [4, 16, 64, 256]
    for fixed, axis in ((16, "height"), (16, "width")):
        for v in sizes:
            h, w = (v, fixed) if axis == "height" else (fixed, v)
            grid = (1, h, w)
            plan = ncp.plan(adc.order("down", grid), grid_extent(cfg, grid), grid)
            sweep.append(dict(sweep=axis, canvas=f"{h}x{w}", peak_pages=plan.peak_pages,
                              pool_mib=mib(plan.peak_pages * pb)))
    table('"down": peak pages vs height (width 16) and vs width (height 16)', sweep,
          [("sweep", "sweep", ""), ("canvas", "canvas", ""), ("peak_pages", "pages", "d"), ("pool_mib", "MiB", ".1f")])
    out["memory"] = dict(page_bytes=pb, rows=rows, down_sweep=sweep)


def measure_latency(model, grid, order, k, args, budget=None, full_context=False, **run_kw):
    """Median decode wall time of k steady-state patches (module docstring). Returns a dict."""
    from nuwa_fast import engine
    cfg = model.cfg
    N = grid[0] * grid[1] * grid[2]
    if full_context:
        ff = max(N - k, 0)
        plan_pages = N
    else:
        ff, plan = steady_start(cfg, grid, order)
        ff = min(ff, max(N - k, 0))
        plan_pages = plan.peak_pages
    spec = spec_for(cfg, grid, order, batch=args.batch, given=ff)
    t0 = time.perf_counter()
    _, st = engine.run(model, spec, seed=0, max_patches=min(ff + k, N), patch_times=True, schedule="sequential",
                       **run_kw)
    times = st.patch_seconds[ff:]
    row = dict(canvas=f"{grid[1]}x{grid[2]}" + (f"x{grid[0]}f" if grid[0] > 1 else ""), order=order,
               patches=N, fast_forward=ff, measured=len(times), peak_pages=plan_pages,
               latency_ms=1e3 * statistics.median(times) if times else None,
               spread_ms=(1e3 * min(times), 1e3 * max(times)) if times else None,
               pool_mib=mib(st.pool_bytes), staging_mib=mib(st.staging_bytes),
               run_s=time.perf_counter() - t0, attention=st.attention)
    if model.device.type == "cuda":
        row["max_allocated_mib"] = mib(torch.cuda.max_memory_allocated(model.device))
    return row


def sec_latency(model, args, out):
    """Every (canvas, order) cell, in `rounds` interleaved rounds (the machine's load drifts over minutes,
    so a ratio is taken between cells of the same round); per cell the median over rounds."""
    if args.quick:
        canvases, orders, k, rounds = [(4, 4), (64, 64)], ["down"], 3, 1
    else:
        canvases = [(4, 4), (8, 8), (16, 16), (32, 32), (64, 64), (1, 512)]
        orders, k, rounds = list(ORDERS), 4, 3
    cells = {}
    for r in range(rounds):
        for order in orders:
            for h, w in canvases:
                if _out_of_time(args):
                    break
                row = measure_latency(model, (1, h, w), order, k, args, attention=args.attention,
                                      cuda_graphs=args.cuda_graphs)
                _print_last(row)
                cells.setdefault((row["canvas"], order), []).append(row)
    rows = []
    for (canvas, order), runs in cells.items():
        row = dict(runs[-1])
        lat = [x["latency_ms"] for x in runs if x["latency_ms"]]
        row.update(latency_ms=statistics.median(lat) if lat else None, rounds_ms=lat)
        base = cells.get(("4x4", order), [])
        ratios = [x["latency_ms"] / b["latency_ms"] for x, b in zip(runs, base) if x["latency_ms"] and b["latency_ms"]]
        row["vs_4x4"] = statistics.median(ratios) if ratios else None
        row.pop("run_s", None)
        rows.append(row)
    table(f"Steady-state per-patch latency (batch {args.batch}, {rows[0]['attention'] if rows else ''}; median "
          f"of k decoded patches after prefilling ff; median of {rounds} interleaved rounds; vs 4x4: median of "
          f"same-round ratios)", rows,
          [("canvas", "canvas", ""), ("order", "order", ""), ("fast_forward", "ff", "d"), ("measured", "k", "d"),
           ("latency_ms", "ms/patch", ".1f"), ("vs_4x4", "vs 4x4", ".2f"), ("peak_pages", "pages", "d"),
           ("pool_mib", "pool MiB", ".1f"), ("staging_mib", "staging MiB", ".1f")])
    out["latency"] = rows


def sec_fullctx(model, args, out):
    import nuwa_fast
    sizes = [2, 4] if args.quick else [2, 4, 8, 16]
    k = 2 if args.quick else 3
    rows = []
    for s in sizes:
        if _out_of_time(args):
            break
        grid = (1, s, s)
        cfg = dataclasses.replace(model.cfg, extent=(0, s - 1, s - 1), name="full-context")
        full = nuwa_fast.load(cfg, device=model.device)
        r = measure_latency(full, grid, "down", k, args, full_context=True, attention=args.attention,
                            cuda_graphs=args.cuda_graphs)
        r["kind"] = "full-context"
        rows.append(r)
        _print_last(r)
        ours = measure_latency(model, grid, "down", k, args, attention=args.attention, cuda_graphs=args.cuda_graphs)
        ours["kind"] = "NCP"
        rows.append(ours)
        _print_last(ours)
        del full
    table("Full-context KV cache (extent = whole canvas, last k patches) vs NCP, \"down\"", rows,
          [("kind", "cache", ""), ("canvas", "canvas", ""), ("peak_pages", "pages", "d"),
           ("latency_ms", "ms/patch", ".1f"), ("pool_mib", "pool MiB", ".1f"), ("staging_mib", "staging MiB", ".1f")])
    out["full_context"] = rows


def _gen(model, grid, batch, oracle=False, max_patches=None, seed=0, **kw):
    """Generate `grid` (no given patches); returns (tokens, seconds, generated tokens, patches)."""
    from nuwa_fast import engine
    from nuwa_fast import oracle as orc
    spec = spec_for(model.cfg, grid, "down", batch=batch)
    if oracle:
        if max_patches is not None:
            spec.order = spec.order[:max_patches]        # the oracle on a prefix of the order
        tok, st = orc.run(model, spec, seed=seed)
    else:
        tok, st = engine.run(model, spec, seed=seed, max_patches=max_patches, **kw)
    return tok, st


def _rate(st):
    return dict(seconds=st.seconds, patches=st.patches, tokens=st.generated_tokens,
                tokens_per_s=st.generated_tokens / st.seconds, patches_per_s=st.patches / st.seconds,
                ms_per_patch=1e3 * st.seconds / max(st.patches, 1))


def sec_modes(model, args, out):
    on_gpu = model.device.type == "cuda"
    grid = (1, 2, 2) if args.quick else (1, 4, 4)
    ref, rst = (None, None)
    if not on_gpu or not args.quick:
        ref, rst = _gen(model, grid, args.batch, oracle=True)
    from nuwa_fast import ops
    variants = [("gathered", {}), ("sdpa", {}), ("flex", {})]
    variants += [(f"paged/{b}", {"backend": b}) for b in ops.available_backends()
                 if on_gpu or b == "torch"]
    if _compile_on(args, model):
        variants.append(("gathered+compile", {"compile_step": True}))
        variants.append(("sdpa+compile", {"compile_step": True}))
    rows = []
    if rst is not None:
        rows.append(dict(mode="oracle", **_rate(rst), same_as_oracle="-"))
    for name, kw in variants:
        if _out_of_time(args):
            break
        mode = name.split("/")[0].split("+")[0]
        try:
            if kw.get("compile_step"):                   # compile outside the timing, same shapes
                t0 = time.perf_counter()
                _gen(model, grid, args.batch, attention=mode, max_patches=1, **kw)
                compile_s = time.perf_counter() - t0
            else:
                _gen(model, (1, 1, 1), args.batch, attention=mode, cuda_graphs=args.cuda_graphs, **kw)  # warm up
                compile_s = None
            tok, st = _gen(model, grid, args.batch, attention=mode, cuda_graphs=args.cuda_graphs, **kw)
            row = dict(mode=name, **_rate(st), compile_s=compile_s,
                       same_as_oracle=None if ref is None else bool(torch.equal(tok.cpu(), ref.cpu())))
        except Exception as e:                                          # noqa: BLE001
            row = dict(mode=name, error=f"{type(e).__name__}: {str(e)[:200]}")
        rows.append(row)
        _print_last(row)
    table(f"Attention modes, {grid[1]}x{grid[2]} patches, batch {args.batch} (tiny preset)", rows,
          [("mode", "mode", ""), ("tokens_per_s", "tokens/s", ".0f"), ("patches_per_s", "patches/s", ".2f"),
           ("ms_per_patch", "ms/patch", ".1f"), ("compile_s", "compile s", ".0f"), ("same_as_oracle", "= oracle", "")])
    out["modes"] = rows


def sec_oracle(model, args, out):
    """Engine vs the naive oracle, tokens/s (the oracle recomputes every patch's context from scratch)."""
    rows = []
    cases = [((1, 2, 2), 1, None, None)] if args.quick else \
        [((1, 8, 8), 1, None, None),                 # 512x512 at f=8, p=8: both to completion
         ((1, 16, 16), 1, 32, 4),                    # first 32 (engine) / 4 (oracle) patches of the order
         ((1, 16, 16), args.big_batch, 8, 1),
         ((1, 16, 16), 4 * args.big_batch, 4, 1)]
    for grid, batch, n_engine, n_oracle in cases:
        if _out_of_time(args):
            break
        _gen(model, (1, 1, 1), batch, attention=args.attention)             # warm up
        _, est = _gen(model, grid, batch, max_patches=n_engine, attention=args.attention, cuda_graphs=args.cuda_graphs)
        _, ost = _gen(model, grid, batch, oracle=True, max_patches=n_oracle)
        e, o = _rate(est), _rate(ost)
        row = dict(canvas=f"{grid[1]}x{grid[2]}", pixels=f"{grid[1] * model.cfg.patch_pixels}x"
                   f"{grid[2] * model.cfg.patch_pixels}", batch=batch, engine_patches=e["patches"],
                   oracle_patches=o["patches"], engine_tok_s=e["tokens_per_s"], oracle_tok_s=o["tokens_per_s"],
                   speedup=e["tokens_per_s"] / o["tokens_per_s"], engine_ms_patch=e["ms_per_patch"],
                   oracle_ms_patch=o["ms_per_patch"])
        if _compile_on(args, model) and batch == 1:     # the compiled step, compiled outside the timing
            _gen(model, grid, batch, max_patches=1, compile_step=True, attention=args.attention)
            _, cst = _gen(model, grid, batch, max_patches=n_engine, compile_step=True, attention=args.attention)
            c = _rate(cst)
            row.update(compiled_tok_s=c["tokens_per_s"], compiled_speedup=c["tokens_per_s"] / o["tokens_per_s"])
        rows.append(row)
        _print_last(row)
    table("Engine vs naive oracle, tokens/s (oracle on a prefix of the order where patches < canvas)", rows,
          [("canvas", "patches", ""), ("pixels", "pixels", ""), ("batch", "B", "d"),
           ("engine_patches", "eng n", "d"), ("oracle_patches", "orc n", "d"),
           ("engine_tok_s", "engine tok/s", ".0f"), ("oracle_tok_s", "oracle tok/s", ".1f"),
           ("speedup", "speed-up", ".1f"), ("engine_ms_patch", "eng ms/patch", ".0f"),
           ("oracle_ms_patch", "orc ms/patch", ".0f"), ("compiled_tok_s", "compiled tok/s", ".0f"),
           ("compiled_speedup", "compiled speed-up", ".1f")])
    out["oracle"] = rows


def sec_e2e(model, args, out):
    grids = [(1, 2, 2)] if args.quick else [(1, 4, 4), (1, 8, 8)]
    batches = [1, args.big_batch] if not args.quick else [1, 4]
    rows = []
    for grid in grids:
        for b in batches:
            if _out_of_time(args):
                break
            _gen(model, (1, 1, 1), b, attention=args.attention, cuda_graphs=args.cuda_graphs)
            _, st = _gen(model, grid, b, attention=args.attention, cuda_graphs=args.cuda_graphs)
            row = dict(canvas=f"{grid[1]}x{grid[2]}", batch=b, **_rate(st), peak_pages=st.peak_pages,
                       pool_mib=mib(st.pool_bytes), capture_s=st.capture_seconds)
            rows.append(row)
            _print_last(row)
    table(f"End to end ({args.attention or 'default'} attention): whole canvas, all samples", rows,
          [("canvas", "patches", ""), ("batch", "B", "d"), ("tokens_per_s", "tokens/s", ".0f"),
           ("patches_per_s", "patches/s", ".2f"), ("seconds", "s", ".1f"), ("peak_pages", "pages", "d"),
           ("pool_mib", "pool MiB", ".1f"), ("capture_s", "graph capture s", ".2f")])
    out["e2e"] = rows


def user_grid(cfg, args):
    """--height/--width (pixels, default 256) and --frames -> patch grid (T, Hg, Wg)."""
    def tokens(px):
        return -(-px // cfg.vq.f)
    h, w = tokens(args.height or 256), tokens(args.width or 256)
    return (args.frames, -(-h // cfg.patch), -(-w // cfg.patch))


def sec_shape(model, args, out):
    from nuwa_fast import engine
    grid = user_grid(model.cfg, args)
    kw = dict(attention=args.attention, cuda_graphs=args.cuda_graphs, compile_step=args.compile == "on",
              **args.run_kw)
    spec = spec_for(model.cfg, grid, args.order, batch=args.batch)
    engine.run(model, spec_for(model.cfg, (1, 1, 1), args.order, batch=args.batch), **kw)    # warm-up
    _, st = engine.run(model, spec, seed=0, **kw)
    row = dict(height=args.height or 256, width=args.width or 256, frames=args.frames, batch=args.batch,
               order=args.order, canvas=f"{grid[0]}x{grid[1]}x{grid[2]}", **_rate(st), peak_pages=st.peak_pages,
               pool_mib=mib(st.pool_bytes), attention=st.attention, backend=st.backend,
               compiled=st.compiled, **args.run_kw)
    _print_last(row)
    table(f"Your canvas: {row['width']} x {row['height']} px, {args.frames} frame(s), batch {args.batch}, "
          f"order {args.order}", [row],
          [("canvas", "T x Hg x Wg", ""), ("tokens_per_s", "tokens/s", ".0f"), ("patches_per_s", "patches/s", ".2f"),
           ("seconds", "s", ".2f"), ("peak_pages", "pages", "d"), ("pool_mib", "pool MiB", ".1f")])
    out["shape"] = row


SECTIONS = {"memory": sec_memory, "e2e": sec_e2e, "latency": sec_latency, "modes": sec_modes,
            "oracle": sec_oracle, "fullctx": sec_fullctx, "shape": sec_shape}
DEFAULT_ORDER = ("memory", "e2e", "latency", "modes", "oracle", "fullctx")


