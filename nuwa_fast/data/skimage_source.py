"""The photographs and textures that ship inside scikit-image, as a small captioned image source.

Only images whose files ship inside the scikit-image wheel are listed, so nothing is downloaded;
one that still fails to load (an old or trimmed install) is skipped. Also home of the photo augment
(random crop / resize / flip, and a slow camera move for clips) shared with folder.py.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
from PIL import Image

# skimage.data name -> caption, whether a horizontal flip still looks right (text does not)
SKIMAGE_CAPTIONS = {
    "astronaut": ("a photo of an astronaut", True),
    "coffee": ("a photo of a cup of coffee", True),
    "chelsea": ("a photo of a cat", True),
    "rocket": ("a photo of a rocket on a launch pad", True),
    "hubble_deep_field": ("the hubble deep field", True),
    "immunohistochemistry": ("a microscope image of stained tissue", True),
    "retina": ("a photo of a retina", True),
    "colorwheel": ("a colour wheel", False),
    "brick": ("brick texture", True),
    "grass": ("grass texture", True),
    "gravel": ("gravel texture", True),
    "camera": ("a black and white photo of a cameraman", True),
    "moon": ("a black and white photo of the surface of the moon", True),
    "coins": ("a black and white photo of coins", True),
    "clock": ("a black and white photo of a clock", False),
    "cell": ("a microscope image of a cell", True),
    "text": ("a black and white photo of text", False),
    "page": ("a scanned page of text", False),
}


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Any 2-D or HxWxC array (bool, integer or float) -> uint8 [H, W, 3]. Alpha is composited on white."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float64)
        hi = a.max() if a.size else 1.0
        scale = 255.0 if hi <= 1.0 else 255.0 / 65535.0 if hi > 255 else 1.0   # [0,1], 16-bit, 8-bit
        a = np.clip(a * scale + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] in (2, 4):                                       # gray+alpha or RGBA
        alpha = a[..., -1:].astype(np.float32) / 255.0
        a = (a[..., :-1] * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


@functools.lru_cache(maxsize=1)
def skimage_images() -> list[tuple[np.ndarray, str]]:
    """[(uint8 [H, W, 3], caption)] for every bundled skimage.data image that loads offline."""
    return [(img, cap) for img, cap, _ in _load_all()]


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[tuple[np.ndarray, str, bool], ...]:
    try:
        import skimage.data as data
    except ImportError:
        warnings.warn("scikit-image is not installed: the skimage source is empty", stacklevel=3)
        return ()
    out = []
    for name, (caption, flip) in SKIMAGE_CAPTIONS.items():
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append((to_rgb_uint8(fn()), caption, flip))
        except (ImportError, OSError, ValueError):                  # needs a download (pooch, network), or unreadable
            continue                                                # documented: only what loads offline
    return tuple(out)


def crop_resize(rng: np.random.Generator, image: np.ndarray, height: int, width: int,
                flip: bool = True, min_scale: float = 0.45) -> np.ndarray:
    """Random crop with the target's aspect ratio (a min_scale..1 share of the largest one), resized
    to (height, width) with a bicubic filter, then a coin-flip mirror if flip. uint8 [H, W, 3]."""
    box = random_box(rng, image.shape[0], image.shape[1], height, width, min_scale)
    out = resize_box(image, box, height, width)
    return out[:, ::-1].copy() if flip and rng.random() < 0.5 else out


def random_box(rng, ih: int, iw: int, height: int, width: int, min_scale: float = 0.45):
    """(top, left, h, w) float crop box of aspect width/height inside an ih x iw image."""
    aspect = width / height
    h_max = min(ih, iw / aspect)
    h = h_max * rng.uniform(min_scale, 1.0)
    w = h * aspect
    return rng.uniform(0, ih - h), rng.uniform(0, iw - w), h, w


def resize_box(image: np.ndarray, box, height: int, width: int) -> np.ndarray:
    """The float box (top, left, h, w) of a uint8 [h, w, 3] image, resized (antialiased) to (height, width)."""
    top, left, h, w = box
    img = Image.fromarray(image)
    out = img.resize((width, height), Image.BICUBIC, box=(left, top, left + w, top + h))
    return np.asarray(out, dtype=np.uint8)


def sample_skimage(rng: np.random.Generator, height: int, width: int,
                   frames: int = 1) -> tuple[np.ndarray, str]:
    """A random bundled image, randomly cropped/resized/flipped: (uint8 [H, W, 3], caption).

    frames > 1 gives a slow camera move over the still photo instead: (uint8 [T, H, W, 3], caption
    with ", the camera pans right" or ", the camera zooms in").
    """
    items = _load_all()
    if not items:
        raise RuntimeError("skimage source: no scikit-image sample image could be loaded offline "
                           "(is scikit-image installed?)")
    image, caption, flip = items[int(rng.integers(len(items)))]
    if frames <= 1:
        return crop_resize(rng, image, height, width, flip), caption
    return camera_move(rng, image, caption, height, width, frames, flip)


def camera_move(rng, image: np.ndarray, caption: str, height: int, width: int, frames: int,
                flip: bool = True) -> tuple[np.ndarray, str]:
    """A still photo as a clip: the crop box slides right (room permitting) or shrinks (zoom in)."""
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
    ih, iw = image.shape[:2]
    top, left, h, w = random_box(rng, ih, iw, height, width, 0.5)
    travel = min(iw - left - w, w * rng.uniform(0.15, 0.4))
    img = np.ascontiguousarray(image)
    if travel >= 0.1 * w:
        boxes = [(top, left + travel * t, h, w) for t in np.linspace(0, 1, frames)]
        motion = "the camera pans right"
    else:
        z = rng.uniform(0.65, 0.85)
        boxes = [(top + h * (1 - s) / 2, left + w * (1 - s) / 2, h * s, w * s)
                 for s in np.linspace(1, z, frames)]
        motion = "the camera zooms in"
    return np.stack([resize_box(img, b, height, width) for b in boxes]), f"{caption}, {motion}"
