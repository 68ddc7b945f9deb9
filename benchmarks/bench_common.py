"""Shared helpers of the engine benchmarks (bench_engine.py, engine_sections.py, profile_engine.py):
environment and git revision of a result row, tables, the fast-forward spec, devices, time budgets."""
from __future__ import annotations

import os
import platform
import subprocess
import time

import numpy as np
import torch

from nuwa_fast import engine, ncp

ORDERS = ("down", "right", "up", "left", "outward")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))       # the repository


def git_rev():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):                    # no git, or not a checkout
        return "unknown"


def env_info(device):
    info = dict(device=device_name(device), torch=torch.__version__, git=git_rev(), python=platform.python_version(),
                threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cpu":
        info["cpu"] = _cpu_model()
        info["cpu_isa"] = cpu_isa()
        if hasattr(os, "getloadavg"):
            info["loadavg_start"] = os.getloadavg()
    return info


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_isa():
    """The widest vector ISA the CPU reports, as the fused CPU step is built for it (-march=native)."""
    from nuwa_fast.cpu_ext import _cpu_flags
    flags = _cpu_flags().split()
    for name in ("avx512_bf16", "avx512f", "avx2"):
        if name in flags:
            return name
    return "other"


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def table(title, rows, cols):
    """Print rows (dicts) as a fixed-width table: cols = [(key, header, fmt)]."""
    print(f"\n{title}")
    w = [max(len(h), *(len(_fmt(r.get(k), f)) for r in rows)) if rows else len(h) for k, h, f in cols]
    print("  " + "  ".join(h.rjust(n) for (_, h, _), n in zip(cols, w)))
    for r in rows:
        print("  " + "  ".join(_fmt(r.get(k), f).rjust(n) for (k, _, f), n in zip(cols, w)))


def _fmt(v, f):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return format(v, f)


def mib(b):
    return b / 2 ** 20


def page_bytes(cfg, dtype_size=4):
    """One logical page for one sample (ncp.page_bytes)."""
    return ncp.page_bytes(cfg, dtype_size)


def grid_extent(cfg, grid):
    """The checkpoint's extent clipped to the grid (engine.grid_extent)."""
    return engine.grid_extent(cfg.extent, grid)


def spec_for(cfg, grid, order="down", batch=1, given=0, seed=0):
    """A TaskSpec; the first `given` patches of the order get random known tokens (prefilled)."""
    from nuwa_fast import adc
    from nuwa_fast.engine import TaskSpec
    o = adc.order(order, grid)
    known = mask = None
    if given:
        p = cfg.patch
        T, H, W = grid
        known = np.random.default_rng(seed).integers(0, cfg.vq.codebook_size, (T, H * p, W * p))
        mask = np.zeros(known.shape, dtype=bool)
        for t, y, x in o[:given]:
            mask[t, y * p:(y + 1) * p, x * p:(x + 1) * p] = True
    return TaskSpec(grid=grid, order=o, prompts=[""] * batch, known=known, known_mask=mask)


def steady_start(cfg, grid, order):
    """First step of the order whose context holds the plan's maximum number of pages."""
    from nuwa_fast import adc, ncp
    plan = ncp.plan(adc.order(order, grid), grid_extent(cfg, grid), grid)
    filled = [sum(j >= 0 for j in s) for s in plan.slots]
    return filled.index(max(filled)), plan


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Budget:
    def __init__(self, seconds):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self):
        return float("inf") if self.seconds is None else self.seconds - (time.perf_counter() - self.t0)


def _compile_on(args, model):
    return args.compile == "on" or (args.compile == "auto" and not args.quick and model.device.type == "cpu")


def _out_of_time(args):
    left = args.budget.left()
    if left <= 0:
        print(f"  (budget of {args.budget_s:.0f} s spent: skipping the rest)")
        return True
    return False


def _print_last(row):
    if os.environ.get("NUWA_FAST_BENCH_VERBOSE"):
        print("   ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})


def setup_device(args) -> torch.device:
    """--device (default: cuda when present) and, on a CPU, --threads intra-op threads."""
    from nuwa_fast.checkpoint import check_device
    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads))
    return device
