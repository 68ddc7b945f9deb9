"""The bundled `tiny` checkpoint loads offline and generates."""
import numpy as np
import pytest

import nuwa_fast
from nuwa_fast.checkpoint import bundled_path


@pytest.mark.skipif(bundled_path("tiny") is None, reason="no bundled weights in this checkout")
def test_bundled_tiny_generates_2x3_patches():
    model = nuwa_fast.load("tiny")
    assert model.cfg.name == "tiny"
    p = model.cfg.patch_pixels                                         # 64 px per patch
    r = model.generate_image("a lake at sunset", height=2 * p, width=3 * p, seed=0, top_k=50)
    assert r.stats.patches == 6 and r.pixels.shape == (1, 2 * p, 3 * p, 3)
    assert r.stats.extra["pages_left"] == 0
    assert r.pixels.std() > 1.0                                        # a picture, not a flat fill
    assert np.isfinite(r.pixels).all()
