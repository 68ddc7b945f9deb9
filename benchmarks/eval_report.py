"""Quality report of a checkpoint: python3 benchmarks/eval_report.py [CKPT] --out eval.json

Writes JSON with
  vq              held-out PSNR (dB), codebook usage and perplexity (128 px crops)
  bits_per_token  held-out bits/token per basic order, with the trained NCP extent vs extent (0,0,0)
  prompt_test     "night" vs "sunset": mean RGB of the top rows of 8 seeds each of generated
                  256 x 256 images; night skies must come out darker than sunset skies, and
                  sunset skies warmer (red minus blue) than night skies
  panorama        (--panorama PATH) a 4096 x 256 panorama from a prompt: seconds, tokens/s, peak pages
plus device, versions and git revision. Prints a short table.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nuwa_fast  # noqa: E402
from nuwa_fast.train.evaluate import evaluate  # noqa: E402

PROMPTS = {"night": "green grassland with mountains at night under the stars",
           "sunset": "green grassland with mountains at sunset with clouds"}


def prompt_test(model, seeds=8, size=256, top=32, guidance=3.0, order="down"):
    """Mean colour (0..255) of the top `top` pixel rows per prompt, over `seeds` samples."""
    out = {}
    for name, prompt in PROMPTS.items():
        t0 = time.time()
        r = model.generate_image(prompt, height=size, width=size, order=order, batch=seeds, seed=0,
                                 guidance=guidance)
        top_rgb = r.pixels[:, :top].reshape(seeds, -1, 3).astype(np.float64).mean(1)     # [seeds, 3]
        out[name] = {"prompt": prompt, "mean_rgb": top_rgb.mean(0).round(1).tolist(),
                     "brightness": float(top_rgb.mean()), "per_seed_brightness": top_rgb.mean(1).round(1).tolist(),
                     "seconds": round(time.time() - t0, 1)}
        out[name]["warmth"] = float(top_rgb[:, 0].mean() - top_rgb[:, 2].mean())               # red - blue
    out["night_darker"] = out["night"]["brightness"] < out["sunset"]["brightness"]
    out["sunset_warmer"] = out["sunset"]["warmth"] > out["night"]["warmth"]
    out.update(seeds=seeds, size=size, top_rows=top, guidance=guidance, order=order)
    return out


PANORAMA_PROMPT = "snowy mountains above a pine forest and a lake at sunset"
DEMO_SAMPLING = dict(temperature=0.8, top_k=50, order="right")      # what `make demo` uses


def panorama(model, path, width=4096, height=256, prompt=PANORAMA_PROMPT, seed=0):
    t0 = time.time()
    r = model.generate_image(prompt, height=height, width=width, seed=seed, **DEMO_SAMPLING)
    r.save(path)
    return {"path": str(path), "prompt": prompt, "width": width, "height": height, "seed": seed,
            "sampling": DEMO_SAMPLING, "seconds": round(time.time() - t0, 1),
            "tokens_per_s": round(r.stats.tokens_per_second, 1), "peak_pages": r.stats.peak_pages}


def _git_rev():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                       text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default="tiny")
    ap.add_argument("--out", default="eval_report.json")
    ap.add_argument("--samples", type=int, default=16, help="held-out chains per order")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-prompts", action="store_true")
    ap.add_argument("--panorama", default=None, help="also paint a 4096 x 256 panorama to this path")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rep = evaluate(a.checkpoint, samples=a.samples)
    model = nuwa_fast.load(a.checkpoint) if a.panorama or not a.skip_prompts else None
    if not a.skip_prompts:
        rep["prompt_test"] = prompt_test(model, seeds=a.seeds, guidance=a.guidance)
    if a.panorama:
        rep["panorama"] = panorama(model, a.panorama)
    rep["env"] = {"device": "cpu", "torch": torch.__version__, "nuwa_fast": nuwa_fast.__version__,
                  "python": platform.python_version(), "git": _git_rev(), "threads": torch.get_num_threads()}
    Path(a.out).write_text(json.dumps(rep, indent=2) + "\n")
    v, b = rep["vq"], rep["bits_per_token"]
    print(f"VQ: PSNR {v['psnr']:.2f} dB, usage {v['usage']:.3f}, perplexity {v['perplexity']:.0f}")
    print(f"{'order':8s} {'bits (extent ' + str(tuple(rep['extent'])) + ')':>24s} {'bits (no context)':>18s}")
    for name, row in b["per_order"].items():
        print(f"{name:8s} {row['trained']:24.3f} {row['none']:18.3f}")
    if "prompt_test" in rep:
        pt = rep["prompt_test"]
        print(f"top-row brightness: night {pt['night']['brightness']:.1f}, sunset {pt['sunset']['brightness']:.1f} "
              f"-> night darker: {pt['night_darker']}; warmth (R-B) night {pt['night']['warmth']:.1f}, "
              f"sunset {pt['sunset']['warmth']:.1f} -> sunset warmer: {pt['sunset_warmer']}")
    if "panorama" in rep:
        pn = rep["panorama"]
        print(f"panorama {pn['width']}x{pn['height']}: {pn['seconds']} s, {pn['tokens_per_s']} tokens/s, "
              f"peak {pn['peak_pages']} pages -> {pn['path']}")
    print(f"wrote {a.out}")
    return rep


if __name__ == "__main__":
    main()
