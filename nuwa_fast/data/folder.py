"""A folder of the user's own images and videos as a captioned source.

Layout (one level deep):
  root/photo.jpg, root/photo.txt      an image and its caption (a same-named .txt is optional)
  root/clip.gif, root/clip.mp4        a video (mp4 and friends only if imageio has a backend for them)
  root/walk/0001.png ...              a subfolder of frames is one video (natural sort: 2 before 10);
  root/walk.txt                       its caption
  root/captions.json or .jsonl        optional captions: {"photo.jpg": "..."} or [{"file": ..,
                                      "caption": ..}, ...] / one such object per line
Files are checked when the folder is scanned; unreadable ones are skipped with one warning that names
and counts them (`skipped`). A file that fails later, while sampling, is dropped the same way.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .skimage_source import camera_move, random_box, resize_box, to_rgb_uint8

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTS = (".gif", ".mp4", ".webm", ".mov", ".avi", ".mkv")
_CAPTION_KEYS, _FILE_KEYS = ("caption", "text", "prompt"), ("file", "file_name", "path", "image", "video")


@dataclass
class FolderItem:
    path: Path                                  # the file, or the frames' folder
    kind: str                                   # "image", "video" or "frames"
    caption: str = ""
    frames: list[Path] = field(default_factory=list)   # "frames" only
    length: int = 1                             # frames in the clip


def _natural(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def load_image(path) -> np.ndarray:
    """Any PIL-readable image, any mode (L, P, RGBA, I;16, F, CMYK...) -> uint8 [H, W, 3].
    EXIF rotation is applied; transparency is composited on white; 16-bit is scaled to 8-bit."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16"):
            return to_rgb_uint8(np.asarray(im, dtype=np.float64) / 65535.0)
        if im.mode in ("I", "F", "1", "L", "LA", "RGB", "RGBA"):
            return to_rgb_uint8(np.asarray(im))
        return to_rgb_uint8(np.asarray(im.convert("RGBA" if "transparency" in im.info or
                                                  im.mode in ("P", "PA") else "RGB")))


def _video_length(path: Path) -> int:
    import imageio.v3 as iio
    props = iio.improps(path, index=None)
    return int(props.n_images or props.shape[0])


def _read_video_frames(path: Path, indices) -> list[np.ndarray]:
    import imageio.v3 as iio
    return [to_rgb_uint8(iio.imread(path, index=int(i))) for i in indices]


