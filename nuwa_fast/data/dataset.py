"""Training sources behind one interface.

A source draws one captioned clip from a numpy Generator: `sample(rng, height, width, frames)` ->
(uint8 [T, H, W, 3], caption). The trainer (nuwa_fast.train.sources) draws sample i of step s on
rank r from default_rng([seed, r, s, i, salt]), so a sample depends on those numbers only: not on
the order of iteration, the number of workers, or whether the run was interrupted.
"""
from __future__ import annotations

import abc

import numpy as np

from .landscape import render_landscape, render_landscape_video
from .skimage_source import sample_skimage

SPEC_HELP = ('"landscape", "skimage", "folder:/path/to/dir", or a mixture such as '
             '"landscape:0.8,skimage:0.2" or "landscape:3,folder:/data/mine:1" (weights are relative)')


class ImageSource(abc.ABC):
    """Interface of a training source; subclasses implement sample(). A source's own `seed` salts
    every draw, so the same spec built with another seed (held-out data) gives other samples."""

    name = "source"
    seed = 0

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, height: int, width: int,
               frames: int = 1) -> tuple[np.ndarray, str]:
        """One captioned clip, exactly (height, width): (uint8 [frames, height, width, 3], caption)."""


def salted(rng: np.random.Generator, seed: int) -> np.random.Generator:
    """A Generator drawn from rng and salted with a source seed."""
    return np.random.default_rng([seed % 2 ** 63, int(rng.integers(2 ** 63))])


class LandscapeSource(ImageSource):
    """Procedural landscapes rendered straight at the requested size (no crop, no flip); videos move."""

    name = "landscape"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def sample(self, rng, height, width, frames=1):
        world = int(salted(rng, self.seed).integers(2 ** 31))
        if frames <= 1:
            image, caption, _ = render_landscape(world, height, width)
            return image[None], caption
        video, caption, _ = render_landscape_video(world, frames, height, width)
        return video, caption


class SkimageSource(ImageSource):
    """The photographs and textures bundled with scikit-image, randomly cropped, resized and flipped."""

    name = "skimage"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def sample(self, rng, height, width, frames=1):
        out, caption = sample_skimage(salted(rng, self.seed), height, width, frames)
        return (out[None] if out.ndim == 3 else out), caption


class MixtureSource(ImageSource):
    """Each sample comes from one of `sources`, drawn with probability proportional to `weights`."""

    name = "mixture"

    def __init__(self, sources: list[ImageSource], weights: list[float]):
        if len(sources) != len(weights) or not sources:
            raise ValueError("MixtureSource: need one weight per source, and at least one source")
        if any(not np.isfinite(w) or w <= 0 for w in weights):
            raise ValueError(f"MixtureSource: weights must be positive, got {weights}")
        self.sources = list(sources)
        self.weights = np.asarray(weights, np.float64) / np.sum(weights)

    def sample(self, rng, height, width, frames=1):
        k = int(rng.choice(len(self.sources), p=self.weights))
        return self.sources[k].sample(rng, height, width, frames)


def _one_source(name: str, arg: str | None, seed: int) -> ImageSource:
    if name == "landscape" and arg is None:
        return LandscapeSource(seed)
    if name == "skimage" and arg is None:
        return SkimageSource(seed)
    if name == "folder" and arg:
        from .folder import FolderSource
        return FolderSource(arg, seed)
    raise ValueError(f"make_source: cannot parse {name + (':' + arg if arg else '')!r}; use {SPEC_HELP}")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def make_source(spec: str, seed: int = 0) -> ImageSource:
    """A source from a spec string: {SPEC_HELP}. A folder path may not contain a comma."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"make_source: empty spec; use {SPEC_HELP}")
    sources, weights = [], []
    for part in parts:
        name, _, rest = part.partition(":")
        name, arg, weight = name.strip().lower(), rest.strip() or None, 1.0
        head, sep, tail = rest.rpartition(":")
        number = _number(tail)
        if number is not None and (sep if name == "folder" else not sep):
            arg, weight = head.strip() or None, number      # "landscape:0.8", "folder:/x:0.2"
        sources.append(_one_source(name, arg, seed))
        weights.append(weight)
    if len(sources) == 1:
        return sources[0]
    return MixtureSource(sources, weights)


make_source.__doc__ = make_source.__doc__.format(SPEC_HELP=SPEC_HELP)
