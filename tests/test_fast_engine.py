"""The fast engine: every attention mode against the oracle, max_patches, and the GPU-only checks
(no host sync in the patch loop, CUDA graphs == eager). Timings live in benchmarks/, not here."""
import numpy as np
import pytest
import torch

from nuwa_fast import adc, engine, ncp, oracle
from nuwa_fast.engine import TaskSpec
from nuwa_fast.sampling import Sampling
from models import small_model

MODES = ["gathered", "sdpa", "flex", "paged"]
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny shapes: intra-op threads only add OpenMP barriers, which stall for seconds on a shared,
    oversubscribed CPU (measured here: 194 s vs 6 s for the same 8 tests)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return small_model()


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


TASKS = {   # each exercises something else: context at every side, given + partly known patches, CFG, frames
    "outward": lambda m, **kw: m.generate_image(None, height=13, width=30, order="outward", batch=2, **kw),
    "outpaint": lambda m, **kw: m.outpaint(rgb(14, 12), right=9, bottom=5, batch=2, top_p=0.9, **kw),
    "cfg": lambda m, **kw: m.generate_image(["a red sky", "a lake"], height=20, width=22, order="right", batch=2,
                                            guidance=2.0, top_k=20, **kw),
    "animate": lambda m, **kw: m.animate(rgb(13, 10), frames=3, order="left", **kw),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("task", list(TASKS))
def test_mode_equals_oracle(model, task, mode):
    fast = TASKS[task](model, seed=7, attention=mode)
    slow = TASKS[task](model, seed=7, oracle=True)
    print(task, mode, "mismatch", (fast.tokens != slow.tokens).float().mean().item())
    assert torch.equal(fast.tokens, slow.tokens)
    assert fast.stats.extra["attention"] == mode
    assert fast.stats.extra["pages_left"] == 0
    assert fast.stats.peak_pages == fast.stats.extra["plan_peak_pages"]
    assert fast.stats.generated_tokens == slow.stats.generated_tokens


@pytest.mark.parametrize("mode", ["gathered", "paged"])
def test_nan_in_unused_pages_never_leaks(model, mode, monkeypatch):
    """vLLM's trick: fill the pool with NaN; pages that are not (yet) written must never be read."""
    init = ncp.PagePool.__init__

    def nan_init(self, *a, **kw):
        init(self, *a, **kw)
        self.pages.fill_(float("nan"))

    monkeypatch.setattr(ncp.PagePool, "__init__", nan_init)
    fast = TASKS["outward"](model, seed=1, attention=mode)
    monkeypatch.undo()
    slow = TASKS["outward"](model, seed=1, oracle=True)
    assert torch.equal(fast.tokens, slow.tokens)


def _spec(model, grid=(1, 3, 4), order="down", batch=2):
    return TaskSpec(grid=grid, order=adc.order(order, grid), prompts=[""] * batch)


@pytest.mark.parametrize("mode", ["gathered", "paged"])
def test_max_patches(model, mode):
    spec = _spec(model)
    full, _ = engine.run(model, spec, seed=2, attention=mode)
    part, st = engine.run(model, spec, seed=2, attention=mode, max_patches=5, patch_times=True)
    p = model.cfg.patch
    assert st.patches == 5 and st.extra["patches_total"] == 12
    assert len(st.extra["patch_seconds"]) == 5
    assert st.generated_tokens == 5 * 2 * model.cfg.P
    done = torch.zeros_like(full, dtype=torch.bool)
    for (t, y, x) in spec.order[:5]:
        done[:, t, y * p:(y + 1) * p, x * p:(x + 1) * p] = True
    assert torch.equal(part[done], full[done])                 # the same patches, the same tokens
    assert (part[~done] == 0).all()                            # the rest never touched
    none, st0 = engine.run(model, spec, seed=2, attention=mode, max_patches=0)
    assert st0.patches == 0 and (none == 0).all()
    big, _ = engine.run(model, spec, seed=2, attention=mode, max_patches=10 ** 6)
    assert torch.equal(big, full)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_max_patches_bad(model, bad):
    with pytest.raises(ValueError, match="max_patches"):
        engine.run(model, _spec(model), max_patches=bad)


def test_bad_mode(model):
    with pytest.raises(ValueError, match="attention must be one of"):
        engine.run(model, _spec(model), attention="dense")
    with pytest.raises(ValueError, match="sync_debug"):
        engine.run(model, _spec(model), sync_debug="loud")


def test_cuda_graphs_flag_ignored_on_cpu(model):
    spec = _spec(model, grid=(1, 2, 2))
    a, sa = engine.run(model, spec, seed=4, cuda_graphs=True)
    b, _ = engine.run(model, spec, seed=4, cuda_graphs=False)
    assert torch.equal(a, b) and sa.extra["cuda_graphs"] is False


def test_compiled_step_equals_oracle(model):
    """torch.compile of the per-row step (and the prefill): same tokens as the oracle."""
    pytest.importorskip("torch._inductor")
    spec = TaskSpec(grid=(1, 2, 2), order=adc.order("down", (1, 2, 2)), prompts=[""])
    fast, st = engine.run(model, spec, seed=5, compile_step=True)
    slow, _ = oracle.run(model, spec, seed=5)
    assert st.extra["compiled"] is True
    assert torch.equal(fast, slow)


# ---- GPU only ------------------------------------------------------------------------------------------
def _specs(model):
    """Engine-level specs (the api does not pass engine options through): plain, CFG, and one with given
    patches, a partly known patch and generated ones."""
    p, V = model.cfg.patch, model.cfg.vq.codebook_size
    grid = (1, 3, 4)
    rng = np.random.default_rng(0)
    known = rng.integers(0, V, (1, 3 * p, 4 * p))
    mask = np.zeros_like(known, dtype=bool)
    mask[0, :p + 2, :2 * p] = True                             # two given patches, two partly known
    return [
        (TaskSpec(grid=grid, order=adc.order("outward", grid), prompts=["", ""]), Sampling(top_k=10)),
        (TaskSpec(grid=grid, order=adc.order("down", grid), prompts=["a", "b"]), Sampling(guidance=1.5, top_p=0.9)),
        (TaskSpec(grid=grid, order=adc.order("right", grid), prompts=[""], known=known, known_mask=mask),
         Sampling()),
    ]


def _gpu_model():
    return small_model().to("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_patch_loop_has_no_host_sync(mode):
    m = _gpu_model()
    for spec, smp in _specs(m):
        for graphs in (True, False):
            engine.run(m, spec, seed=1, sampling=smp, attention=mode, cuda_graphs=graphs, sync_debug="error")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_graphs_equal_eager_and_oracle(mode):
    from nuwa_fast import ops
    m = _gpu_model()
    backends = ops.available_backends() if mode == "paged" else ["torch"]
    fp32 = dict(pool_dtype=torch.float32)      # the oracle's precision (the GPU pool defaults to bf16)
    for spec, smp in _specs(m):
        ref, _ = oracle.run(m, spec, seed=3, sampling=smp)
        for backend in backends:
            a, sa = engine.run(m, spec, seed=3, sampling=smp, attention=mode, backend=backend, cuda_graphs=True,
                               **fp32)
            b, _ = engine.run(m, spec, seed=3, sampling=smp, attention=mode, backend=backend, cuda_graphs=False,
                              **fp32)
            assert sa.extra["cuda_graphs"] is True
            assert torch.equal(a, b), (backend, spec.order[:2])
            assert torch.equal(a, ref), (backend, spec.order[:2])


def test_api_hands_engine_options_through(monkeypatch):
    """generate_image(..., compile_step=, cuda_graphs=, attention=) reach engine.run, and a compiled
    row step gives the tokens of the eager one."""
    m = small_model()
    seen = {}
    real = engine.run

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)
    monkeypatch.setattr(engine, "run", spy)
    eager = m.generate_image("a lake", height=24, width=36, seed=3, attention="sdpa").tokens
    assert seen["compile_step"] is False and seen["attention"] == "sdpa" and seen["cuda_graphs"] is None
    comp = m.generate_image("a lake", height=24, width=36, seed=3, compile_step=True, cuda_graphs=False).tokens
    assert seen["compile_step"] is True and seen["cuda_graphs"] is False
    assert torch.equal(eager, comp)
