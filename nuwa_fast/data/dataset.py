"""Training sources behind one interface, and a resumable, sharded stream of training samples.

A source draws one captioned clip from a numpy Generator: `sample(rng, height, width, frames)` ->
(uint8 [T, H, W, 3], caption). PatchChainDataset gives sample i of rank r the Generator
default_rng([seed, r, i]), so a sample depends on (seed, rank, index) only: not on the order of
iteration, the number of DataLoader workers, or whether the run was interrupted.
"""
from __future__ import annotations

import abc

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

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


def to_pixels(clip: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [-1, 1]."""
    clip = np.array(clip, dtype=np.uint8, order="C")         # own, writable copy (PIL arrays are read-only)
    return torch.from_numpy(clip).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


class PatchChainDataset(IterableDataset):
    """An endless stream of {"pixels": float [T, 3, H, W] in [-1, 1], "caption": str} for one rank.

    Sample i of this rank is drawn from default_rng([seed, rank, i]), and iteration starts at
    `consumed` (state_dict / load_state_dict), so a resumed stream continues with exactly the samples
    an uninterrupted one would give. Without DataLoader workers `consumed` counts itself. With
    workers the trainer knows it (steps * batch): pass batch_size = the DataLoader's batch size and
    worker w yields whole batches w, w + n, w + 2n, ..., which the DataLoader (in order) turns back
    into samples consumed, consumed + 1, ... exactly as without workers.
    """

    def __init__(self, source: ImageSource | str, height: int, width: int, frames: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1, batch_size: int = 1):
        if min(height, width, frames, world_size, batch_size) < 1:
            raise ValueError(f"PatchChainDataset: height, width, frames, world_size and batch_size must be "
                             f">= 1, got {height}, {width}, {frames}, {world_size}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"PatchChainDataset: rank {rank} is outside world_size {world_size}")
        self.source = make_source(source, seed) if isinstance(source, str) else source
        self.height, self.width, self.frames = height, width, frames
        self.seed, self.rank, self.world_size, self.batch_size = seed % 2 ** 63, rank, world_size, batch_size
        self.consumed = 0

    def sample(self, index: int) -> dict:
        """Sample `index` of this rank: a pure function of (seed, rank, index)."""
        rng = np.random.default_rng([self.seed, self.rank, index])
        clip, caption = self.source.sample(rng, self.height, self.width, self.frames)
        want = (self.frames, self.height, self.width, 3)
        if clip.shape != want or clip.dtype != np.uint8:
            raise RuntimeError(f"{type(self.source).__name__}.sample gave {clip.dtype} {clip.shape}, "
                               f"expected uint8 {want}")
        return {"pixels": to_pixels(clip), "caption": caption}

    def __iter__(self):
        info = get_worker_info()
        start = self.consumed
        if info is None:
            i = start
            while True:
                item = self.sample(i)
                self.consumed = i + 1                   # counted when handed out
                yield item
                i += 1
        b = self.batch_size
        block = info.id
        while True:
            for i in range(start + block * b, start + (block + 1) * b):
                yield self.sample(i)
            block += info.num_workers

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "rank"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"PatchChainDataset.load_state_dict: the state has {key}={state[key]}, "
                                 f"this dataset {key}={getattr(self, key)}: it would not continue the stream")
        self.consumed = int(state["consumed"])


def collate(batch: list[dict]) -> dict:
    """[{"pixels": [T, 3, H, W], "caption": str}] -> {"pixels": [B, T, 3, H, W], "caption": [str]}."""
    shapes = {tuple(b["pixels"].shape) for b in batch}
    if len(shapes) != 1:
        raise ValueError(f"collate: samples of different shapes {sorted(shapes)} cannot form one batch")
    return {"pixels": torch.stack([b["pixels"] for b in batch]), "caption": [b["caption"] for b in batch]}
