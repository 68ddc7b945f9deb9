"""The README gallery: every task of a checkpoint, as PNG strips under --out (default out/gallery).

    python3 benchmarks/gallery.py [CKPT] --out docs/gallery

  prompts.png    text-to-image: several plain-English prompts side by side (256 x 384 each)
  outpaint.png   a held-out render (outlined in white) extended by 128 px left and right
  animate.png    image animation: frame 0 is a held-out render, then generated frames
  video.png      text-to-video frames
  panorama.png   (--panorama) a 4096 x 256 panorama
Every picture uses the model's default sampling (GenerationConfig: the eval's best) and order.
Writes gallery.json beside them: prompts, seeds, sampling, seconds per picture.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nuwa_fast  # noqa: E402
from nuwa_fast.data.landscape import render_landscape  # noqa: E402
from nuwa_fast.train.sources import HELDOUT_SEED  # noqa: E402

PROMPTS = ["snowy mountains above a pine forest and a lake at sunset",
           "a desert with rocky mountains on a starry night",
           "green hills by the sea on a bright sunny day",
           "a dark pine forest below the peaks at dusk"]
VIDEO_PROMPT = "green hills and a lake on a sunny day, clouds drift by"


def strip(frames, gap=4):
    """uint8 [N, H, W, 3] -> one image, frames left to right with a white gap."""
    n, h, w, _ = frames.shape
    out = np.full((h, n * w + (n - 1) * gap, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        out[:, i * (w + gap):i * (w + gap) + w] = f
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default="tiny")
    ap.add_argument("--out", default="out/gallery")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--panorama", action="store_true", help="also paint the 4096 x 256 panorama")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = nuwa_fast.load(a.checkpoint)
    d = nuwa_fast.GenerationConfig()
    log = {"checkpoint": a.checkpoint, "seed": a.seed, "pictures": {},
           "sampling": {"temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p, "guidance": d.guidance}}

    def timed(name, fn, **info):
        t0 = time.time()
        img = fn()
        Image.fromarray(img).save(out / f"{name}.png")
        log["pictures"][name] = {**info, "seconds": round(time.time() - t0, 1)}
        print(f"{name}: {log['pictures'][name]['seconds']} s")

    timed("prompts", lambda: strip(np.stack([
        model.generate_image(p, height=256, width=384, seed=a.seed).pixels[0]
        for p in PROMPTS])), prompts=PROMPTS, size=[256, 384])

    src = render_landscape(HELDOUT_SEED + 1, 256, 256)[0]

    def outpaint():
        px = model.outpaint(src, left=128, right=128, seed=a.seed).pixels[0].copy()
        img = Image.fromarray(px)
        ImageDraw.Draw(img).rectangle([128, 0, 128 + 255, 255], outline=(255, 255, 255), width=2)
        return np.asarray(img)

    timed("outpaint", outpaint, source="held-out render", left=128, right=128, order="outward")
    timed("animate", lambda: strip(model.animate(src, frames=4, seed=a.seed).pixels[0]),
          source="held-out render", frames=4)
    timed("video", lambda: strip(model.generate_video(VIDEO_PROMPT, frames=4, height=256, width=256,
                                                      seed=a.seed).pixels[0]),
          prompt=VIDEO_PROMPT, frames=4, size=[256, 256])
    if a.panorama:
        timed("panorama", lambda: model.generate_image(PROMPTS[0], height=256, width=4096,
                                                       seed=a.seed).pixels[0],
              prompt=PROMPTS[0], size=[256, 4096])
    (out / "gallery.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
