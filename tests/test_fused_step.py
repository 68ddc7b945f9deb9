"""The fused CPU row step (attention="fused", csrc/cpu/row_step.cpp): the same tokens as the oracle and
the torch step, for every task, schedule, thread count and a bf16 pool; clear errors where it cannot run."""
import pytest
import torch

from nuwa_fast import cpu_ext, engine
from models import small_model
from test_waves import TASKS, check

pytestmark = pytest.mark.skipif(not cpu_ext.available(), reason="the CPU row step could not be built here")


@pytest.fixture(scope="module")
def placed():
    return small_model(rope=True, layout=True, extent=(1, 2, 2))


@pytest.mark.parametrize("task", list(TASKS))
def test_fused_equals_oracle_and_sequential(placed, task):
    fused = TASKS[task](placed, seed=7, attention="fused")
    assert fused.stats.attention == "fused"
    seq = TASKS[task](placed, seed=7, attention="fused", schedule="sequential")
    slow = TASKS[task](placed, seed=7, oracle=True)
    check(fused, slow)
    check(seq, slow)


def test_fused_is_the_cpu_default(placed):
    r = TASKS["right"](placed, seed=1)
    assert r.stats.attention == "fused"
    assert engine.default_attention(placed, "torch", compile_step=True) == "gathered"


def test_fused_tokens_do_not_depend_on_threads(placed):
    n = torch.get_num_threads()
    try:
        out = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            out.append(TASKS["down"](placed, seed=3, attention="fused").tokens)
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(o, out[0]) for o in out)


@pytest.mark.parametrize("order,grid", [("down", (1, 3, 6)), ("left", (2, 2, 3))])
def test_fused_bf16_pool_equals_torch_step(placed, order, grid):
    """A bf16 pool: the C++ step reads the bf16 pages in place, widened exactly like the torch step widens
    the pages it gathers."""
    from nuwa_fast import adc
    spec = engine.TaskSpec(grid=grid, order=adc.order(order, grid), prompts=["hills", ""],
                           directions=adc.directions(order, grid))
    kw = dict(seed=4, pool_dtype=torch.bfloat16)
    fused, fst = engine.run(placed, spec, attention="fused", **kw)
    torch_step, tst = engine.run(placed, spec, attention="gathered", **kw)
    seq, _ = engine.run(placed, spec, attention="fused", schedule="sequential", **kw)
    assert torch.equal(fused, torch_step) and torch.equal(fused, seq)


def test_pack_panels_layout():
    """pack_panels: [N, K] -> [ceil(N / width), K, width], panel p column j = output p * width + j, zeros past N."""
    from nuwa_fast.gathered import pack_panels
    w = torch.randn(37, 5)
    p = pack_panels(w, 16)
    assert p.shape == (3, 5, 16) and p.is_contiguous()
    for n in range(37):
        assert torch.equal(p[n // 16, :, n % 16], w[n])
    assert not p[2, :, 37 - 32:].any()


def test_fused_partial_weight_panel_equals_oracle():
    """A vocabulary that is not a multiple of the panel width (50 codes): the head's last panel is
    zero-padded and only its real outputs are written, so the tokens stay the oracle's."""
    m = small_model(rope=True, layout=True, extent=(1, 2, 2), codebook=50)
    assert m.cfg.vq.codebook_size % cpu_ext.load().PANEL
    fused = TASKS["down"](m, seed=5, attention="fused")
    assert fused.stats.attention == "fused"
    check(fused, TASKS["down"](m, seed=5, oracle=True))


def test_fused_refuses_bf16_weights_clearly():
    m = small_model(rope=True, layout=True).to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32 weights.*attention='gathered'"):
        m.generate_image(None, height=24, width=24, attention="fused")
    assert engine.default_attention(m, "torch") == "gathered"


def test_installed_package_ships_the_row_step_source(tmp_path):
    """A wheel (not only the editable tree) carries csrc/cpu/row_step.cpp as nuwa_fast/csrc_cpu, where
    cpu_ext.source() looks first, so the fused step builds after `pip install .` too."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUWA_FAST_CUDA="0")
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=root,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    shipped = tmp_path / "nuwa_fast" / "csrc_cpu" / "row_step.cpp"
    assert shipped.read_bytes() == (root / "csrc" / "cpu" / "row_step.cpp").read_bytes()
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import nuwa_fast.cpu_ext as c; "
             "print(c.source())")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == shipped


def test_bench_row_timer_counts_every_lane_row(placed):
    """benchmarks/bench_waves.py --row-costs: every fused row is timed under its lane count, and the step
    is restored afterwards."""
    from benchmarks.bench_waves import RowTimer
    from nuwa_fast import gathered
    orig = gathered.FusedStep.row_fn
    with RowTimer() as timer:
        r = TASKS["left"](placed, seed=2, attention="fused")
    assert gathered.FusedStep.row_fn is orig
    by = timer.summary()
    assert max(int(n) for n in by) > 1                      # a wave of several lanes ran
    assert sum(int(n) * v["rows"] for n, v in by.items()) == r.stats.patches * (placed.cfg.patch ** 2 + 1)
    assert all(v["median_us"] > 0 for v in by.values())


def test_fused_decode_keeps_torch_threads_out_of_its_pool(placed, monkeypatch):
    """Fused decode rows run with torch's intra-op threads at 1 (the step's own pool does the work);
    a prefill (torch's work) gets the caller's count back, and the count is restored afterwards."""
    from nuwa_fast import gathered
    seen = {"row": set(), "prefill": set()}
    row, prefill = gathered.FusedStep.row_fn, gathered.FusedStep.prefill_fn

    def row_fn(self, s, nb):
        seen["row"].add(torch.get_num_threads())
        return row(self, s, nb)

    def prefill_fn(self, nb):
        seen["prefill"].add(torch.get_num_threads())
        return prefill(self, nb)
    monkeypatch.setattr(gathered.FusedStep, "row_fn", row_fn)
    monkeypatch.setattr(gathered.FusedStep, "prefill_fn", prefill_fn)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        r = TASKS["animate"](placed, seed=1, attention="fused")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)
    assert r.stats.attention == "fused"
    assert seen == {"row": {1}, "prefill": {2}}
