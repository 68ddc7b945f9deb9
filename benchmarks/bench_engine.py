"""End-to-end engine benchmarks; `nuwa-fast bench` runs this file (nuwa_fast/tools.py).

    python3 benchmarks/bench_engine.py --quick   # CI-sized (30-40 s of CPU; under 2 min on a busy core)
    nuwa-fast bench --quick                  # the same
    nuwa-fast bench                          # the full tables (CPU: several minutes on one core)
    nuwa-fast bench --device cuda            # GPU (time-boxed by --budget-s, 60 s by default there)
    nuwa-fast bench --height 256 --width 1536 --batch 2     # your own canvas: the `shape` section only

JSON goes to --out, by default out/bench/engine_<device>.json under the current folder; the committed
tables in benchmarks/results/ are rewritten only with --save-results.

Sections (--sections, comma-separated; default all):
  memory     peak NCP pages and bytes from ncp.plan, every order x canvas 4x4 .. 64x64 and a 1x512
             strip, a height sweep and a width sweep for "down", and a full-context KV cache
  latency    steady-state per-patch latency as the canvas grows, every order (method below)
  fullctx    the same per-patch latency for a full-context KV cache (method below)
  modes      one generation with every attention mode (gathered, sdpa, flex, paged; + compiled):
             tokens/s, patches/s, same tokens as the oracle
  oracle     engine vs the naive oracle: tokens/s at 512x512 (8x8 patches, both to completion) and at
             16x16 patches (both on the first patches of the order), batch 1 and a larger batch
  e2e        end-to-end tokens/s and patches/s of the default engine, batch 1 and a larger batch
  shape      one generation of the canvas given by --height/--width/--frames/--batch/--order (after a
             one-patch warm-up): tokens/s, patches/s, seconds, peak pages; the default when a size is given

Latency method: to measure a patch whose context is full (steady state) without generating everything
before it, the first `ff` patches of the order are *given* (random known tokens, prefilled in one pass
each), where ff is the first step of ncp.plan at which the context holds the plan's maximum number of
pages; then k patches are decoded (max_patches = ff + k) and the median of their wall times (CUDA
events on a GPU) is the latency. The engine's step has fixed shapes (context padded to the plan's
maximum), so a decoded patch costs the same wherever it is; the fast-forward only makes that visibly so.

Full-context KV cache (what a plain transformer would do): a random model of the same width, layers
and heads whose trained extent covers the whole canvas, (0, Hg-1, Wg-1). Every earlier patch is then
in the context of every patch and no page is freed before the end: memory = all N pages, and the cost
of a patch grows with the number of patches before it. Latency: the last k patches of the canvas after
prefilling the N-k before them (the same fast-forward), so the context holds N-k..N-1 pages.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]          # siblings and the repository, also when loaded by path
from bench_common import ROOT, Budget, _out_of_time, env_info, setup_device  # noqa: E402
from engine_sections import DEFAULT_ORDER, SECTIONS  # noqa: E402


def build_parser():
    ap = argparse.ArgumentParser(prog="nuwa-fast bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (30-40 s of CPU; under 2 min on a busy core)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--checkpoint", "-c", default="tiny", help="checkpoint path or preset (default tiny)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads; default 1)")
    ap.add_argument("--batch", type=int, default=1, help="samples per call for shape/latency/modes (default 1)")
    ap.add_argument("--height", type=int, default=None, help="canvas height in pixels for `shape` (default 256)")
    ap.add_argument("--width", type=int, default=None, help="canvas width in pixels for `shape` (default 256)")
    ap.add_argument("--frames", type=int, default=1, help="frames for `shape` (default 1: an image)")
    ap.add_argument("--order", default="down", help="patch order for `shape` (default down)")
    ap.add_argument("--schedule", default=None,
                    help="engine schedule for `shape` (passed to engine.run; an error if this engine has none)")
    ap.add_argument("--big-batch", type=int, default=16, help="the larger batch of e2e/oracle (default 16)")
    ap.add_argument("--attention", default=None, help="engine attention mode (default: the engine's)")
    ap.add_argument("--cuda-graphs", choices=("on", "off"), default="on")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="a torch.compile row in `modes` (auto: full CPU runs; compiling takes 10-60 s)")
    ap.add_argument("--sections", default=None,
                    help=f"subset of {','.join(SECTIONS)} (default: shape when a size is given, else "
                         f"{','.join(DEFAULT_ORDER)})")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting new measurements after this many seconds (default: none on a CPU, 60 on a GPU)")
    ap.add_argument("--out", default=None, help="JSON path (default out/bench/engine_<device>.json)")
    ap.add_argument("--save-results", action="store_true",
                    help="write the committed table benchmarks/results/engine_<device>.json instead")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = setup_device(args)
    if args.budget_s is None and device.type == "cuda":
        args.budget_s = 60.0
    args.budget = Budget(args.budget_s)
    args.cuda_graphs = args.cuda_graphs == "on"
    if args.out and args.save_results:
        raise SystemExit("give --out or --save-results, not both")
    for name in ("height", "width", "frames", "batch"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise SystemExit(f"--{name} must be >= 1, got {v}")
    args.run_kw = {}
    if args.schedule is not None:
        import inspect
        from nuwa_fast import engine
        if "schedule" not in inspect.signature(engine.run).parameters:
            raise SystemExit(f"--schedule {args.schedule}: this engine has no schedule option")
        args.run_kw["schedule"] = args.schedule
    if args.sections is None:
        sized = args.height is not None or args.width is not None or args.frames != 1
        args.sections = "shape" if sized or args.schedule is not None else ",".join(DEFAULT_ORDER)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {sorted(SECTIONS)}")
    import nuwa_fast
    model = nuwa_fast.load(args.checkpoint, device=device)
    info = env_info(device)
    info.update(checkpoint=args.checkpoint, preset=model.cfg.name, quick=args.quick, batch=args.batch,
                big_batch=args.big_batch, attention=args.attention, cuda_graphs=args.cuda_graphs,
                config=json.loads(model.cfg.to_json()))
    name = info["device"].replace(" ", "_")
    path = args.out or (os.path.join(ROOT, "benchmarks", "results", f"engine_{name}.json") if args.save_results
                        else os.path.join("out", "bench", f"engine_{name}.json"))
    print(f"nuwa-fast bench | {info['device']} | torch {info['torch']} | triton {info['triton']} | git {info['git']} | "
          f"threads {info['threads']} | preset {model.cfg.name} | {'quick' if args.quick else 'full'}")
    result = dict(info)
    t0 = time.perf_counter()
    for s in [s for s in SECTIONS if s in sections]:
        if _out_of_time(args):
            result.setdefault("skipped", []).append(s)
            continue
        ts = time.perf_counter()
        try:
            SECTIONS[s](model, args, result)
        except Exception as e:                      # noqa: BLE001  (recorded in the JSON, the run goes on)
            result[s + "_error"] = f"{type(e).__name__}: {e}"[:500]
            print(f"\n[{s}] failed: {result[s + '_error']}")
        result.setdefault("section_seconds", {})[s] = time.perf_counter() - ts
        _write(path, result)                         # after every section: a timeout still leaves results
    result["total_seconds"] = time.perf_counter() - t0
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        result["loadavg_end"] = os.getloadavg()
    _write(path, result)
    print(f"\nwrote {path} ({result['total_seconds']:.0f} s)")
    return 0


def _write(path, result):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":
    from nuwa_fast.errors import run_command
    raise SystemExit(run_command(main, None))
