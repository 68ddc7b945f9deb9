"""Training captions: many phrasings of one landscape's attributes, none of the held-out ones."""
import numpy as np

from nuwa_fast.data import captions
from nuwa_fast.data.landscape import render_landscape, render_landscape_video
from nuwa_fast.train.cache import TokenCache, save_cache

import torch

# the plain-English prompts the eval report steers with; training must never produce them
HELDOUT = ["a starry night over the hills", "the valley after dark, lit only by the moon",
           "midnight in the mountains under a black sky", "a quiet lake on a dark night",
           "a bright sunny afternoon in the mountains", "clear blue skies over green hills at noon",
           "a sunny morning by the lake", "broad daylight over the desert", "the sun going down over a lake",
           "dusk over the desert with an orange sky", "evening glow behind the peaks",
           "the last light of the evening over the forest"]


def _attrs(n):
    return [render_landscape(s, 8, 8)[2] for s in range(n)]


def test_phrasings_vary_and_name_the_attributes():
    r = np.random.default_rng(0)
    for a in _attrs(12):
        texts = {captions.phrase(a, r) for _ in range(30)}
        assert len(texts) >= 15, texts                                  # many wordings of one picture
        for t in texts:
            words = t.lower()
            assert any(w in words for w in captions.TIME[a["sky"]]) or \
                any(w in words for w in captions.TIME_ADJ[a["sky"]]) or \
                (a["sky"] == "night" and any(w in words for w in captions.MOON + captions.STARS)), t


def test_times_of_day_never_mix():
    r = np.random.default_rng(1)
    for a in _attrs(20):
        others = [k for k in captions.TIME if k != a["sky"]]
        for _ in range(20):
            t = captions.phrase(a, r)
            for k in others:
                assert not any(f" {p}" in f" {t}" for p in captions.TIME[k] if len(p) > 8), (a["sky"], t)


def test_clip_captions_name_the_motion():
    r = np.random.default_rng(2)
    for seed in range(6):
        _, _, a = render_landscape_video(seed, 2, 8, 8)
        t = captions.phrase(a, r, motion=a["motion"])
        assert any(m in t for m in captions.MOTION[a["motion"]]), t


def test_heldout_prompts_are_never_trained():
    r = np.random.default_rng(3)
    attrs = _attrs(40)
    seen = {captions.phrase(attrs[i % 40], r) for i in range(40_000)}
    assert not seen & set(HELDOUT)


def test_cache_draws_phrasings_from_attributes(tmp_path):
    attrs = _attrs(3)
    tok = torch.zeros(3, 16, 24, dtype=torch.int32)
    save_cache(tmp_path / "c.safetensors", tok, ["canonical"] * 3, attrs=attrs)
    cache = TokenCache(tmp_path / "c.safetensors")
    r = np.random.default_rng(0)
    _, caps, placed = cache.crop_placed(r, 8, 8, 8, phrasing=1.0)
    assert "canonical" not in caps and len(set(caps)) > 1
    assert placed["height"] == 16 and all(0 <= y <= 8 for y in placed["y_offset"])
    _, caps, _ = cache.crop_placed(r, 4, 8, 8, phrasing=0.0)
    assert caps == ["canonical"] * 4
