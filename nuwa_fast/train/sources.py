"""Training images for both stages, from nuwa_fast.data sources, as a pure function of a generator.

Sample i of step s on rank r is drawn from numpy default_rng([seed, rank, step, i, salt]) (the
principle of tests/chain_dataset.PatchChainDataset, with the image shape chosen per step), so the
data-loader state of a run is its step. Held-out data come from the same spec built with HELDOUT_SEED: other
landscape worlds, other crops of the photos.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

HELDOUT_SEED = 7_777_777


@functools.lru_cache(maxsize=16)
def source(spec: str, heldout: bool = False):
    from ..data import make_source
    return make_source(spec, seed=HELDOUT_SEED if heldout else 0)


def rng(seed: int, rank: int, step: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, rank, step, salt])


def draw(spec: str, r: np.random.Generator, height: int, width: int, heldout: bool = False):
    """One (uint8 [height, width, 3], caption) sample."""
    clip, caption = source(spec, heldout).sample(r, height, width, 1)
    return clip[0], caption


def crop_batch(spec: str, r: np.random.Generator, batch: int, size: int, heldout: bool = False):
    """VQ batch: `batch` random size x size crops -> float [B, 3, size, size] in [-1, 1].

    Images are drawn at a height of size or 2*size (landscapes: the scales seen at inference) and a
    width of 1 to 2 times that, then cropped.
    """
    imgs = []
    for _ in range(batch):
        rh = size * int(r.integers(1, 3))
        rw = int(r.integers(rh, 2 * rh + 1))
        img, _ = draw(spec, r, rh, rw, heldout)
        y0, x0 = int(r.integers(0, rh - size + 1)), int(r.integers(0, rw - size + 1))
        imgs.append(img[y0:y0 + size, x0:x0 + size])
    return to_tensor(np.stack(imgs))


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
