"""GenerationConfig: one typed set of options for every task, keywords override it, the CLI builds it."""
import dataclasses

import pytest
import torch

from nuwa_fast import GenerationConfig, cli, engine
from nuwa_fast.model import NuwaModel
from models import small_model


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_tasks_are_methods_of_the_class():
    for name in ("generate_image", "generate_video", "outpaint", "animate"):
        assert name in vars(NuwaModel), name                     # defined in the class body, not attached


def test_config_and_keywords_give_the_same_tokens(model):
    gc = GenerationConfig(seed=3, temperature=0.7, top_k=5, schedule="sequential")
    a = model.generate_image(None, height=12, width=16, config=gc)
    b = model.generate_image(None, height=12, width=16, seed=3, temperature=0.7, top_k=5, schedule="sequential")
    c = model.generate_image(None, height=12, width=16, config=gc, seed=4)          # a keyword overrides
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.stats.seed == 3 and c.stats.seed == 4 and a.stats.schedule == "sequential"


def test_every_task_takes_a_config(model):
    gc = GenerationConfig(seed=1, order="right")
    img = model.generate_image(None, height=12, width=12, seed=9).pixels[0]
    for r in (model.generate_video(None, frames=2, height=12, width=12, config=gc),
              model.outpaint(img, right=12, config=gc), model.animate(img, frames=2, config=gc)):
        assert r.stats.seed == 1 and r.stats.patches > 0


@pytest.mark.parametrize("bad, match", [
    (dict(temperature=-1), "temperature"), (dict(top_p=1.5), "top_p"), (dict(schedule="fast"), "schedule"),
    (dict(max_lanes=0), "max_lanes"), (dict(extent="1,2,2"), "extent"), (dict(on_patch=3), "on_patch"),
    (dict(seed=-1), "seed")])
def test_bad_fields_are_refused_by_name(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GenerationConfig(**bad)


def test_unknown_keyword_names_the_options(model):
    with pytest.raises(TypeError, match=r"unexpected arguments \['temprature'\].*temperature"):
        model.generate_image(None, height=12, width=12, temprature=0.5)
    with pytest.raises(TypeError, match="GenerationConfig"):
        model.generate_image(None, height=12, width=12, config={"seed": 1})


def test_cli_builds_the_config_from_its_flags():
    a = cli.build_parser().parse_args(["generate", "--seed", "5", "--temperature", "0.5", "--top-k", "7",
                                       "--order", "right", "--schedule", "sequential", "--cuda-graphs", "off",
                                       "--compile", "-q", "-o", "x.png"])
    gc = cli.generation_config(a)
    want = GenerationConfig(seed=5, temperature=0.5, top_k=7, order="right", schedule="sequential",
                            cuda_graphs=False, compile_step=True, progress=False)
    assert dataclasses.asdict(gc) == dataclasses.asdict(want)


def test_stats_fields_and_the_extra_view(model):
    r = model.generate_image(None, height=12, width=12, seed=2)
    s = r.stats
    assert s.attention == engine.default_attention(model, "torch") and s.pages_left == 0 and s.plan_peak_pages >= s.peak_pages > 0
    assert s.extra["attention"] == s.attention and s.extra["seed"] == 2 and "patch_seconds" not in s.extra
