"""Waves: every patch whose context is complete runs at once, and the tokens stay those of the
sequential schedule and of the oracle (every order, video, outpainting, animation, guidance, batch 2,
both model configs, torch and Triton). The plan's waves are checked as properties, and the paged
kernels are shown to take one page table per lane."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nuwa_fast import adc, engine, ncp, ops
from nuwa_fast.engine import TaskSpec
from models import small_model


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def plain():
    return small_model()


@pytest.fixture(scope="module")
def placed():
    return small_model(rope=True, layout=True, extent=(1, 2, 2))


# a patch is 12 px (f=4, p=3): 36 x 72 px = 3 x 6 patches, so waves hold several lanes
TASKS = {
    "down": lambda m, **kw: m.generate_image(["a red sky", "a lake"], height=36, width=72, order="down", batch=2,
                                             guidance=2.0, top_k=20, **kw),
    "right": lambda m, **kw: m.generate_image(None, height=36, width=60, order="right", batch=2, **kw),
    "up": lambda m, **kw: m.generate_image("hills", height=36, width=72, order="up", top_p=0.9, **kw),
    "left": lambda m, **kw: m.generate_image(None, height=48, width=48, order="left", **kw),
    "outward": lambda m, **kw: m.generate_image(None, height=48, width=60, order="outward", region=(1, 1, 2, 2),
                                                batch=2, **kw),
    "video": lambda m, **kw: m.generate_video("clouds drift", frames=3, height=24, width=48, order="down", **kw),
    "outpaint_bottom": lambda m, **kw: m.outpaint(rgb(24, 48), bottom=24, batch=2, **kw),
    "outpaint_around": lambda m, **kw: m.outpaint(rgb(24, 24), left=12, right=24, top=12, bottom=12, batch=2,
                                                  top_p=0.9, **kw),
    "animate": lambda m, **kw: m.animate(rgb(24, 36), frames=3, order="right", **kw),
}


def check(fast, ref):
    assert torch.equal(fast.tokens, ref.tokens), (fast.tokens != ref.tokens).float().mean()
    assert fast.stats.extra["pages_left"] == 0
    assert fast.stats.peak_pages == fast.stats.extra["plan_peak_pages"]
    assert fast.stats.generated_tokens == ref.stats.generated_tokens


@pytest.mark.parametrize("task", list(TASKS))
def test_waves_equal_sequential_and_oracle(plain, task):
    waves = TASKS[task](plain, seed=5)
    seq = TASKS[task](plain, seed=5, schedule="sequential")
    slow = TASKS[task](plain, seed=5, oracle=True)
    paged = TASKS[task](plain, seed=5, attention="paged")
    print(task, "waves", waves.stats.waves, "patches", waves.stats.patches, "mean lanes", waves.stats.mean_lanes)
    for r in (seq, slow, paged):
        assert torch.equal(waves.tokens, r.tokens)
    check(waves, seq)
    check(paged, seq)
    assert seq.stats.waves == seq.stats.patches and seq.stats.schedule == "sequential"
    assert waves.stats.waves < waves.stats.patches and waves.stats.mean_lanes > 1


@pytest.mark.parametrize("attention", ["gathered", "paged"])
@pytest.mark.parametrize("task", ["down", "outward", "outpaint_around", "animate", "video"])
def test_waves_with_placement_equal_oracle(placed, task, attention):
    """Each lane carries its own rope/layout row (its patch's coordinates, height and direction)."""
    waves = TASKS[task](placed, seed=2, attention=attention)
    slow = TASKS[task](placed, seed=2, oracle=True)
    check(waves, slow)
    if task != "animate":                  # 2 x 3 patches, extent (1, 2, 2): every patch sees all earlier ones
        assert waves.stats.mean_lanes > 1


@pytest.mark.parametrize("mode", ["sdpa", "flex"])
def test_waves_other_modes(plain, mode):
    fast = TASKS["outpaint_around"](plain, seed=1, attention=mode)
    ref = TASKS["outpaint_around"](plain, seed=1, schedule="sequential")
    check(fast, ref)


@pytest.mark.skipif("triton" not in ops.available_backends(), reason="triton (or its interpreter) missing")
def test_waves_triton_equal_sequential(placed):
    """The Triton paged kernel with one page-table row per lane (interpreter on a CPU: tiny shape)."""
    run = lambda **kw: placed.generate_image(None, height=24, width=48, order="down", backend="triton", seed=4, **kw)
    waves, seq = run(), run(schedule="sequential")
    slow = placed.generate_image(None, height=24, width=48, order="down", seed=4, oracle=True)
    assert waves.stats.extra["attention"] == "paged" and waves.stats.waves < waves.stats.patches
    check(waves, seq)
    assert torch.equal(waves.tokens, slow.tokens)


@pytest.mark.parametrize("max_lanes", [1, 2])
def test_lane_cap_splits_waves_same_tokens(plain, max_lanes):
    ref = TASKS["outward"](plain, seed=3, schedule="sequential")
    capped = TASKS["outward"](plain, seed=3, max_lanes=max_lanes)
    check(capped, ref)
    assert capped.stats.extra["max_lanes"] == max_lanes
    if max_lanes == 1:                     # one lane per wave, in wave order (not the order's)
        assert capped.stats.waves == capped.stats.patches


@pytest.mark.parametrize("attention", ["gathered", "paged"])
def test_padded_lane_buckets_same_tokens(plain, attention):
    """CUDA graphs run a group rounded up to a power-of-two bucket of lanes; the padding lanes (no
    context, a spare own page) must not change a real lane's tokens. Forced on the CPU here."""
    placed = plain
    grid = (1, 5, 10)                       # widest wave 5: buckets 1, 2, 4, 5, so 3 lanes pad to 4
    order = adc.order("down", grid)
    spec = TaskSpec(grid=grid, order=order, prompts=["a", "b"], directions=adc.directions("down", grid))
    out, _ = engine.run(placed, spec, seed=1, attention=attention, schedule="sequential")
    with torch.no_grad():
        g = engine.prepare(placed, spec, seed=1, attention=attention, lane_buckets=True)
        sizes = {grp.bucket - len(grp.steps) for groups in g.scheduler.waves for grp in groups}
        assert max(sizes) > 0                                         # some group really is padded
        g.scheduler.run()
    assert torch.equal(g.sh.out, out)
    assert g.sh.pool.in_use() == 0


def test_on_patch_counts_patches(plain):
    seen = []
    grid = (1, 3, 6)
    spec = TaskSpec(grid=grid, order=adc.order("down", grid), prompts=[""])
    _, st_ = engine.run(plain, spec, on_patch=lambda done, total, *_: seen.append((done, total)))
    assert len(seen) == st_.waves and seen[-1] == (18, 18)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_bad_schedule_and_lanes_are_clear_errors(plain):
    with pytest.raises(ValueError, match=r"schedule must be one of \['waves', 'sequential'\]"):
        plain.generate_image(None, height=12, width=12, schedule="fast")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_lanes must be a whole number >= 1"):
            plain.generate_image(None, height=12, width=12, max_lanes=bad)
    with pytest.raises(ValueError, match="schedule must be one of"):
        ncp.plan(adc.order("down", (1, 2, 2)), (0, 1, 1), (1, 2, 2), schedule="parallel")


# ---- the plan ----------------------------------------------------------------------------------------
def test_wave_counts_and_frontier_of_down():
    """(W-1) + (e_w+1)(H-1) + 1 waves for "down"; the frontier stays within 1.5x of sequential."""
    for H, W, e in ((16, 16, (0, 2, 2)), (64, 64, (0, 2, 2)), (16, 16, (1, 2, 2))):
        o = adc.order("down", (1, H, W))
        pw, ps = ncp.plan(o, e, (1, H, W), "waves"), ncp.plan(o, e, (1, H, W))
        assert len(pw.waves) == (W - 1) + (e[2] + 1) * (H - 1) + 1
        assert ps.peak_pages <= pw.peak_pages <= 1.5 * ps.peak_pages
    assert len(ncp.plan(adc.order("down", (1, 16, 16)), (0, 2, 2), (1, 16, 16), "waves").waves) == 61


@st.composite
def scheduled(draw):
    T, H, W = draw(st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)))
    extent = draw(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 3)))
    name = draw(st.sampled_from(adc.ORDERS))
    region = None
    if name == "outward":
        y0, y1 = sorted(draw(st.tuples(st.integers(0, H - 1), st.integers(0, H - 1))))
        x0, x1 = sorted(draw(st.tuples(st.integers(0, W - 1), st.integers(0, W - 1))))
        region = (y0, x0, y1, x1)
    return (T, H, W), extent, adc.order(name, (T, H, W), region), draw(st.sampled_from([None, 1, 2, 3]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheduled())
def test_waves_plan_properties(case):
    grid, extent, o, cap = case
    seq, pw = ncp.plan(o, extent, grid), ncp.plan(o, extent, grid, "waves", cap)
    assert pw.slots == seq.slots                                       # the selection is the sequential one
    assert sorted(i for w in pw.waves for i in w) == list(range(len(o)))
    assert cap is None or pw.max_lanes <= cap
    wave_of = {i: w for w, steps in enumerate(pw.waves) for i in steps}
    step_of = {ncp.linear(p, grid): i for i, p in enumerate(o)}
    freed_at = {j: w for w, fs in enumerate(pw.freed) for j in fs}
    assert sorted(freed_at) == sorted(step_of)                         # every page freed exactly once
    live = set()
    for w, steps in enumerate(pw.waves):
        for i in steps:
            for j in pw.slots[i]:
                if j >= 0:
                    assert wave_of[step_of[j]] < w                     # its context is finished before
                    assert freed_at[j] >= w                            # and not freed before this use
            live.add(ncp.linear(o[i], grid))
        assert len(live) == pw.live[w]
        live -= set(pw.freed[w])
    assert not live


@pytest.mark.parametrize("backend", [b for b in ("torch", "triton") if b in ops.available_backends("ncp_select")])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(grid=st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4)),
       extent=st.tuples(st.integers(0, 1), st.integers(0, 2), st.integers(0, 2)),
       name=st.sampled_from(adc.ORDERS), batch=st.integers(1, 2))
