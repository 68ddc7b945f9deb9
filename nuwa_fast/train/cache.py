"""A token cache for stage 2: wide images tokenised once by the frozen VQ, cut into chains per step.

Rendering and VQ-encoding a fresh image for every chain costs more than the decoder step on a CPU.
A cache of n wide images (e.g. 256 x 512 px = 32 x 64 tokens) gives every step new chains by
cropping a random Hc*p x Wc*p token window (any token offset) of a random image, so each image
serves many chains. The cache is a safetensors file: tokens int32 [n, h, w] + captions (JSON).
Crops are a pure function of the step's generator, so resume stays exact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from . import sources


def render_images(spec: str, n: int, height: int, width: int, seed: int = 0, heldout: bool = False):
    """n images (uint8 [n, height, width, 3]) and their captions; image i from rng(seed, 0, i)."""
    imgs, caps = [], []
    for i in range(n):
        img, cap = sources.draw(spec, sources.rng(seed, 0, i, salt=11), height, width, heldout=heldout)
        imgs.append(img)
        caps.append(cap)
    return np.stack(imgs), caps


@torch.no_grad()
def encode_images(vq, imgs: np.ndarray, batch: int = 4) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> int32 tokens [n, H/f, W/f]."""
    dev = vq.codebook.device
    out = [vq.encode(sources.to_tensor(imgs[i:i + batch]).to(dev)).cpu().int() for i in range(0, len(imgs), batch)]
    return torch.cat(out)


def save_cache(path, tokens: torch.Tensor, captions: list[str], info: dict | None = None):
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({"tokens": tokens.contiguous()}, str(tmp),
              metadata={"captions": json.dumps(captions), "info": json.dumps(info or {})})
    os.replace(tmp, path)


class TokenCache:
    def __init__(self, path):
        from safetensors import safe_open
        from safetensors.torch import load_file
        self.tokens = load_file(str(path))["tokens"].long()                    # [n, h, w]
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        self.captions = json.loads(meta["captions"])
        self.info = json.loads(meta.get("info", "{}"))

    def __len__(self):
        return self.tokens.shape[0]

    def crop(self, r: np.random.Generator, batch: int, th: int, tw: int):
        """-> tokens [batch, th, tw], captions [batch]; raises if the cache is too small."""
        n, h, w = self.tokens.shape
        if th > h or tw > w:
            raise ValueError(f"token cache images are {h} x {w} tokens, a chain needs {th} x {tw}")
        out, caps = [], []
        for _ in range(batch):
            i = int(r.integers(n))
            y0, x0 = int(r.integers(0, h - th + 1)), int(r.integers(0, w - tw + 1))
            t = self.tokens[i, y0:y0 + th, x0:x0 + tw]
            if r.random() < 0.5 and self.info.get("flip", False):
                t = t.flip(-1)
            out.append(t)
            caps.append(self.captions[i])
        return torch.stack(out), caps


def build_cache(vq, spec: str, n: int, height: int, width: int, path, seed: int = 0, log=print):
    import time
    t0 = time.time()
    imgs, caps = render_images(spec, n, height, width, seed)
    t1 = time.time()
    tokens = encode_images(vq, imgs)
    save_cache(path, tokens, caps, {"spec": spec, "n": n, "height": height, "width": width, "seed": seed})
    log(f"token cache {path}: {n} images {height}x{width} -> {tuple(tokens.shape)} tokens "
        f"(render {t1 - t0:.0f} s, encode {time.time() - t1:.0f} s)")
    return tokens, caps