def _load_caption_map(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("captions.json", "captions.jsonl"):
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        try:
            data = ([json.loads(line) for line in text.splitlines() if line.strip()]
                    if name.endswith("l") else json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"folder source: {path} is not valid JSON{' lines' * name.endswith('l')}: {e}")
        if isinstance(data, dict):
            out.update({str(k): str(v) for k, v in data.items()})
            continue
        for row in data:
            f = next((row[k] for k in _FILE_KEYS if k in row), None)
            c = next((row[k] for k in _CAPTION_KEYS if k in row), None)
            if f is not None and c is not None:
                out[str(f)] = str(c)
    return out


class FolderSource:
    """The images and videos in `root` (see the module docstring for the layout)."""

    name = "folder"

    def __init__(self, root, seed: int = 0):
        self.root = Path(root).expanduser()
        self.seed = seed
        accepted = (f"images {' '.join(IMAGE_EXTS)}; videos {' '.join(VIDEO_EXTS)}; "
                    f"or a subfolder of image frames")
        if not self.root.exists():
            raise FileNotFoundError(f"folder source: {self.root} does not exist (expected a folder with "
                                    f"{accepted})")
        if not self.root.is_dir():
            raise NotADirectoryError(f"folder source: {self.root} is not a folder (expected {accepted})")
        self.skipped: list[tuple[Path, str]] = []
        captions = _load_caption_map(self.root)
        self.items = [it for it in (self._scan(p, captions) for p in sorted(self.root.iterdir(), key=_natural))
                      if it is not None]
        self._warn_skipped(self.skipped)
        if not self.items:
            why = f" ({len(self.skipped)} unreadable files skipped)" if self.skipped else ""
            raise ValueError(f"folder source: no usable images or videos in {self.root}{why}; accepted: "
                             f"{accepted}")

    def __len__(self) -> int:
        return len(self.items)

    def _caption(self, path: Path, captions: dict[str, str]) -> str:
        txt = path.with_name(path.name + ".txt") if path.is_dir() else path.with_suffix(".txt")
        if txt.is_file():
            return txt.read_text(encoding="utf-8").strip()
        rel = path.relative_to(self.root).as_posix()
        return captions.get(rel, captions.get(path.name, captions.get(path.stem, ""))).strip()

    def _scan(self, path: Path, captions: dict[str, str]) -> FolderItem | None:
        if path.name.startswith("."):
            return None
        ext = path.suffix.lower()
        try:
            if path.is_dir():
                frames = sorted((f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTS
                                 and not f.name.startswith(".")), key=_natural)
                if not frames:
                    return None
                with Image.open(frames[0]):
                    pass
                return FolderItem(path, "frames", self._caption(path, captions), frames, len(frames))
            if ext in IMAGE_EXTS:
                with Image.open(path):
                    pass
                return FolderItem(path, "image", self._caption(path, captions))
            if ext in VIDEO_EXTS:
                n = _video_length(path)
                if n < 1:
                    raise ValueError("no frames")
                kind = "video" if n > 1 else "image"
                return FolderItem(path, kind, self._caption(path, captions), length=n)
        except Exception as e:                      # any decoder error: recorded in .skipped, warned, never fatal
            self.skipped.append((path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        return None

    def _warn_skipped(self, skipped) -> None:
        if skipped:
            names = ", ".join(f"{p.name} ({why})" for p, why in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            warnings.warn(f"folder source: skipped {len(skipped)} unreadable file(s) in {self.root}: "
                          f"{names}{more}", stacklevel=3)

    def _frames(self, item: FolderItem, indices) -> list[np.ndarray]:
        if item.kind == "frames":
            return [load_image(item.frames[i]) for i in indices]
        if item.kind == "video" or item.path.suffix.lower() in VIDEO_EXTS:
            return _read_video_frames(item.path, indices)
        return [load_image(item.path)]

    def sample(self, rng: np.random.Generator, height: int, width: int,
               frames: int = 1) -> tuple[np.ndarray, str]:
        """(uint8 [T, H, W, 3], caption): a random crop/resize/flip; a still becomes a slow camera
        move when frames > 1; a clip gives `frames` consecutive frames (the last held if short)."""
        rng = np.random.default_rng([self.seed % 2 ** 63, int(rng.integers(2 ** 63))])   # salted
        while self.items:
            k = int(rng.integers(len(self.items)))
            item = self.items[k]
            start = int(rng.integers(max(1, item.length - frames + 1)))
            idx = [min(start + t, item.length - 1) for t in range(frames)]
            try:
                clip = self._frames(item, idx if item.length > 1 else [0])
            except Exception as e:                  # unreadable now: reported (warning), the file dropped
                self.skipped.append((item.path, f"{type(e).__name__}: {e}"))
                self._warn_skipped(self.skipped[-1:])
                del self.items[k]
                continue
            if item.length == 1 and frames > 1:
                video, caption = camera_move(rng, clip[0], item.caption, height, width, frames)
                return video, caption
            ih, iw = clip[0].shape[:2]
            clip = [f if f.shape[:2] == (ih, iw) else np.asarray(Image.fromarray(f).resize((iw, ih)))
                    for f in clip]                          # frames of mixed sizes follow the first
            flip = rng.random() < 0.5
            box = random_box(rng, ih, iw, height, width)
            out = np.stack([resize_box(np.ascontiguousarray(f[:, ::-1] if flip else f), box, height, width)
                            for f in clip])
            return out, item.caption
        raise RuntimeError(f"folder source: every file in {self.root} turned out unreadable")
