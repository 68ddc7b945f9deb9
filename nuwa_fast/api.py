"""The five tasks as methods of NuwaModel: pixels in, pixels out, built on engine.run.

    model = nuwa_fast.load("tiny")
    r = model.generate_image("a snowy mountain range at sunset", height=256, width=1536)
    r.save("panorama.png"); r.stats.tokens_per_second
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from . import adc, engine, ncp, oracle, output, sizing
from .engine import Stats, TaskSpec
from .errors import BadFile
from .model import NuwaModel
from .sampling import Sampling, check_seed

MAX_PIXELS_SIDE = 1 << 20


@dataclass
class Result:
    pixels: np.ndarray              # uint8 [B, H, W, 3] (image) or [B, T, H, W, 3] (video)
    tokens: torch.Tensor            # int64 [B, T, h, w] VQ tokens (padded to whole patches)
    stats: Stats

    @property
    def is_video(self) -> bool:
        return self.pixels.ndim == 5

    def images(self):
        from PIL import Image
        if self.is_video:
            return [[Image.fromarray(f) for f in clip] for clip in self.pixels]
        return [Image.fromarray(im) for im in self.pixels]

    @property
    def kind(self) -> str:
        return "video" if self.is_video else "image"

    def save(self, path: str, fps: int = 8, overwrite: bool = True) -> list[str]:
        """PNG/JPEG/WebP/BMP (image) or GIF/MP4 (video); with several samples `name_0.ext`, `name_1.ext`, ...

        Every file is written to its own temporary name and the batch is renamed into place only
        when all files are complete: an interrupted or failed save leaves nothing (nuwa_fast.output).
        overwrite=False refuses to replace an existing file.
        """
        names = output.check(path, self.kind, len(self.pixels), overwrite=overwrite)
        ext = os.path.splitext(names[0])[1]
        return output.write_all(list(self.pixels), names, lambda arr, tmp: _write(arr, tmp, ext, fps),
                                overwrite=overwrite)

_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def _write(arr, path, ext, fps):
    from PIL import Image
    if arr.ndim == 3:
        Image.fromarray(arr).save(path, format=_PIL_FORMATS[ext])
    elif ext == ".gif":
        frames = [Image.fromarray(f) for f in arr]
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    else:
        write_mp4(arr, path, fps)


def write_mp4(frames: np.ndarray, path: str, fps: int = 8) -> None:
    """uint8 [T, H, W, 3] -> H.264 MP4 through PyAV (its wheels ship the FFmpeg libraries).

    Even sizes are stored as yuv420p (plays everywhere); an odd width or height, which 4:2:0
    chroma cannot hold, as yuv444p, so the file has exactly the canvas' size.
    """
    try:
        import av
    except ImportError as e:
        raise RuntimeError("saving MP4 needs PyAV: pip install 'nuwa-fast[video]' (or pip install av); "
                           "or save as .gif") from e
    T, H, W, _ = frames.shape
    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuv420p" if H % 2 == 0 and W % 2 == 0 else "yuv444p"
        stream.options = {"crf": "18"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():                                  # flush the encoder
            container.mux(packet)


# ---- argument checks --------------------------------------------------------------------------------
def _size(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or \
            (isinstance(v, float) and (not math.isfinite(v) or v != int(v))):
        raise ValueError(f"{name} must be a whole number of pixels, got {v!r}")
    v = int(v)
    if v < minimum or v > MAX_PIXELS_SIDE:
        raise ValueError(f"{name} must be between {minimum} and {MAX_PIXELS_SIDE} pixels, got {v}")
    return v


def _extent_arg(extent):
    if extent is None:
        return None
    if isinstance(extent, (str, bytes)) or not hasattr(extent, "__len__") or len(extent) != 3 or \
            any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 0 for e in extent):
        raise ValueError(f"extent must be three whole numbers >= 0 (e_t, e_h, e_w), e.g. (0, 2, 2); got {extent!r}")
    return tuple(int(e) for e in extent)


def _prompts(prompt, batch):
    batch = _size("batch", batch)
    if prompt is None or isinstance(prompt, str):
        return [prompt or ""] * batch
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        if len(prompt) != batch and batch != 1:
            raise ValueError(f"got {len(prompt)} prompts for batch={batch}; give one prompt or one per sample")
        return list(prompt)
    raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")


def _open_image(path: str):
    """Open and fully decode an image file, refusing missing, empty, unknown and damaged files."""
    from PIL import Image, UnidentifiedImageError
    if os.path.isdir(path):
        raise BadFile(f"{path!r} is a directory, not an image file; give the path of a PNG or JPEG inside it")
    if not os.path.exists(path):
        raise BadFile(f"image file {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise BadFile(f"image file {path!r} is empty (0 bytes); give a PNG or JPEG file")
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as e:
        raise BadFile(f"image file {path!r} is larger than Pillow's decompression-bomb limit "
                      f"({e}); if you trust the file, load it yourself after setting "
                      f"PIL.Image.MAX_IMAGE_PIXELS = None and pass the image, or downscale it") from e
    except UnidentifiedImageError:
        raise BadFile(f"{path!r} is not an image file Pillow can read (PNG, JPEG, WebP, BMP, GIF, ...)") from None
    except OSError as e:
        raise BadFile(f"cannot read image file {path!r}: it is truncated or corrupt ({e.strerror or e}); "
                      f"re-export it as PNG or JPEG") from None
    try:
        image.load()
    except Image.DecompressionBombError as e:
        raise BadFile(f"image file {path!r} is larger than Pillow's decompression-bomb limit ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadFile(f"image file {path!r} is truncated or corrupt ({e}); re-export it as PNG or JPEG") from None
    return image


def to_rgb_array(image) -> np.ndarray:
    """PIL image, uint8 array [H, W, 3] or float tensor [3, H, W] in [-1, 1] -> uint8 [H, W, 3]."""
    from PIL import Image
    if isinstance(image, (str, os.PathLike)):
        image = _open_image(os.fspath(image))
    if isinstance(image, Image.Image):
        if image.mode in ("I", "F") or image.mode.startswith("I;"):
            raise ValueError(f"image mode {image.mode!r} (high bit depth) is not supported; convert it to 8-bit "
                             f"RGB first, e.g. image.point(lambda v: v / 256).convert('RGB')")
        if image.mode == "La":                            # premultiplied L + alpha: PIL cannot convert it
            raise ValueError("image mode 'La' (premultiplied alpha) cannot be converted to RGB; save it as "
                             "an RGB or RGBA PNG first")
        if image.mode == "RGBa":                          # premultiplied alpha: un-premultiply first
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            bg = Image.new("RGB", image.size, (255, 255, 255))
            bg.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            image = bg
        try:
            image = np.asarray(image.convert("RGB"))
        except ValueError as e:
            raise ValueError(f"image mode {image.mode!r} cannot be converted to RGB ({e}); save it as an "
                             f"RGB or RGBA PNG first") from e
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must be [3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
        image = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image, a path, a uint8 array [H, W, 3] or a tensor [3, H, W]; "
                        f"got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"an array image must be uint8 [H, W, 3] (RGB), got {image.dtype} {image.shape}; "
                         f"convert with np.asarray(pil_image.convert('RGB'))")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: {image.shape}")
    return image


# ---- shared driver -----------------------------------------------------------------------------------
def _grid(model, frames, h_tok, w_tok):
    p = model.cfg.patch
    return (frames, -(-h_tok // p), -(-w_tok // p))


def _encode_pixels(model, img: np.ndarray, tile: int = 64):
    """uint8 [H, W, 3] -> tokens [ceil(H/f), ceil(W/f)] (edge-padded to whole tokens).

    Encoded in tiles of tile x tile tokens with the encoder's receptive field as halo, converting
    only one tile to float at a time (edge padding is applied per tile, the image is never copied):
    memory is bounded by the tile, not by the image.
    """
    f = model.cfg.vq.f
    H, W = img.shape[:2]
    h, w = -(-H // f), -(-W // f)
    halo = model.vq.encode_halo
    dtype = next(model.vq.parameters()).dtype
    out = np.empty((h, w), dtype=np.int64)
    for y0 in range(0, h, tile):
        y1, ya, yb = min(y0 + tile, h), max(y0 - halo, 0), min(y0 + tile + halo, h)
        for x0 in range(0, w, tile):
            x1, xa, xb = min(x0 + tile, w), max(x0 - halo, 0), min(x0 + tile + halo, w)
            crop = img[ya * f:min(yb * f, H), xa * f:min(xb * f, W)]
            pad_y, pad_x = (yb - ya) * f - crop.shape[0], (xb - xa) * f - crop.shape[1]
            if pad_y or pad_x:                                         # the last row/column of tiles only
                crop = np.pad(crop, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
            x = torch.from_numpy(np.array(crop))                  # one tile, writable
            x = x.to(model.device).permute(2, 0, 1)[None].to(dtype) / 127.5 - 1       # [1, 3, th*f, tw*f]
            with torch.no_grad():
                t = model.vq.encode(x)[0].cpu().numpy()                                # [th, tw]
            out[y0:y1, x0:x1] = t[y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    return out


@dataclass
class PatchEvent:
    """What an `on_patch` callback receives after each wave of patches (every task takes on_patch=callable)."""
    done: int                       # patches finished so far (a wave finishes several at once)
    total: int                      # patches in this run
    patch: tuple                    # (t, y, x) in the patch grid of the latest patch of the order finished
    tokens: torch.Tensor            # int64 [B, T, Hg*p, Wg*p], live: patches not reached yet hold 0
    _view: object = None

    def pixels(self, sample: int = 0, frame: int | None = None) -> np.ndarray:
        """uint8 [H, W, 3]: the canvas so far (frame: the current patch's by default), decoded."""
        t = self.patch[0] if frame is None else frame
        return self._view(self.tokens[sample:sample + 1, t:t + 1], t)

    def image(self, sample: int = 0, frame: int | None = None):
        from PIL import Image
        return Image.fromarray(self.pixels(sample, frame))


_COMPILE_ADVICE_GIVEN = False


def _compile_advice(stats):
    """Warn once per process when torch.compile cost more than it could have saved in this run.

    The compile happens in the first decoded patch (or, on CUDA, while capturing): its cost is the
    time above the median of the other patches. A compiled step is taken to be at most 4x faster than
    the eager one (measured: 1.2-2.7x on a CPU), so it saves at most 3 median patch times per patch.
    """
    global _COMPILE_ADVICE_GIVEN
    ps = stats.extra.get("patch_seconds") or []
    if _COMPILE_ADVICE_GIVEN or not ps:
        return
    med = float(np.median(sorted(ps)[:-1])) if len(ps) > 1 else 0.0    # the slowest patch holds the compile
    cost = sum(max(0.0, t - med) for t in ps) + stats.extra.get("capture_seconds", 0.0)
    gain = 3 * med * len(ps)
    if cost > gain:
        import warnings
        _COMPILE_ADVICE_GIVEN = True
        pays = int(cost / max(3 * med, 1e-9)) + 1
        warnings.warn(f"compile_step: compiling took about {cost:.1f} s of this {stats.seconds:.1f} s run and "
                      f"can save at most about {gain:.1f} s over its {len(ps)} patches; it pays off from "
                      f"about {pays} patches per call. Leave it off for canvases this small "
                      f"(compile_step=False, the default; the CLI without --compile).", stacklevel=3)


def _run(model, spec, seed, sampling, backend, progress, use_oracle=False, attention=None, cuda_graphs=None,
         compile_step=False, schedule="waves", max_lanes=None, on_patch=None, view=None):
    if use_oracle:
        return oracle.run(model, spec, seed=seed, sampling=sampling)
    hook = None
    if on_patch is not None:
        if not callable(on_patch):
            raise TypeError(f"on_patch must be a callable taking a PatchEvent, got {type(on_patch).__name__}")

        def hook(done, total, tokens, steps):
            on_patch(PatchEvent(done, total, tuple(spec.order[max(steps)]), tokens, view))
    try:
        tokens, stats = engine.run(model, spec, seed=seed, sampling=sampling, backend=backend, progress=progress,
                                   attention=attention, cuda_graphs=cuda_graphs, compile_step=compile_step,
                                   schedule=schedule, max_lanes=max_lanes, patch_times=bool(compile_step),
                                   on_patch=hook)
    except torch.OutOfMemoryError as e:
        raise _oom_advice(model, spec, sampling) from e
    if compile_step and stats.extra.get("compiled"):
        _compile_advice(stats)
    stats.extra["seed"] = seed
    return tokens, stats


def _oom_advice(model, spec, sampling):
    """An out-of-memory during generation, restated with the batch size that would fit."""
    from . import ncp
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


@torch.no_grad()
def _decode(model, tokens, frames, h_tok, w_tok, H, W, oy=0, ox=0, strip: int = 32):
    """tokens [B, T, h, w] -> uint8 [B, T, H, W, 3], cropping at pixel offset (oy, ox).

    Decoded in strips of `strip` token rows (each with the decoder's halo, so the result equals one
    whole decode) and converted to uint8 strip by strip: beyond the uint8 output, memory is bounded
    by one strip's float pixels, whatever the canvas.
    """
    B = tokens.shape[0]
    f = model.cfg.vq.f
    assert h_tok * f >= oy + H and w_tok * f >= ox + W
    halo = model.vq.halo
    out = np.empty((B, frames, H, W, 3), dtype=np.uint8)
    ty0, ty1 = oy // f, -(-(oy + H) // f)                                  # token rows that reach the output
    for t in range(frames):
        for s0 in range(ty0, ty1, strip):
            s1 = min(s0 + strip, ty1)
            a, b = max(s0 - halo, 0), min(s1 + halo, h_tok)
            px = model.vq.decode_tiled(tokens[:, t, a:b, :w_tok])            # [B, 3, (b-a)*f, w*f]
            px = px[:, :, (s0 - a) * f:(s1 - a) * f, ox:ox + W]
            px = ((px.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            r0, r1 = max(s0 * f, oy), min(s1 * f, oy + H)                   # output rows of this strip
            out[:, t, r0 - oy:r1 - oy] = px[:, r0 - s0 * f:r1 - s0 * f]
    return out


def _sampling(kw):
    return Sampling(temperature=kw.pop("temperature", 1.0), top_k=kw.pop("top_k", 0),
                    top_p=kw.pop("top_p", 1.0), guidance=kw.pop("guidance", 1.0))


def _common(kw):
    s = _sampling(kw)
    args = dict(seed=check_seed(kw.pop("seed", 0)), backend=kw.pop("backend", None),
                progress=bool(kw.pop("progress", False)), use_oracle=bool(kw.pop("oracle", False)),
                attention=kw.pop("attention", None), cuda_graphs=kw.pop("cuda_graphs", None),
                compile_step=bool(kw.pop("compile_step", False)),
                schedule=kw.pop("schedule", "waves"), max_lanes=kw.pop("max_lanes", None),
                on_patch=kw.pop("on_patch", None))
    ncp.check_schedule(args["schedule"], args["max_lanes"])
    extent = _extent_arg(kw.pop("extent", None))
    if kw:
        raise TypeError(f"unexpected arguments {sorted(kw)}")
    return s, args, extent


# ---- the tasks ---------------------------------------------------------------------------------------
def generate_image(self: NuwaModel, prompt=None, height=256, width=256, order="down", batch=1,
                   region=None, **kw) -> Result:
    """Unconditional (prompt None/"") or text-to-image of any size, patch by patch in `order`."""
    r = _generate(self, prompt, 1, height, width, order, batch, region, kw)
    r.pixels = r.pixels[:, 0]
    return r


def generate_video(self: NuwaModel, prompt=None, frames=8, height=256, width=256, order="down", batch=1,
                   region=None, **kw) -> Result:
    """Text-to-video (or unconditional video): frame after frame, each in `order`."""
    return _generate(self, prompt, frames, height, width, order, batch, region, kw)


def _generate(self, prompt, frames, height, width, order, batch, region, kw) -> Result:
    H, W, T = _size("height", height), _size("width", width), _size("frames", frames)
    s, args, extent = _common(kw)
    f = self.cfg.vq.f
    h, w = -(-H // f), -(-W // f)
    grid = _grid(self, T, h, w)
    prompts = _prompts(prompt, batch)
    _, region = sizing.check_canvas(self, grid, order, region, len(prompts), extent, s, (T, H, W),
                                    pool=not args["use_oracle"])
    spec = TaskSpec(grid=grid, order=adc.order(order, grid, region), prompts=prompts, extent=extent,
                    directions=adc.directions(order, grid))
    tokens, stats = _run(self, spec, sampling=s, view=lambda tok, t: _decode(self, tok, 1, h, w, H, W)[0, 0],
                         **args)
    return Result(pixels=_decode(self, tokens, T, h, w, H, W), tokens=tokens, stats=stats)


def outpaint(self: NuwaModel, image, left=0, right=0, top=0, bottom=0, prompt=None, order=None, batch=1,
             paste=True, **kw) -> Result:
    """Extend `image` by the given number of pixels on each side; its own tokens stay unchanged."""
    img = to_rgb_array(image)
    pads = {k: _size(k, v, minimum=0) for k, v in dict(left=left, right=right, top=top, bottom=bottom).items()}
    if not any(pads.values()):
        raise ValueError("outpaint needs at least one of left, right, top, bottom > 0 (pixels to add)")
    s, args, extent = _common(kw)
    f, p = self.cfg.vq.f, self.cfg.patch
    Hi, Wi = img.shape[:2]
    if Hi < f or Wi < f:
        raise ValueError(f"image is {Wi}x{Hi} pixels; it must be at least {f}x{f} (one VQ token)")
    tt, lt = -(-pads["top"] // f), -(-pads["left"] // f)               # image origin, in tokens
    oy, ox = tt * f - pads["top"], lt * f - pads["left"]                 # crop offset of the result
    H, W = pads["top"] + Hi + pads["bottom"], pads["left"] + Wi + pads["right"]
    h, w = -(-(oy + H) // f), -(-(ox + W) // f)
    grid = _grid(self, 1, h, w)
    if order is None:
        sides = [k for k, v in pads.items() if v]
        order = {"right": "right", "left": "left", "bottom": "down", "top": "up"}[sides[0]] \
            if len(sides) == 1 else "outward"
    region = (tt // p, lt // p, (tt + Hi // f - 1) // p, (lt + Wi // f - 1) // p) if order == "outward" else None
    prompts = _prompts(prompt, batch)
    sizing.check_canvas(self, grid, order, region, len(prompts), extent, s, (1, H, W), known=True,
                        pool=not args["use_oracle"])                    # before the order and the encode
    patch_order = adc.order(order, grid, region)
    known = np.zeros((1, grid[1] * p, grid[2] * p), dtype=np.int64)
    mask = np.zeros_like(known, dtype=bool)
    toks = _encode_pixels(self, img)
    known[0, tt:tt + toks.shape[0], lt:lt + toks.shape[1]] = toks
    mask[0, tt:tt + Hi // f, lt:lt + Wi // f] = True                      # whole tokens only
    spec = TaskSpec(grid=grid, order=patch_order, prompts=prompts, known=known, known_mask=mask, extent=extent,
                    directions=adc.directions(order, grid))

    def view(tok, t):                                                   # on_patch's picture of the canvas
        im = _decode(self, tok, 1, h, w, H, W, oy, ox)[0, 0]
        if paste:
            im[pads["top"]:pads["top"] + Hi, pads["left"]:pads["left"] + Wi] = img
        return im
    tokens, stats = _run(self, spec, sampling=s, view=view, **args)
    px = _decode(self, tokens, 1, h, w, H, W, oy, ox)[:, 0]
    if paste:
        px[:, pads["top"]:pads["top"] + Hi, pads["left"]:pads["left"] + Wi] = img
    return Result(pixels=px, tokens=tokens, stats=stats)


def animate(self: NuwaModel, image, frames=8, prompt=None, order="down", batch=1, paste=True, **kw) -> Result:
    """Image animation: frame 0 is `image` (its tokens stay unchanged), later frames are generated."""
    img = to_rgb_array(image)
    T = _size("frames", frames, minimum=2)
    s, args, extent = _common(kw)
    f, p = self.cfg.vq.f, self.cfg.patch
    H, W = img.shape[:2]
    if H < f or W < f:
        raise ValueError(f"image is {W}x{H} pixels; it must be at least {f}x{f} (one VQ token)")
    h, w = -(-H // f), -(-W // f)
    grid = _grid(self, T, h, w)
    prompts = _prompts(prompt, batch)
    sizing.check_canvas(self, grid, order, None, len(prompts), extent, s, (T, H, W), known=True,
                        pool=not args["use_oracle"])                    # before the order and the encode
    patch_order = adc.order(order, grid)
    known = np.zeros((T, grid[1] * p, grid[2] * p), dtype=np.int64)
    mask = np.zeros_like(known, dtype=bool)
    known[0, :h, :w] = _encode_pixels(self, img)
    mask[0, :H // f, :W // f] = True
    spec = TaskSpec(grid=grid, order=patch_order, prompts=prompts, known=known, known_mask=mask, extent=extent,
                    directions=adc.directions(order, grid))
    tokens, stats = _run(self, spec, sampling=s, view=lambda tok, t: img.copy() if paste and t == 0 else
                         _decode(self, tok, 1, h, w, H, W)[0, 0], **args)
    px = _decode(self, tokens, T, h, w, H, W)
    if paste:
        px[:, 0] = img
    return Result(pixels=px, tokens=tokens, stats=stats)


def _not_callable(self, *args, **kwargs):
    raise TypeError("a NuwaModel is not called directly (its modules are driven patch by patch by the engine): "
                    "use model.generate_image(prompt, height=, width=), model.generate_video, model.outpaint, "
                    "model.animate, or the pipeline: nuwa_fast.Pipeline.from_pretrained('tiny')(prompt, "
                    "height=, width=).images")


NuwaModel.forward = _not_callable
NuwaModel.generate_image = generate_image
NuwaModel.generate_video = generate_video
NuwaModel.outpaint = outpaint
NuwaModel.animate = animate
