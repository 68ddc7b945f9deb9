"""The ops registry: a backend is one module plus one registration, the ops are registered torch ops
(torch.compile(fullgraph=True) traces the paged decode step), and an absent backend says why."""
import pytest
import torch

import toy_backend
from nuwa_fast import adc, engine, ops
from nuwa_fast.engine import TaskSpec
from models import small_model


@pytest.fixture(scope="module")
def model():
    return small_model(rope=True, layout=True, extent=(1, 2, 2))


def spec(grid=(1, 2, 4), batch=2):
    return TaskSpec(grid=grid, order=adc.order("down", grid), prompts=["a"] * batch,
                    directions=adc.directions("down", grid))


def test_toy_backend_from_one_module_is_used(model):
    assert sorted(ops.register_backend("toy", toy_backend)) == sorted(ops.OPS)
    assert "toy" in ops.available_backends()
    toy_backend.calls.clear()
    out, st = engine.run(model, spec(), seed=2, backend="toy")
    ref, _ = engine.run(model, spec(), seed=2, attention="paged")
    print(toy_backend.calls)
    assert st.backend == "toy" and st.extra["attention"] == "paged"
    assert toy_backend.calls["patch_attention"] > 0 and toy_backend.calls["ncp_select"] == st.patches
    assert toy_backend.calls["ncp_add"] == st.patches and toy_backend.calls["ncp_remove"] == st.waves
    assert torch.equal(out, ref)


def test_gathered_modes_take_the_bias_rows_from_adc_gather(model):
    """The static step gathers the ADC bias of each lane's slots through ops.adc_gather (once per layer
    and group of lanes with context), and gets the default engine's tokens."""
    ops.register_backend("toy", toy_backend)
    toy_backend.calls.clear()
    out, st = engine.run(model, spec(), seed=2, backend="toy", attention="gathered")
    ref, _ = engine.run(model, spec(), seed=2)
    print(toy_backend.calls)
    with_context = st.patches - 1                                 # every patch but the first has context
    assert toy_backend.calls["adc_gather"] >= model.cfg.layers * min(with_context, st.waves - 1) > 0
    assert "patch_attention" not in toy_backend.calls
    assert torch.equal(out, ref)


def test_ops_are_registered_torch_ops():
    assert hasattr(torch.ops.nuwa_fast, "patch_attention") and hasattr(torch.ops.nuwa_fast, "adc_gather")
    bias, table = torch.randn(9, 2), torch.tensor([[0, -1, 3]], dtype=torch.int32)
    assert torch.equal(ops.adc_gather(bias, table), ops.reference.adc_gather(bias, table))


def test_absent_backends_say_why():
    why = ops.absent_backends()
    for b in ("triton", "cuda"):
        assert (b in ops.available_backends()) != (b in why)
        if b in why:
            print(b, "absent:", why[b])
            assert why[b]


def test_compiled_paged_decode_step_fullgraph_equals_eager(model):
    """torch.compile(fullgraph=True) traces the whole paged row step (decoder layers, the registered
    patch_attention op through its fake impl, sampling); aot_eager keeps it cheap on a CPU."""
    import torch._dynamo as dynamo
    ref, _ = engine.run(model, spec(), seed=5, attention="paged")
    limit = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
    dynamo.reset()
    with dynamo.config.patch(**{limit: 64}), torch.no_grad():
        g = engine.prepare(model, spec(), seed=5, attention="paged")
        g.step.row_fn = torch.compile(g.step.row_fn, fullgraph=True, backend="aot_eager")
        g.scheduler.run()
    assert torch.equal(g.sh.out, ref)
    dynamo.reset()


def test_default_attention_is_the_backends_declaration(model):
    """The engine asks the registry which mode a backend runs best (no backend name in the engine)."""
    assert ops.default_attention("torch") == "gathered"
    ops.register_backend("toy", toy_backend)
    assert ops.default_attention("toy") == "paged"               # no ATTENTION: the fused op on the pool
    for b in ("triton", "cuda"):
        if b in ops.available_backends():
            assert ops.default_attention(b) == "paged"
    # the torch backend on a CPU: the fused row step where it builds (engine.default_attention), else "gathered"
    assert engine.run(model, spec(), seed=1)[1].attention == engine.default_attention(model, "torch")
