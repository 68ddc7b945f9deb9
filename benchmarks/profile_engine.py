"""Profile a small generation: torch.profiler trace + NVTX ranges for Nsight (= `nuwa-fast profile`).

    nuwa-fast profile                                  # CPU: 2 patches of a 128x128 canvas, tiny preset
    nuwa-fast profile --device cuda --cuda-graphs off  # per-op ranges visible (graphs hide them)

Writes a Chrome trace (open in chrome://tracing or https://ui.perfetto.dev) and prints the op table.
NVTX ranges ("patch i (t,y,x)", "select+add+gather", "decode", "row s", "prefill", "write-back+remove",
and per op "... attention L<l>", "patch_attention L<l>", "sample") are pushed on CUDA, and the same
names are torch.profiler record_function ranges on every device. With --cuda-profiler-range the
measured generation is bracketed by cudaProfilerStart/Stop, for `nsys --capture-range=cudaProfilerApi`.
docs/performance.md ("Profiling with Nsight") has the nsys and ncu command lines.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]          # siblings and the repository, also when loaded by path


def build_parser():
    ap = argparse.ArgumentParser(prog="nuwa-fast profile", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", "-c", default="tiny")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--height", type=int, default=128, help="pixels (default 128)")
    ap.add_argument("--width", type=int, default=128, help="pixels (default 128)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--order", default="down")
    ap.add_argument("--max-patches", type=int, default=2, help="patches to generate (default 2; 0 = all)")
    ap.add_argument("--attention", default=None, help="paged | gathered | sdpa | flex (default: the engine's)")
    ap.add_argument("--backend", default=None, help="torch | triton | cuda")
    ap.add_argument("--cuda-graphs", choices=("on", "off"), default="on")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--no-torch-profiler", action="store_true",
                    help="no torch.profiler trace (use under nsys/ncu: the profiler's own CUPTI use interferes)")
    ap.add_argument("--cuda-profiler-range", action="store_true",
                    help="bracket the measured generation with cudaProfilerStart/Stop (nsys --capture-range)")
    ap.add_argument("--out-dir", default=os.path.join("out", "profile"),
                    help="where the Chrome trace goes (default out/profile under the current folder)")
    ap.add_argument("--rows", type=int, default=25, help="rows of the op table (default 25)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import nuwa_fast
    from nuwa_fast import adc, engine, nvtx
    from bench_common import device_name, setup_device
    from nuwa_fast.engine import TaskSpec

    device = setup_device(args)
    model = nuwa_fast.load(args.checkpoint, device=device)
    f, p = model.cfg.vq.f, model.cfg.patch
    grid = (1, -(-args.height // (f * p)), -(-args.width // (f * p)))
    spec = TaskSpec(grid=grid, order=adc.order(args.order, grid), prompts=[""] * args.batch)
    kw = dict(attention=args.attention, backend=args.backend, cuda_graphs=args.cuda_graphs == "on",
              max_patches=args.max_patches or None)

    engine.run(model, spec, seed=0, **dict(kw, max_patches=1))           # warm up (autotune, allocator)
    nvtx.enable(True)
    cuda = device.type == "cuda"
    if cuda and args.cuda_profiler_range:
        torch.cuda.cudart().cudaProfilerStart()
    t0 = time.perf_counter()
    if args.no_torch_profiler:
        _, st = engine.run(model, spec, seed=0, **kw)
        prof = None
    else:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=acts) as prof:
            _, st = engine.run(model, spec, seed=0, **kw)
    if cuda:
        torch.cuda.synchronize(device)
        if args.cuda_profiler_range:
            torch.cuda.cudart().cudaProfilerStop()
    wall = time.perf_counter() - t0
    nvtx.enable(False)
    print(f"profiled {st.patches} patches of {grid[1]}x{grid[2]} on {device_name(device)}: {wall:.2f} s, "
          f"{st.tokens_per_second:.0f} tokens/s, attention {st.attention}, backend {st.backend}, "
          f"cuda graphs {st.cuda_graphs}")
    if prof is not None:
        os.makedirs(args.out_dir, exist_ok=True)
        path = os.path.join(args.out_dir, f"trace_{device_name(device).replace(' ', '_')}.json")
        prof.export_chrome_trace(path)
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
        print(f"wrote {path} (chrome://tracing or https://ui.perfetto.dev)")
    return 0


if __name__ == "__main__":
    from nuwa_fast.errors import run_command
    raise SystemExit(run_command(main, None))
