"""The diffusers-shaped Pipeline: call forms, seeds and generators, output types, progress, callbacks."""
import numpy as np
import pytest
import torch
from PIL import Image

import nuwa_fast
from nuwa_fast.checkpoint import save_checkpoint
from nuwa_fast.pipeline import SEED_RANGE
from models import small_model


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def pipe(model):
    p = nuwa_fast.Pipeline(model)
    p.set_progress_bar_config(disable=True)
    return p


def test_from_pretrained_and_dtype(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(small_model(), path)
    pipe = nuwa_fast.Pipeline.from_pretrained(str(path), torch_dtype=torch.bfloat16, device="cpu")
    assert pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    assert next(nuwa_fast.load(str(path), torch_dtype="float16").parameters()).dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        nuwa_fast.load(str(path), torch_dtype="int8")
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a lake", height=12, width=12, seed=0)
    assert out.images[0].size == (12, 12)


def test_prompt_list_and_images_per_prompt_match_the_task_method(pipe, model):
    out = pipe(["a lake", "a forest"], height=13, width=30, num_images_per_prompt=2, seed=3)
    assert len(out.images) == 4 and all(isinstance(im, Image.Image) and im.size == (30, 13) for im in out.images)
    assert out.frames is None and out.seed == 3 and out.stats.extra["seed"] == 3
    ref = model.generate_image(["a lake", "a lake", "a forest", "a forest"], batch=4, height=13, width=30, seed=3)
    assert torch.equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in out.images]), ref.pixels)


def test_generator_gives_the_task_methods_tokens(pipe, model):
    expected = int(torch.randint(0, SEED_RANGE, (1,), generator=torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(0)
    out = pipe("a lake", height=12, width=12, generator=g, temperature=0.8, top_k=10, order="right")
    assert out.seed == expected
    ref = model.generate_image("a lake", height=12, width=12, seed=expected, temperature=0.8, top_k=10,
                               order="right")
    assert torch.equal(out.tokens, ref.tokens)
    again = pipe("a lake", height=12, width=12, generator=g, temperature=0.8, top_k=10, order="right")
    assert again.seed != out.seed                          # the generator advanced, as in diffusers
    same = pipe("a lake", height=12, width=12, generator=[torch.Generator().manual_seed(0)], temperature=0.8,
                top_k=10, order="right")
    assert torch.equal(same.tokens, out.tokens)
    with pytest.raises(ValueError, match="not both"):
        pipe("a lake", height=12, width=12, generator=g, seed=1)
    with pytest.raises(ValueError, match="generators"):
        pipe("a lake", height=12, width=12, generator=[g, g])


def test_seed_none_draws_one_and_reports_it(pipe, model):
    torch.manual_seed(123)
    a = pipe(None, height=12, width=12)
    torch.manual_seed(123)
    b = pipe(None, height=12, width=12)
    assert a.seed == b.seed == a.stats.extra["seed"] and torch.equal(a.tokens, b.tokens)
    assert torch.equal(model.generate_image(None, height=12, width=12, seed=a.seed).tokens, a.tokens)


def test_output_types(pipe):
    pil = pipe("a lake", height=13, width=30, seed=1, num_images_per_prompt=2)
    arr = pipe("a lake", height=13, width=30, seed=1, num_images_per_prompt=2, output_type="np").images
    pt = pipe("a lake", height=13, width=30, seed=1, num_images_per_prompt=2, output_type="pt").images
    assert arr.shape == (2, 13, 30, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    np.testing.assert_allclose(arr, np.stack([np.asarray(im) for im in pil.images]) / 255.0, atol=1e-6)
    assert pt.shape == (2, 3, 13, 30) and torch.equal(pt, torch.from_numpy(arr).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="output_type"):
        pipe("a lake", height=12, width=12, output_type="latent")


def test_video_outpaint_animate(pipe, model):
    v = pipe("clouds", frames=2, height=12, width=12, seed=0)
    assert v.images is None and len(v.frames) == 1 and len(v.frames[0]) == 2 and v.frames[0][0].size == (12, 12)
    vt = pipe("clouds", frames=2, height=12, width=12, seed=0, output_type="pt").frames
    assert vt.shape == (1, 2, 3, 12, 12)
    src = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    o = pipe.outpaint(src, right=9, top=3, seed=2)
    assert o.images[0].size == (25, 15)
    assert torch.equal(o.tokens, model.outpaint(src, right=9, top=3, seed=2).tokens)
    a = pipe.animate(Image.fromarray(src), frames=2, seed=4, num_images_per_prompt=2)
    assert len(a.frames) == 2 and len(a.frames[0]) == 2
    assert torch.equal(a.tokens, model.animate(src, frames=2, seed=4, batch=2).tokens)


def test_progress_bar_on_by_default_and_disabled(model, capsys):
    p = nuwa_fast.Pipeline(model)
    p("a lake", height=12, width=12, seed=0)
    assert "patches" in capsys.readouterr().err
    p.set_progress_bar_config(disable=True)
    p("a lake", height=12, width=12, seed=0)
    assert "patches" not in capsys.readouterr().err


def test_on_patch_sees_the_canvas_grow(pipe):
    events = []
    out = pipe("a lake", height=13, width=30, seed=5, on_patch=lambda e: events.append((e.done, e.total,
                                                                                       e.patch, e.pixels())))
    dones = [e[0] for e in events]                                     # one event per wave
    assert len(events) == out.stats.waves and dones[-1] == out.stats.patches == events[0][1]
    assert dones == sorted(set(dones)) and dones[0] >= 1
    assert events[-1][3].shape == (13, 30, 3)
    np.testing.assert_array_equal(events[-1][3], np.asarray(out.images[0]))    # the last one is the result
    assert not np.array_equal(events[0][3], events[-1][3])


def test_bad_calls_are_explained(pipe, model):
    with pytest.raises(TypeError, match="generate_image"):
        model("a lake", height=64)
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        pipe("a lake", num_images_per_prompt=0)
    with pytest.raises(TypeError, match="prompt"):
        pipe(42)
    with pytest.raises(TypeError, match="batch"):
        pipe("a lake", height=12, width=12, batch=2)
    with pytest.raises(ValueError, match="seed"):
        pipe("a lake", height=12, width=12, seed=-1)


def test_defaults_have_one_source():
    """The pipeline, the CLI and the task methods sample with GenerationConfig's defaults."""
    import inspect

    from nuwa_fast import GenerationConfig, Pipeline
    from nuwa_fast.cli import build_parser
    d = GenerationConfig()
    for fn in (Pipeline.__call__, Pipeline.outpaint, Pipeline.animate):
        sig = inspect.signature(fn).parameters
        assert (sig["temperature"].default, sig["top_k"].default, sig["top_p"].default,
                sig["guidance_scale"].default) == (d.temperature, d.top_k, d.top_p, d.guidance), fn.__name__
    a = build_parser().parse_args(["generate", "-o", "x.png"])
    assert (a.temperature, a.top_k, a.top_p, a.guidance) == (d.temperature, d.top_k, d.top_p, d.guidance)
