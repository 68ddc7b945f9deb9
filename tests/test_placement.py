"""Token-level relative position (2D RoPE across patches) and layout conditioning: the training
forwards, the engine's paths and the oracle agree on a model that uses both, and each does what it
claims (RoPE scores depend on the token offset only; the layout reaches the logits)."""
import numpy as np
import pytest
import torch

from nuwa_fast import adc
from nuwa_fast.layers import apply_rope
from nuwa_fast.model import Where, rope_tables
from nuwa_fast.train import chain as chainlib
from models import small_model


@pytest.fixture(scope="module")
def model():
    return small_model(rope=True, layout=True, extent=(1, 2, 2))


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rope_score_depends_on_token_offset_only():
    p, D = 3, 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, D, generator=g).expand(2, 1, p * p + 1, D)
    k = torch.randn(1, 1, 1, D, generator=g).expand(2, 1, p * p + 1, D)
    yx = torch.tensor([[0, 0], [5, 1000]])                       # the same patch layout, moved far away
    cq, sq, ck, sk = rope_tables(yx, p, D, 100.0)
    qr, kr = apply_rope(q, cq, sq), apply_rope(k, ck, sk)
    s = torch.einsum("bhmd,bhnd->bhmn", qr, kr)                   # [2, 1, P+1, P+1]
    err = (s[0] - s[1]).abs().max().item()
    print(f"max |score(origin) - score(shifted by 5 x 1000 patches)| = {err:.2e}")
    assert err < 1e-4
    assert (s[0, 0, 1] - s[0, 0, 5]).abs().max() > 1e-3           # but other offsets do score differently
    assert torch.allclose(qr.norm(dim=-1), q.norm(dim=-1), atol=1e-5)   # a rotation keeps norms


@pytest.mark.parametrize("order", ["down", "left", "outward"])
def test_parallel_logits_equal_sequential_with_placement(model, order):
    dec = model.decoder
    orde = adc.order(order, (3, 4), region=(1, 1, 1, 2) if order == "outward" else None)
    g = torch.Generator().manual_seed(1)
    chain = torch.randint(model.cfg.vq.codebook_size, (2, len(orde), model.cfg.P), generator=g)
    text = model.encode_text(["a lake at night", ""])
    where = chainlib.chain_where(orde, [0.0, 1.5], [3.0, 6.0], adc.ORDERS.index(order))
    with torch.no_grad():
        par = chainlib.parallel_logits(dec, chain, chainlib.context(orde, (1, 2, 2), (1, 2, 2)), text, where=where)
        seq = chainlib.sequential_logits(dec, chain, orde, (1, 2, 2), text, where=where)
    err = (par - seq).abs().max().item()
    print(f"order={order}: max|parallel - sequential| = {err:.2e}")
    assert err < 1e-4


def test_layout_reaches_the_logits(model):
    dec = model.decoder
    buf = torch.zeros(1, model.cfg.P, dtype=torch.long)
    text = model.encode_text([""])
    out = {}
    for name, vfrac, direction in (("top", 0.1, 0), ("bottom", 0.9, 0), ("up", 0.1, 2)):
        w = Where(torch.tensor([[0, 0]]), torch.tensor([vfrac]), torch.tensor([direction]))
        with torch.no_grad():
            out[name], _ = chainlib.patch_forward(dec, buf, [], text, where=w)
    assert (out["top"] - out["bottom"]).abs().max() > 1e-3
    assert (out["top"] - out["up"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="where="):
        dec(buf, 0, 1, lambda *a: None, text)


TASKS = {
    "text_to_image": lambda m, o, **kw: m.generate_image(["a red sky", "a lake"], height=20, width=22, order=o,
                                                         batch=2, guidance=2.0, top_k=20, **kw),
    "outpaint": lambda m, o, **kw: m.outpaint(rgb(14, 12), right=9, bottom=5, order=o, batch=2, **kw),
    "animate": lambda m, o, **kw: m.animate(rgb(13, 10), frames=3, order=o, batch=1, **kw),
}


@pytest.mark.parametrize("attention", ["gathered", "paged"])
@pytest.mark.parametrize("order", ["down", "outward"])
@pytest.mark.parametrize("task", list(TASKS))
def test_engine_equals_oracle_with_placement(model, task, order, attention):
    fast = TASKS[task](model, order, seed=3, attention=attention)
    slow = TASKS[task](model, order, seed=3, oracle=True)
    assert torch.equal(fast.tokens, slow.tokens), (fast.tokens != slow.tokens).float().mean()
    assert fast.stats.extra["pages_left"] == 0
