"""Contact sheet of procedural landscapes: python3 benchmarks/show_data.py OUT.png [--video].

12 seeds at 128x384 in a 4x3 grid, each captioned underneath; --video shows 4 clips as frame strips.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nuwa_fast.data.landscape import render_landscape, render_landscape_video  # noqa: E402


def sheet(tiles: list[tuple[np.ndarray, str]], cols: int, pad: int = 4, label: int = 14) -> Image.Image:
    h, w = tiles[0][0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    out = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, (img, text) in enumerate(tiles):
        x, y = pad + (i % cols) * (w + pad), pad + (i // cols) * (h + label + pad)
        out.paste(Image.fromarray(img), (x, y))
        draw.text((x, y + h + 1), text, fill=(0, 0, 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", help="PNG path to write")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--video", action="store_true", help="4 clips of 4 frames instead of 12 stills")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.video:
        tiles = []
        for s in range(args.seed, args.seed + 4):
            video, caption, _ = render_landscape_video(s, 4, args.height, args.width // 2)
            tiles += [(f, caption if i == 0 else "") for i, f in enumerate(video)]
        img = sheet(tiles, cols=4)
    else:
        img = sheet([render_landscape(s, args.height, args.width)[:2]
                     for s in range(args.seed, args.seed + 12)], cols=3)
    img.save(args.out)
    print(f"wrote {args.out} ({img.width}x{img.height}) in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
