"""pytest-benchmark suite: patch attention per backend and baseline, the NCP ops, the engine's row step.

    python3 -m pytest benchmarks/test_bench_kernels.py --benchmark-only -q      # not in the main run
    python3 -m pytest benchmarks/test_bench_kernels.py --benchmark-only --benchmark-json out/kernels.json

Shapes are those of benchmarks/bench_patch_attention.py (tiny preset, extent (0, 2, 2): C = 25 slots,
12 filled as for an interior patch in "down" order). Every implementation is checked against the
torch reference before it is timed. On a CPU the torch reference and the PyTorch baselines run (the
Triton interpreter is no timing); on a GPU also the triton and cuda backends, synchronised per call.
The row step is one decode row of the engine (all layers, sampling included) on the tiny preset.
"""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_patch_attention import make_flex, make_inputs, sdpa_gathered  # noqa: E402
from nuwa_fast import adc, engine, ops  # noqa: E402
from nuwa_fast.config import PRESETS  # noqa: E402
from nuwa_fast.ops import reference as ref  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def timed(fn):
    if not CUDA:
        return fn

    def synced():
        out = fn()
        torch.cuda.synchronize()
        return out
    return synced


def _backends():
    have = ops.available_backends()
    return ["torch"] + [b for b in ("triton", "cuda") if b in have and CUDA]


SHAPES = {"decode-B1": (1, "decode"), "decode-B16": (16, "decode"), "prefill-B1": (1, "prefill")}


def _inputs(shape):
    cfg = PRESETS["tiny"]
    B, mode = SHAPES[shape]
    M, q_start = (1, cfg.P // 2) if mode == "decode" else (cfg.P + 1, 0)
    return make_inputs(cfg, B, M, q_start, DTYPE, DEV)


def _check(out, inp):
    expect = ref.patch_attention(**{k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                                    for k, v in inp.items()})
    err = (out.float() - expect).abs().max().item()
    print(f"max err {err:.2e}")
    assert err < (2e-2 if DTYPE != torch.float32 else 1e-4)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", _backends())
def test_patch_attention(benchmark, shape, backend):
    inp = _inputs(shape)
    fn = ops.get("patch_attention", backend)
    _check(fn(**inp), inp)
    benchmark.group = f"patch_attention {shape}"
    benchmark(timed(lambda: fn(**inp)))


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", ["sdpa-gathered", "flex"])
def test_patch_attention_baselines(benchmark, shape, impl):
    inp = _inputs(shape)
    if impl == "flex":
        if not CUDA and SHAPES[shape][1] == "prefill":
            pytest.skip("eager flex prefill on a CPU: minutes, not informative")
        fn = make_flex(inp, compiled=CUDA)
    else:
        fn = lambda: sdpa_gathered(**inp)                                     # noqa: E731
    _check(fn(), inp)
    benchmark.group = f"patch_attention {shape}"
    benchmark(timed(fn))


@pytest.mark.parametrize("backend", _backends())
def test_ncp_select_add_remove(benchmark, backend):
    """One patch's worth of pool bookkeeping on a 64 x 64 canvas, "down" order, extent (0, 2, 2)."""
    from nuwa_fast import ncp
    grid, extent = (1, 64, 64), (0, 2, 2)
    plan = ncp.plan(adc.order("down", grid), extent, grid)
    pool = ncp.PagePool(plan.peak_pages, 1, 1, 1, 1, 1, 64 * 64, torch.float32, DEV, backend=backend)
    i = 64 * 10 + 10                                            # an interior patch
    for j in range(i):                                          # replay the plan up to step i
        cur = torch.tensor([ncp.linear(plan.order[j], grid)], dtype=torch.int32, device=DEV)
        pool.add(cur)
        pool.remove(torch.tensor(plan.freed[j] or [-1], dtype=torch.int32, device=DEV))
    cur = torch.tensor([ncp.linear(plan.order[i], grid)], dtype=torch.int32, device=DEV)
    none = torch.full((1,), -1, dtype=torch.int32, device=DEV)
    own = torch.tensor([ncp.linear(plan.order[i], grid)], dtype=torch.int32, device=DEV)

    def one_patch():                                            # select + add, then free that page again
        table = pool.select(cur, grid, extent)
        pool.add(cur)
        pool.remove(own)
        pool.remove(none)
        return table
    table = one_patch()
    assert int((table >= 0).sum()) == sum(s >= 0 for s in plan.slots[i])
    benchmark.group = "ncp select+add+remove"
    benchmark(timed(one_patch))


@pytest.fixture(scope="module")
def tiny():
    import nuwa_fast
    return nuwa_fast.load("tiny", device=DEV)


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("attention", ["gathered", "sdpa", "paged"])
def test_row_step(benchmark, tiny, attention, batch):
    """One decode row of the engine (all layers + sampling), an interior patch of a 16 x 16 canvas."""
    grid = (1, 16, 16)
    spec = engine.TaskSpec(grid=grid, order=adc.order("down", grid), prompts=[""] * batch)
    with torch.no_grad():                                      # as engine.run
        g = engine.prepare(tiny, spec, attention=attention, schedule="sequential")
        sched = g.scheduler
        for w in range(3):                                      # a few patches in, so the pool has pages
            for grp in sched.waves[w]:
                sched.run_group(grp)
            g.sh.pool.remove(sched.freed[w])
        grp = sched.waves[3][0]
        sched.select_add(grp)
        g.sh.load_lanes(sched.lane_steps[grp.offset:grp.offset + 1], grp.bucket)
        g.step.begin_group(None)
        s = tiny.cfg.P // 2
        benchmark.group = f"row step B={batch}"
        benchmark.extra_info.update(graphs=g.graphs, attention=attention)
        benchmark(timed(lambda: g.rows.row(s, grp.bucket)))
