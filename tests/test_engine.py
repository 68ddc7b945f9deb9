"""The engine against the naive oracle: same tokens, for every task and order."""
import numpy as np
import pytest
import torch

from nuwa_fast import adc
from models import small_model

ORDERS = list(adc.ORDERS)


@pytest.fixture(scope="module")
def model():
    return small_model()


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


TASKS = {
    "unconditional": lambda m, o, **kw: m.generate_image(None, height=13, width=30, order=o, batch=2, **kw),
    "text_to_image": lambda m, o, **kw: m.generate_image(["a red sky", "a lake"], height=20, width=22, order=o,
                                                         batch=2, guidance=2.0, top_k=20, **kw),
    "outpaint": lambda m, o, **kw: m.outpaint(rgb(14, 12), right=9, bottom=5, order=o, batch=2, top_p=0.9, **kw),
    "animate": lambda m, o, **kw: m.animate(rgb(13, 10), frames=3, order=o, batch=2, **kw),
    "text_to_video": lambda m, o, **kw: m.generate_video("clouds drift", frames=2, height=12, width=17, order=o,
                                                         batch=3, temperature=0.8, **kw),
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("task", list(TASKS))
def test_engine_equals_oracle(model, task, order):
    fast = TASKS[task](model, order, seed=3)
    slow = TASKS[task](model, order, seed=3, oracle=True)
    assert fast.tokens.shape == slow.tokens.shape
    assert torch.equal(fast.tokens, slow.tokens), (fast.tokens != slow.tokens).float().mean()
    assert fast.stats.extra["pages_left"] == 0                         # every page back on the free list
    assert fast.stats.peak_pages == fast.stats.extra["plan_peak_pages"]
    assert np.array_equal(fast.pixels, slow.pixels)


@pytest.mark.parametrize("task", ["unconditional", "outpaint", "animate"])
def test_paged_attention_path_equals_oracle(model, task):
    """The path the kernels take: ops.patch_attention straight on the pool for every row."""
    fast = TASKS[task](model, "outward", seed=4, attention="paged")
    slow = TASKS[task](model, "outward", seed=4, oracle=True)
    assert torch.equal(fast.tokens, slow.tokens)


def test_samples_differ_and_seed_matters(model):
    a = model.generate_image(None, height=12, width=12, batch=2, seed=0)
    b = model.generate_image(None, height=12, width=12, batch=2, seed=1)
    assert not torch.equal(a.tokens[0], a.tokens[1])
    assert not torch.equal(a.tokens, b.tokens)
    c = model.generate_image(None, height=12, width=12, batch=1, seed=0)
    assert torch.equal(c.tokens[0], a.tokens[0])                       # same seed, any batch size


def test_outpaint_keeps_given_tokens(model):
    img = rgb(16, 12, seed=5)
    r = model.outpaint(img, left=7, top=4, right=3, seed=2)
    from nuwa_fast.images import encode_pixels as _encode_pixels
    toks = _encode_pixels(model, img)                                  # [4, 3] tokens at f=4
    tt, lt = 1, 2                                                      # ceil(4/4), ceil(7/4)
    assert torch.equal(r.tokens[0, 0, tt:tt + 4, lt:lt + 3], torch.as_tensor(toks))
    assert r.pixels.shape == (1, 4 + 16, 7 + 12 + 3, 3)
    assert np.array_equal(r.pixels[0, 4:20, 7:19], img)


def test_animate_keeps_first_frame(model):
    img = rgb(12, 16, seed=6)
    r = model.animate(img, frames=3, seed=1)
    from nuwa_fast.images import encode_pixels as _encode_pixels
    assert torch.equal(r.tokens[0, 0, :3, :4], torch.as_tensor(_encode_pixels(model, img)))
    assert r.pixels.shape == (1, 3, 12, 16, 3)
    assert not torch.equal(r.tokens[0, 1], r.tokens[0, 0])


def test_smaller_extent_and_greedy(model):
    a = model.generate_image(None, height=16, width=16, extent=(0, 1, 0), temperature=0, seed=0)
    b = model.generate_image(None, height=16, width=16, extent=(0, 1, 0), temperature=0, seed=0, oracle=True)
    assert torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("call,match", [
    (lambda m: m.generate_image(height=0, width=8), "height must be between"),
    (lambda m: m.generate_image(height=8, width=-3), "width must be between"),
    (lambda m: m.generate_image(height=8.5, width=8), "whole number"),
    (lambda m: m.generate_image(height=float("nan"), width=8), "whole number"),
    (lambda m: m.generate_image(height="8", width=8), "whole number"),
    (lambda m: m.generate_image(height=8, width=8, order="zigzag"), "unknown order"),
    (lambda m: m.generate_image(height=8, width=8, extent=(0, 5, 1)), "larger than the extent"),
    (lambda m: m.generate_image(height=8, width=8, temperature=-1), "temperature"),
    (lambda m: m.generate_image(height=8, width=8, top_p=0), "top_p"),
    (lambda m: m.generate_image(height=8, width=8, batch=0), "batch"),
    (lambda m: m.generate_image(height=8, width=8, backend="nope"), "not available"),
    (lambda m: m.generate_image(height=8, width=8, bogus=1), "unexpected arguments"),
    (lambda m: m.outpaint(rgb(8, 8)), "at least one of"),
    (lambda m: m.outpaint(np.zeros((8, 8), np.uint8), right=4), r"uint8 \[H, W, 3\]"),
    (lambda m: m.outpaint(np.zeros((8, 8, 3), np.float32), right=4), r"uint8 \[H, W, 3\]"),
    (lambda m: m.outpaint(rgb(2, 2), right=4), "at least"),
    (lambda m: m.outpaint("/nonexistent.png", right=4), "does not exist"),
    (lambda m: m.animate(rgb(8, 8), frames=1), "frames must be between 2"),
])
def test_bad_input(model, call, match):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=match):
        call(model)


def test_image_modes(model):
    from PIL import Image
    arr = rgb(8, 12)
    for mode in ("RGB", "RGBA", "L", "P", "LA", "CMYK"):
        img = Image.fromarray(arr).convert(mode)
        r = model.outpaint(img, right=4, seed=0)
        assert r.pixels.shape == (1, 8, 16, 3)
    with pytest.raises(ValueError, match="high bit depth"):
        model.outpaint(Image.new("I;16", (8, 8)), right=4)


SMALL = {   # a few patches each: the interpreter runs every kernel launch on the CPU
    "image": lambda m, **kw: m.generate_image("hi", height=12, width=24, batch=2, **kw),
    "animate": lambda m, **kw: m.animate(rgb(8, 12), frames=2, **kw),
}


@pytest.mark.parametrize("task", list(SMALL))
def test_triton_backend_engine_equals_torch(model, task):
    """The whole engine on the Triton kernels (interpreter on a CPU): same tokens as torch."""
    from nuwa_fast import ops
    if "triton" not in ops.available_backends():
        pytest.skip("triton backend absent (no triton package)")
    ref = SMALL[task](model, seed=5)
    tri = SMALL[task](model, seed=5, backend="triton")
    assert tri.stats.backend == "triton"
    assert torch.equal(ref.tokens, tri.tokens)
    assert tri.stats.extra["pages_left"] == 0
