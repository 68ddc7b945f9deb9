"""Pixels in and out of a generation: the Result, image files and arrays, VQ encode/decode of a canvas.

    r = model.generate_image(...);  r.pixels (uint8), r.tokens (int64), r.stats;  r.save("out.png")
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from . import output
from .engine import Stats
from .errors import BadFile


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



# ---- tokens <-> pixels --------------------------------------------------------------------------------
def encode_pixels(model, img: np.ndarray, tile: int = 64):
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


@torch.no_grad()
def decode_tokens(model, tokens, frames, h_tok, w_tok, H, W, oy=0, ox=0, strip: int = 32):
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


