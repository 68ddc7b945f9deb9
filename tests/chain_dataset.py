"""A resumable, sharded stream of training samples over any data source: the reference for the
sampling principle of nuwa_fast.train.sources (sample i of rank r drawn from default_rng([seed, r,
i]), so a resumed stream continues exactly), checked by tests/test_data.py."""
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from nuwa_fast.data import ImageSource, make_source


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