def test_device_pool_follows_the_waves(backend, grid, extent, name, batch):
    """select/add/remove on the device tables, wave by wave: each lane sees its sequential selection,
    the pool's live pages are the plan's, and it ends with every page free."""
    o = adc.order(name, grid)
    pw = ncp.plan(o, extent, grid, "waves")
    pool = ncp.PagePool(pw.peak_pages, batch, 1, 1, 1, 1, len(o), torch.float32, "cpu", backend=backend)
    page = {}
    for w, steps in enumerate(pw.waves):
        for i in steps:
            cur = torch.tensor([ncp.linear(o[i], grid)], dtype=torch.int32)
            table = pool.select(cur, grid, extent)
            for c, j in enumerate(pw.slots[i]):
                assert table[:, c].tolist() == ([-1] * batch if j < 0 else [page[j] * batch + b for b in range(batch)])
            page[ncp.linear(o[i], grid)] = int(pool.add(cur)[0]) // batch
        assert pool.in_use() == pw.live[w]
        pool.remove(torch.tensor(pw.freed[w] + [-1], dtype=torch.int32))
    assert pool.in_use() == 0 and int(pool.peak) == pw.peak_pages


# ---- the kernels take one page table per lane --------------------------------------------------------
@pytest.mark.parametrize("backend", ops.available_backends())
def test_patch_attention_lanes_equal_one_lane_at_a_time(backend):
    """Three lanes x two samples in one call, each row with its own page table and own page, equal
    each lane run alone (the batch a wave sends to the kernels)."""
    dev = "cuda" if backend == "cuda" else "cpu"
    g = torch.Generator().manual_seed(0)
    H, P, D, C, N, lanes, Bt = 2, 9, 8, 9, 20, 3, 2
    k = torch.randn(N, H, P, D, generator=g).to(dev)
    v = torch.randn(N, H, P, D, generator=g).to(dev)
    table = torch.randint(-1, N, (lanes * Bt, C), generator=g, dtype=torch.int32).to(dev)
    own = torch.randperm(N, generator=g)[:lanes * Bt].to(torch.int32).to(dev)
    bias = torch.randn(C, H, generator=g).to(dev)
    nk, nv = torch.randn(H, D, generator=g).to(dev), torch.randn(H, D, generator=g).to(dev)
    for q_start, M in ((4, 1), (1, P)):
        q = torch.randn(lanes * Bt, H, M, D, generator=g).to(dev)
        out = ops.patch_attention(q, k, v, table, own, q_start, bias, C // 2, nk, nv, 0.3, backend=backend)
        for ln in range(lanes):
            r = slice(ln * Bt, (ln + 1) * Bt)
            one = ops.patch_attention(q[r], k, v, table[r], own[r], q_start, bias, C // 2, nk, nv, 0.3,
                                      backend=backend)
            err = (out[r] - one).abs().max().item()
            print(backend, q_start, M, "lane", ln, "max err", err)
            assert err < 1e-5


@pytest.mark.parametrize("attention", ["gathered", "paged"])
def test_bf16_weights_on_cpu(placed, attention):
    """bf16 weights with layout and rope: every activation stays bf16 (CPU layer_norm takes no mixed
    dtypes), and waves give the sequential schedule's tokens."""
    m = small_model(rope=True, layout=True, extent=(1, 2, 2)).to(torch.bfloat16)
    from nuwa_fast.model import Where
    assert m.decoder.place(Where.of((1, 2), 3, 0, 2)).add.dtype == torch.bfloat16
    kw = dict(height=36, width=72, order="down", seed=3, attention=attention)
    waves = m.generate_image("a lake", **kw)
    seq = m.generate_image("a lake", schedule="sequential", **kw)
    assert torch.equal(waves.tokens, seq.tokens)
    assert int(waves.tokens.min()) >= 0 and int(waves.tokens.max()) < m.cfg.vq.codebook_size
    assert waves.stats.waves < waves.stats.patches
