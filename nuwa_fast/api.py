"""The tasks behind NuwaModel's methods: pixels in, pixels out, built on engine.run.

    model = nuwa_fast.load("tiny")
    r = model.generate_image("a snowy mountain range at sunset", height=256, width=1536)
    r.save("panorama.png"); r.stats.tokens_per_second

Each task takes a resolved GenerationConfig (nuwa_fast.generation); the methods of NuwaModel
(nuwa_fast.model) merge their keywords into one and call these.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import adc, engine, ncp, oracle, sizing
from .engine import TaskSpec
from .generation import GenerationConfig
from .images import PatchEvent, Result, decode_tokens, encode_pixels, to_rgb_array

MAX_PIXELS_SIDE = 1 << 20


# ---- argument checks --------------------------------------------------------------------------------
def _size(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or \
            (isinstance(v, float) and (not math.isfinite(v) or v != int(v))):
        raise ValueError(f"{name} must be a whole number of pixels, got {v!r}")
    v = int(v)
    if v < minimum or v > MAX_PIXELS_SIDE:
        raise ValueError(f"{name} must be between {minimum} and {MAX_PIXELS_SIDE} pixels, got {v}")
    return v


def _prompts(prompt, batch):
    batch = _size("batch", batch)
    if prompt is None or isinstance(prompt, str):
        return [prompt or ""] * batch
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        if len(prompt) != batch and batch != 1:
            raise ValueError(f"got {len(prompt)} prompts for batch={batch}; give one prompt or one per sample")
        return list(prompt)
    raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")


def _grid(model, frames, h_tok, w_tok):
    p = model.cfg.patch
    return (frames, -(-h_tok // p), -(-w_tok // p))


# ---- the shared driver ------------------------------------------------------------------------------
_COMPILE_ADVICE_GIVEN = False


def _compile_advice(stats):
    """Warn once per process when torch.compile cost more than it could have saved in this run.

    The compile happens in the first decoded patch (or, on CUDA, while capturing): its cost is the
    time above the median of the other patches. A compiled step is taken to be at most 4x faster than
    the eager one (measured: 1.2-2.7x on a CPU), so it saves at most 3 median patch times per patch.
    """
    global _COMPILE_ADVICE_GIVEN
    ps = stats.patch_seconds or []
    if _COMPILE_ADVICE_GIVEN or not ps:
        return
    med = float(np.median(sorted(ps)[:-1])) if len(ps) > 1 else 0.0    # the slowest patch holds the compile
    cost = sum(max(0.0, t - med) for t in ps) + stats.capture_seconds
    gain = 3 * med * len(ps)
    if cost > gain:
        import warnings
        _COMPILE_ADVICE_GIVEN = True
        pays = int(cost / max(3 * med, 1e-9)) + 1
        warnings.warn(f"compile_step: compiling took about {cost:.1f} s of this {stats.seconds:.1f} s run and "
                      f"can save at most about {gain:.1f} s over its {len(ps)} patches; it pays off from "
                      f"about {pays} patches per call. Leave it off for canvases this small "
                      f"(compile_step=False, the default; the CLI without --compile).", stacklevel=4)


def _run(model, spec, gc: GenerationConfig, view):
    """Tokens [B, T, h, w] and Stats of `spec` under `gc`; view(tokens, t) -> the pixels of an event."""
    sampling = gc.sampling()
    if gc.oracle:
        tokens, stats = oracle.run(model, spec, seed=gc.seed, sampling=sampling)
        stats.seed = gc.seed
        return tokens, stats
    hook = None
    if gc.on_patch is not None:
        def hook(done, total, tokens, steps):
            gc.on_patch(PatchEvent(done, total, tuple(spec.order[max(steps)]), tokens, view))
    try:
        tokens, stats = engine.run(model, spec, seed=gc.seed, sampling=sampling, backend=gc.backend,
                                   progress=gc.progress, attention=gc.attention, cuda_graphs=gc.cuda_graphs,
                                   compile_step=gc.compile_step, schedule=gc.schedule, max_lanes=gc.max_lanes,
                                   patch_times=gc.compile_step, on_patch=hook)
    except torch.OutOfMemoryError as e:
        raise _oom_advice(model, spec, sampling) from e
    if stats.compiled:
        _compile_advice(stats)
    stats.seed = gc.seed
    return tokens, stats


def _oom_advice(model, spec, sampling):
    """An out-of-memory during generation, restated with the batch size that would fit."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cfg = model.cfg
    extent = engine.check_extent(model, spec.extent)
    peak = ncp.plan(spec.order, extent, spec.grid).peak_pages
    per_sample = peak * ncp.page_bytes(cfg, next(model.parameters()).dtype) * (2 if sampling.guidance != 1.0 else 1)
    avail = ncp.available_bytes(model.device)
    fit = max(int(avail * 0.8) // max(per_sample, 1), 0)
    return MemoryError(f"out of memory on {model.device} while generating {spec.batch} samples of a "
                       f"{spec.grid[1]} x {spec.grid[2]} patch canvas ({spec.grid[0]} frames; the NCP holds "
                       f"{peak} pages, {ncp._human(per_sample)} per sample); with {ncp._human(avail)} free, about "
                       f"{fit} samples fit: use batch={max(fit, 1)}" + ("" if fit else " and a narrower canvas"))


def _known_canvas(grid, p):
    """Empty known tokens and mask [T, Hg*p, Wg*p] of a grid, to fill with the given tokens."""
    known = np.zeros((grid[0], grid[1] * p, grid[2] * p), dtype=np.int64)
    return known, np.zeros_like(known, dtype=bool)


# ---- the tasks ---------------------------------------------------------------------------------------
def generate(model, prompt, frames, height, width, batch, region, gc: GenerationConfig) -> Result:
    """Images (frames=1: pixels [B, H, W, 3]) and videos ([B, T, H, W, 3]) from a prompt, or none."""
    H, W, T = _size("height", height), _size("width", width), _size("frames", frames)
    order = "down" if gc.order is None else gc.order
    f = model.cfg.vq.f
    h, w = -(-H // f), -(-W // f)
    grid = _grid(model, T, h, w)
    prompts = _prompts(prompt, batch)
    s = gc.sampling()
    _, region = sizing.check_canvas(model, grid, order, region, len(prompts), gc.extent, s, (T, H, W),
                                    pool=not gc.oracle)
    spec = TaskSpec(grid=grid, order=adc.order(order, grid, region), prompts=prompts, extent=gc.extent,
                    directions=adc.directions(order, grid))
    tokens, stats = _run(model, spec, gc, view=lambda tok, t: decode_tokens(model, tok, 1, h, w, H, W)[0, 0])
    return Result(pixels=decode_tokens(model, tokens, T, h, w, H, W), tokens=tokens, stats=stats)


def outpaint(model, image, left, right, top, bottom, prompt, batch, paste, gc: GenerationConfig) -> Result:
    """Extend `image` by the given number of pixels on each side; its own tokens stay unchanged."""
    img = to_rgb_array(image)
    pads = {k: _size(k, v, minimum=0) for k, v in dict(left=left, right=right, top=top, bottom=bottom).items()}
    if not any(pads.values()):
        raise ValueError("outpaint needs at least one of left, right, top, bottom > 0 (pixels to add)")
    f, p = model.cfg.vq.f, model.cfg.patch
    Hi, Wi = img.shape[:2]
    if Hi < f or Wi < f:
        raise ValueError(f"image is {Wi}x{Hi} pixels; it must be at least {f}x{f} (one VQ token)")
    tt, lt = -(-pads["top"] // f), -(-pads["left"] // f)               # image origin, in tokens
    oy, ox = tt * f - pads["top"], lt * f - pads["left"]                 # crop offset of the result
    H, W = pads["top"] + Hi + pads["bottom"], pads["left"] + Wi + pads["right"]
    h, w = -(-(oy + H) // f), -(-(ox + W) // f)
    grid = _grid(model, 1, h, w)
    order = gc.order
    if order is None:
        sides = [k for k, v in pads.items() if v]
        order = {"right": "right", "left": "left", "bottom": "down", "top": "up"}[sides[0]] \
            if len(sides) == 1 else "outward"
    region = (tt // p, lt // p, (tt + Hi // f - 1) // p, (lt + Wi // f - 1) // p) if order == "outward" else None
    prompts = _prompts(prompt, batch)
    sizing.check_canvas(model, grid, order, region, len(prompts), gc.extent, gc.sampling(), (1, H, W), known=True,
                        pool=not gc.oracle)                             # before the order and the encode
    patch_order = adc.order(order, grid, region)
    known, mask = _known_canvas(grid, p)
    toks = encode_pixels(model, img)
    known[0, tt:tt + toks.shape[0], lt:lt + toks.shape[1]] = toks
    mask[0, tt:tt + Hi // f, lt:lt + Wi // f] = True                      # whole tokens only
    spec = TaskSpec(grid=grid, order=patch_order, prompts=prompts, known=known, known_mask=mask, extent=gc.extent,
                    directions=adc.directions(order, grid))

    def view(tok, t):                                                   # on_patch's picture of the canvas
        im = decode_tokens(model, tok, 1, h, w, H, W, oy, ox)[0, 0]
        if paste:
            im[pads["top"]:pads["top"] + Hi, pads["left"]:pads["left"] + Wi] = img
        return im
    tokens, stats = _run(model, spec, gc, view)
    px = decode_tokens(model, tokens, 1, h, w, H, W, oy, ox)[:, 0]
    if paste:
        px[:, pads["top"]:pads["top"] + Hi, pads["left"]:pads["left"] + Wi] = img
    return Result(pixels=px, tokens=tokens, stats=stats)


def animate(model, image, frames, prompt, batch, paste, gc: GenerationConfig) -> Result:
    """Image animation: frame 0 is `image` (its tokens stay unchanged), later frames are generated."""
    img = to_rgb_array(image)
    T = _size("frames", frames, minimum=2)
    order = "down" if gc.order is None else gc.order
    f, p = model.cfg.vq.f, model.cfg.patch
    H, W = img.shape[:2]
    if H < f or W < f:
        raise ValueError(f"image is {W}x{H} pixels; it must be at least {f}x{f} (one VQ token)")
    h, w = -(-H // f), -(-W // f)
    grid = _grid(model, T, h, w)
    prompts = _prompts(prompt, batch)
    sizing.check_canvas(model, grid, order, None, len(prompts), gc.extent, gc.sampling(), (T, H, W), known=True,
                        pool=not gc.oracle)                             # before the order and the encode
    patch_order = adc.order(order, grid)
    known, mask = _known_canvas(grid, p)
    known[0, :h, :w] = encode_pixels(model, img)
    mask[0, :H // f, :W // f] = True
    spec = TaskSpec(grid=grid, order=patch_order, prompts=prompts, known=known, known_mask=mask, extent=gc.extent,
                    directions=adc.directions(order, grid))
    tokens, stats = _run(model, spec, gc, view=lambda tok, t: img.copy() if paste and t == 0 else
                         decode_tokens(model, tok, 1, h, w, H, W)[0, 0])
    px = decode_tokens(model, tokens, T, h, w, H, W)
    if paste:
        px[:, 0] = img
    return Result(pixels=px, tokens=tokens, stats=stats)
