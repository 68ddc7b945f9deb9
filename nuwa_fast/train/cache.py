"""A token cache for stage 2: wide images tokenised once by the frozen VQ, cut into chains per step.

Rendering and VQ-encoding a fresh image for every chain costs more than the decoder step on a CPU.
A cache of n wide images (e.g. 256 x 512 px = 32 x 64 tokens) gives every step new chains by
cropping a random Hc*p x Wc*p token window (any token offset) of a random image, so each image
serves many chains. The cache is a safetensors file: tokens int32 [n, h, w] (images) or
[n, T, h, w] (clips) + captions and, for rendered landscapes, the attributes of every image (JSON),
from which training draws a fresh phrasing of the caption per chain (nuwa_fast.data.captions).
Crops are a pure function of the step's generator, so resume stays exact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from . import sources


def render_images(spec: str, n: int, height: int, width: int, seed: int = 0, heldout: bool = False,
                  frames: int = 1):
    """n images (uint8 [n, height, width, 3]; clips [n, frames, height, width, 3] when frames > 1),
    their captions and attributes (None for sources other than "landscape"); image i from
    rng(seed, 0, i). Landscape worlds are drawn straight from that generator, so the attributes that
    reproduce each picture are kept."""
    from ..data.landscape import render_landscape, render_landscape_video
    imgs, caps, attrs = [], [], []
    for i in range(n):
        r = sources.rng(seed, 0, i, salt=11 if not heldout else 13)
        if spec == "landscape":
            world = int(r.integers(2 ** 31))
            if frames > 1:
                img, cap, a = render_landscape_video(world, frames, height, width)
            else:
                img, cap, a = render_landscape(world, height, width)
            attrs.append(a)
        else:
            clip, cap = sources.source(spec, heldout).sample(r, height, width, frames)
            img = clip if frames > 1 else clip[0]
            attrs.append(None)
        imgs.append(img)
        caps.append(cap)
    return np.stack(imgs), caps, attrs


@torch.no_grad()
def encode_images(vq, imgs: np.ndarray, batch: int = 4) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> int32 tokens [n, H/f, W/f]; clips [n, T, H, W, 3] -> [n, T, H/f, W/f]."""
    if imgs.ndim == 5:
        n, T = imgs.shape[:2]
        tok = encode_images(vq, imgs.reshape(n * T, *imgs.shape[2:]), batch)
        return tok.view(n, T, *tok.shape[1:])
    dev = vq.codebook.device
    out = [vq.encode(sources.to_tensor(imgs[i:i + batch]).to(dev)).cpu().int() for i in range(0, len(imgs), batch)]
    return torch.cat(out)


def save_cache(path, tokens: torch.Tensor, captions: list[str], info: dict | None = None,
               attrs: list | None = None):
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    meta = {"captions": json.dumps(captions), "info": json.dumps(info or {})}
    if attrs is not None:
        meta["attrs"] = json.dumps(attrs)
    save_file({"tokens": tokens.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


class TokenCache:
    def __init__(self, path):
        from safetensors import safe_open
        from safetensors.torch import load_file
        self.tokens = load_file(str(path))["tokens"].long()                    # [n, h, w] or [n, T, h, w]
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        self.captions = json.loads(meta["captions"])
        self.info = json.loads(meta.get("info", "{}"))
        self.attrs = json.loads(meta["attrs"]) if "attrs" in meta else None

    @property
    def frames(self) -> int:
        return self.tokens.shape[1] if self.tokens.dim() == 4 else 1

    def __len__(self):
        return self.tokens.shape[0]

    def crop(self, r: np.random.Generator, batch: int, th: int, tw: int):
        """-> tokens [batch, th, tw], captions [batch]; raises if the cache is too small."""
        tok, caps, _ = self.crop_placed(r, batch, th, tw)
        return tok, caps

    def crop_placed(self, r: np.random.Generator, batch: int, th: int, tw: int, frames: int = 1,
                    phrasing: float = 0.0):
        """-> tokens [batch, th, tw] ([batch, frames, th, tw] from a clip cache), captions [batch], and
        the crops' placement {"y_offset": [batch] tokens from the image top, "height": image tokens}.

        phrasing: probability of a fresh random phrasing of the image's attributes (data.captions)
        instead of its canonical caption (caches with attributes only)."""
        from ..data.captions import phrase
        h, w = self.tokens.shape[-2:]
        n, T = self.tokens.shape[0], self.frames
        if th > h or tw > w or frames > T:
            raise ValueError(f"token cache clips are {T} x {h} x {w} tokens (frames x h x w), a chain needs "
                             f"{frames} x {th} x {tw}")
        out, caps, y0s = [], [], []
        for _ in range(batch):
            i = int(r.integers(n))
            y0, x0 = int(r.integers(0, h - th + 1)), int(r.integers(0, w - tw + 1))
            t0 = int(r.integers(0, T - frames + 1))
            t = self.tokens[i, ..., y0:y0 + th, x0:x0 + tw]
            if self.tokens.dim() == 4:
                t = t[t0:t0 + frames] if frames > 1 else t[t0]
            if r.random() < 0.5 and self.info.get("flip", False):
                t = t.flip(-1)
            out.append(t)
            cap = self.captions[i]
            if self.attrs is not None and r.random() < phrasing:
                a = self.attrs[i]
                cap = phrase(a, r, motion=a.get("motion") if T > 1 else None)
            caps.append(cap)
            y0s.append(y0)
        return torch.stack(out), caps, {"y_offset": y0s, "height": h}


def build_cache(vq, spec: str, n: int, height: int, width: int, path, seed: int = 0, log=print, frames: int = 1):
    import time
    t0 = time.time()
    imgs, caps, attrs = render_images(spec, n, height, width, seed, frames=frames)
    t1 = time.time()
    tokens = encode_images(vq, imgs)
    save_cache(path, tokens, caps, {"spec": spec, "n": n, "height": height, "width": width, "seed": seed,
                                    "frames": frames},
               attrs=attrs if all(a is not None for a in attrs) else None)
    log(f"token cache {path}: {n} images {height}x{width} -> {tuple(tokens.shape)} tokens "
        f"(render {t1 - t0:.0f} s, encode {time.time() - t1:.0f} s)")
    return tokens, caps
