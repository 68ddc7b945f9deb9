"""Procedural, captioned landscapes and landscape videos (numpy only).

Geometry is in height units: world x = pixel x / H, so every feature scales with the height and a
wider canvas shows more of the same world (a panorama is a longer landscape, never a stretched one).
All noise is hashed from integer lattice points, so the render of width W is the left part of the
render of width 2W; a camera pan renders the wide world once and slides a window over it.
"""
from __future__ import annotations

import numpy as np

SKIES = ("day", "sunset", "night")
GROUNDS = ("grass", "desert", "forest")
WATERS = ("none", "lake", "sea")
MOTIONS = ("pan", "clouds", "sunset")
_MOTION_TEXT = {"pan": "the camera pans right", "clouds": "clouds drift by", "sunset": "the sun sets"}
CAPTION_BYTES = 62      # TextConfig.max_len (64) minus BOS/EOS: the text encoder truncates longer ones

# Colours in [0, 1]. Day and sunset are lerped by `warm` (0 = day, 1 = sunset); night stands alone.
_PAL = {
    "day": dict(top=(0.15, 0.36, 0.74), mid=(0.36, 0.58, 0.88), hor=(0.72, 0.84, 0.95),
                light=(1.0, 1.0, 1.0), sun=(1.0, 0.98, 0.88), glow=(1.0, 0.96, 0.82),
                cloud=(1.0, 1.0, 1.0), shadow=(0.66, 0.71, 0.8), water=(0.1, 0.25, 0.4)),
    "sunset": dict(top=(0.15, 0.12, 0.38), mid=(0.74, 0.32, 0.46), hor=(1.0, 0.64, 0.3),
                   light=(0.88, 0.6, 0.52), sun=(1.0, 0.86, 0.55), glow=(1.0, 0.5, 0.18),
                   cloud=(1.0, 0.7, 0.55), shadow=(0.46, 0.27, 0.42), water=(0.2, 0.12, 0.24)),
    "night": dict(top=(0.01, 0.02, 0.06), mid=(0.03, 0.05, 0.14), hor=(0.11, 0.16, 0.32),
                  light=(0.27, 0.31, 0.46), sun=(0.94, 0.94, 0.86), glow=(0.45, 0.5, 0.68),
                  cloud=(0.26, 0.28, 0.38), shadow=(0.08, 0.09, 0.15), water=(0.02, 0.04, 0.1)),
}
_GROUND = {"grass": (0.3, 0.52, 0.17), "desert": (0.86, 0.67, 0.4), "forest": (0.09, 0.27, 0.12)}
_ROCK = {"grass": (0.4, 0.42, 0.48), "desert": (0.62, 0.41, 0.3), "forest": (0.36, 0.39, 0.44)}
_HILL = {"grass": (0.3, 0.46, 0.24), "desert": (0.74, 0.54, 0.34), "forest": (0.14, 0.32, 0.18)}
# Ridge (lowest, highest elevation above the horizon in heights, features per height), nearest first.
_RIDGE = {True: ((0.02, 0.18, 2.0), (0.05, 0.32, 1.3), (0.1, 0.45, 0.9)),
          False: ((0.02, 0.1, 1.2), (0.03, 0.14, 0.9), (0.04, 0.18, 0.7))}
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_ROW = np.zeros(1, np.float32)                  # y of 1-D noise: _fbm(x, _ROW, ...)[0]


def _hash(key: tuple, *idx) -> np.ndarray:
    """Uniform float32 in [0, 1) per integer lattice point (idx broadcast), splitmix-mixed per key."""
    h = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for k in (*key, *idx):
            h = h ^ np.asarray(k, dtype=np.int64).view(np.uint64)
            h = (h ^ (h >> np.uint64(30))) * _M1
            h = (h ^ (h >> np.uint64(27))) * _M2
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)


def _smooth(f):
    return f * f * (3 - 2 * f)


def _fbm(x, y, key, octaves=4, ridged=False):
    """Fractal value noise in [0, 1], shape (len(y), len(x)); the lattice is hashed once per octave."""
    out, amp = np.zeros((len(y), len(x)), np.float32), 1.0
    for o in range(octaves if len(x) and len(y) else 0):
        xo, yo = x * 2.0 ** o, y * 2.0 ** o
        ix, iy = np.floor(xo).astype(np.int64), np.floor(yo).astype(np.int64)
        fx, fy = _smooth(xo - ix)[None, :], _smooth(yo - iy)[:, None]
        gx, gy = np.arange(ix.min(), ix.max() + 2), np.arange(iy.min(), iy.max() + 2)
        g = _hash((*key, o), gy[:, None], gx[None, :])                  # (ny, nx) lattice values
        ax, ay = ix - gx[0], iy - gy[0]
        gr = g[:, ax] + (g[:, ax + 1] - g[:, ax]) * fx                  # (ny, W) lerped along x
        n = gr[ay] + (gr[ay + 1] - gr[ay]) * fy                         # (h, W) then along y
        out += amp * (1 - np.abs(2 * n - 1) if ridged else n)
        amp *= 0.5
    return out / np.float32(2.0 - 2.0 ** (1 - octaves))                # sum of the amplitudes


def _dx(a):
    """d/dx per pixel along the last axis (0 for a 1-pixel-wide canvas)."""
    return np.gradient(a, axis=-1) if a.shape[-1] > 1 else np.zeros_like(a)


def _over(img, alpha, col):
    """In place: img (h, W, 3) <- col over img with coverage alpha (h, W)."""
    img += alpha[..., None] * (col - img)


def _choose(seed: int, height: int, width: int, given: dict) -> dict:
    rng = np.random.default_rng(seed)
    a: dict = {}

    def pick(name, value):
        a[name] = given.get(name, value)

    pick("world", int(seed) & 0x7FFFFFFF)                                # keys all the noise
    pick("sky", str(rng.choice(SKIES, p=[0.45, 0.3, 0.25])))
    pick("ground", str(rng.choice(GROUNDS)))
    pick("water", str(rng.choice(WATERS, p=[0.45, 0.35, 0.2])))
    pick("mountains", str(rng.choice(["high", "hills"], p=[0.75, 0.25])))
    pick("ridges", int(rng.integers(1, 4)))
    pick("snow", bool(rng.random() < 0.55) and a["mountains"] == "high")
    pick("clouds", bool(rng.random() < 0.6))
    pick("cover", float(rng.uniform(0.25, 0.75)))
    pick("horizon", float(rng.uniform(0.56, 0.68)))
    pick("depth", float(rng.uniform(0.1, 0.18) if a["water"] == "lake" else rng.uniform(0.17, 0.26)))
    pick("sun_x", float(rng.uniform(0.12, 0.88) * width / height))
    pick("light", 1 if a["sun_x"] > 0.5 * width / height else -1)       # which side of a peak is lit
    low = a["sky"] == "sunset"                                           # a setting sun sits low
    pick("sun_y", float(a["horizon"] - rng.uniform(0.05, 0.22) if low else rng.uniform(0.1, 0.3)))
    pick("sun_r", float(rng.uniform(0.03, 0.045) if a["sky"] != "sunset" else rng.uniform(0.05, 0.08)))
    pick("moon_phase", float(rng.choice([0.0, rng.uniform(0.35, 0.7)])))
    pick("template", int(rng.integers(0, 2)))
    pick("tint", [float(v) for v in rng.uniform(0.92, 1.08, 3)])
    pick("ground_tint", [float(v) for v in rng.uniform(0.88, 1.12, 3)])
    return a


def _palette(a: dict, warm: float) -> dict:
    if a["sky"] == "night":
        pal = {k: np.asarray(v, np.float32) for k, v in _PAL["night"].items()}
    else:
        pal = {k: np.asarray(v, np.float32) * (1 - warm) + np.asarray(_PAL["sunset"][k], np.float32) * warm
               for k, v in _PAL["day"].items()}
    for k in ("top", "mid", "hor"):
        pal[k] = np.clip(pal[k] * np.asarray(a["tint"], np.float32), 0, 1)
    return pal


def _render(a: dict, H: int, W: int, x0: int = 0, cloud_dx: float = 0.0,
            sun_y: float | None = None, warm: float | None = None) -> np.ndarray:
    """Float32 image (H, W, 3) in [0, 1] of world `a`, columns x0 .. x0+W-1."""
    warm = (1.0 if a["sky"] == "sunset" else 0.0) if warm is None else warm
    sun_y = a["sun_y"] if sun_y is None else sun_y
    p, key, hz, sx, r = _palette(a, warm), a["world"], a["horizon"], a["sun_x"], a["sun_r"]
    rows = np.arange(H, dtype=np.float32)
    ys = (rows + 0.5) / H                                                # (H,) fraction of height
    xs = (np.arange(W, dtype=np.float32) + 0.5 + x0) / H                 # (W,) world x, height units
    hp = int(max(1, min(H - 1, round(hz * H))))                          # horizon row
    v = np.clip(ys / hz, 0, 1)[:, None, None]
    sky = np.where(v < 0.55, p["top"] + (p["mid"] - p["top"]) * v / 0.55,
                   p["mid"] + (p["hor"] - p["mid"]) * np.clip((v - 0.55) / 0.45, 0, 1) ** 0.8)
    img = np.broadcast_to(sky, (H, W, 3)).astype(np.float32)
    d = np.sqrt((xs[None, :] - sx) ** 2 + (ys[:, None] - sun_y) ** 2)    # (H, W) distance to the sun
    reach, strength = ((r * 3.0, 0.25) if a["sky"] == "night" else (r * (5 + 9 * warm), 0.35 + 0.4 * warm))
    img += strength * np.exp(-(d / reach) ** 2)[..., None] * (p["glow"] - img * 0.5)
    if a["sky"] == "night":
        u = _hash((key, 7), np.arange(H)[:, None], np.arange(W)[None, :] + x0)
        img += (np.clip((u - 0.994) / 0.006, 0, 1) * (1 - v[..., 0] ** 2))[..., None]
    disk = np.clip((r - d) * H + 0.5, 0, 1)
    if a["sky"] == "night" and a["moon_phase"] > 0:
        ph = a["moon_phase"] * r
        d2 = np.sqrt((xs[None, :] - sx - ph) ** 2 + (ys[:, None] - sun_y + 0.3 * ph) ** 2)
        disk *= 1 - np.clip((r - d2) * H + 0.5, 0, 1)
    _over(img, disk, p["sun"])
    sgn = float(a["light"])                                              # +1: lit from the right
    if a["clouds"]:
        n = _fbm((xs + cloud_dx) * 1.6, ys[:hp] * 6.0, (key, 3), 5)     # (hp, W), stretched sideways
        k = max(1, H // 80)
        lit = np.clip(0.55 + 9 * (n - np.concatenate([n[:1].repeat(k, 0), n[:-k]])), 0, 1)
        band = np.clip(ys[:hp] / 0.08, 0, 1) * np.clip((hz - 0.03 - ys[:hp]) / 0.2, 0, 1)
        alpha = np.clip((n - 0.58 + 0.16 * a["cover"]) / 0.09, 0, 1) * band[:, None]
        col = p["shadow"] + (p["cloud"] - p["shadow"]) * lit[..., None]
        _over(img[:hp], alpha * (0.75 if a["sky"] == "night" else 0.95), col)
    _mountains(img, a, p, xs, ys, rows, hp, sgn)
    if a["water"] != "none":
        _water(img, a, p, xs, ys, hp)
    _ground(img, a, p, xs, ys, rows, hp, sgn)
    return np.clip(img, 0, 1)


def _mountains(img, a, p, xs, ys, rows, hp, sgn):
    H, key, hz, n = img.shape[0], a["world"], a["horizon"], a["ridges"]
    high, scale = a["mountains"] == "high", min(1.0, (hz - 0.07) / 0.45)
    relief = _fbm(xs * 9, ys[:hp] * 4, (key, 4), 4, ridged=True)          # (hp, W) gullies and spurs
    face = np.clip(0.5 + 0.12 * sgn * _dx(relief) * H, 0, 1)
    for k in range(n):
        j = n - 1 - k + (1 if n < 3 else 0)                              # 2 = farthest, 0 = nearest
        lo, hi, freq = _RIDGE[high][j]
        f = _fbm(xs * freq + 7.3 * j, _ROW, (key, 10 + j), 6 if high else 3, ridged=high)[0]
        e = lo + (hi - lo) * np.clip((f - (0.35 if high else 0.25)) / 0.55, 0, 1) ** 1.3
        if a["water"] == "sea":
            e = e * _smooth(np.clip((_fbm(xs * 0.4, _ROW, (key, 20 + j), 2)[0] - 0.3) / 0.2, 0, 1))
        top = (hz - e * scale) * H                                       # (W,) ridge line, pixel rows
        r0 = int(max(0, np.floor(top.min())))
        if r0 >= hp:
            continue
        sl = slice(r0, hp)
        mask = np.clip(rows[sl, None] + 1 - top[None, :], 0, 1)          # (h, W) antialiased coverage
        crest = np.clip(0.5 + 0.8 * sgn * _dx(e) * H * scale, 0, 1)  # sunlit side of each peak
        below = np.clip((rows[sl, None] - top[None, :]) / (0.05 * H), 0, 1)
        lit = 0.62 + 0.6 * (crest + (face[sl] - crest) * below * (0.8 if high else 0.3))
        base = np.asarray((_ROCK if high else _HILL)[a["ground"]], np.float32)
        col = base * (lit * (0.9 + 0.2 * relief[sl]))[..., None]
        if a["snow"] and high:
            line = (lo + (hi - lo) * 0.32) * scale + 0.1 * (relief[sl] - 0.6)
            snow = np.clip(((hz - ys[sl, None]) - line) * H * 0.5, 0, 1)
            _over(col, snow, np.float32([0.93, 0.96, 1.0]) * np.clip(lit - 0.12, 0.45, 1.05)[..., None])
        col *= p["light"]
        haze = (0.1, 0.34, 0.56)[j] + 0.3 * np.clip(1 - (hz - ys[sl, None]) / 0.06, 0, 1)
        col += np.clip(haze, 0, 0.85)[..., None] * (p["hor"] - col)
        _over(img[sl], mask, col)


def _water(img, a, p, xs, ys, hp):
    """Below the horizon: the scene above, flipped, rippled and darkened into the water colour."""
    H, W = img.shape[:2]
    dist = np.arange(H - hp)                                            # rows below the horizon
    rip = _fbm(xs * 5, ys[hp:] * 90, (a["world"], 30), 3)               # (Hw, W) horizontal streaks
    amp = 0.004 * H + 0.12 * dist[:, None]
    src_x = np.clip(np.arange(W)[None, :] + np.round(amp * (rip - 0.5) * 2), 0, W - 1).astype(np.int64)
    src_y = np.clip(hp - 1 - dist, 0, hp - 1)[:, None]
    refl = img[src_y, src_x]                                            # (Hw, W, 3)
    k = (0.8 - 0.4 * np.clip(dist / (0.35 * H), 0, 1))[:, None, None]   # far water mirrors more
    water = (refl * 0.85 * k + p["water"] * (1 - k)) * (0.9 + 0.2 * rip[..., None])
    img[hp:] = water


def _ground(img, a, p, xs, ys, rows, hp, sgn):
    H, key, g, wet = img.shape[0], a["world"], a["ground"], a["water"] != "none"
    base = min(a["horizon"] + (a["depth"] if wet else 0.0), 0.93)
    r_top = int(max(0, (base - 0.2) * H))
    tex = _fbm(xs * 28, ys[r_top:] * 80, (key, 5), 3)                   # (h, W) squashed by perspective
    colour = np.asarray(_GROUND[g], np.float32) * np.asarray(a["ground_tint"], np.float32)
    if g == "desert":                                                    # dune bands, denser far away
        near = np.maximum(ys[r_top:, None] - a["horizon"], 0.0) + 0.03   # (h, 1) distance below horizon
        fr = (0.3 / near + 0.8 * _fbm(xs * 1.5, ys[r_top:] * 4, (key, 6), 3)) % 1.0
        band = np.where(fr < 0.7, 0.88 + 0.17 * fr / 0.7, 0.7 + 0.18 * ((fr - 0.7) / 0.3) ** 2)
        dunes = 1 + (band - 0.93) * np.clip(near / 0.12, 0, 1)           # fade out before they alias
    for j in range(3):                                                   # far to near
        y0 = base + (1 - base) * (0.0, 0.3, 0.6)[j]
        amp = {"grass": 0.1, "desert": 0.08, "forest": 0.015}[g] * (0.3 if wet and j == 0 else 0.5 + 0.25 * j)
        e = amp * _fbm(xs * (1.8 - 0.4 * j) + 3.1 * j, _ROW, (key, 40 + j), 4)[0]
        top = (y0 - e + (amp * 0.6 if wet and j == 0 else -0.004)) * H
        crest = np.clip(0.5 + 2.0 * sgn * _dx(-top), 0, 1)
        if g == "forest":
            trees, side, tone = _trees(xs, (0.03, 0.05, 0.08)[j], (key, 50 + j))
            top = top - trees * (0.06, 0.1, 0.16)[j] * H
            crest = 0.25 + 0.45 * (side * sgn > 0) + 0.3 * tone
        r0 = int(max(r_top, np.floor(top.min())))
        sl = slice(r0, H)
        mask = np.clip(rows[sl, None] + 1 - top[None, :], 0, 1)
        below = np.clip((rows[sl, None] - top[None, :]) / ((0.2 if g == "desert" else 0.1) * H), 0, 1)
        lit = (0.7 + 0.5 * (crest + (0.5 - crest) * below)) * (1 - 0.1 * below) + 0.06 * (j % 2)
        shade = lit * (0.8 + 0.4 * tex[r0 - r_top:]) if g != "desert" else lit * dunes[r0 - r_top:]
        col = colour * shade[..., None] * p["light"]
        col += (0.32, 0.16, 0.04)[j] * (p["hor"] - col)
        _over(img[sl], mask, col)


def _trees(xs, spacing, key):
    """Pine silhouettes along a line: height in [0, 1] per column, lit side sign, per-tree tone."""
    cell = np.floor(xs / spacing).astype(np.int64)
    best = np.zeros_like(xs)
    side, tone = np.ones_like(xs), np.zeros_like(xs)
    for c in range(-2, 3):
        i = cell + c
        cx = (i + 0.2 + 0.6 * _hash(key, i)) * spacing
        h = 0.45 + 0.55 * _hash((*key, 1), i)
        dx = np.abs(xs - cx) / (spacing * 0.55 * h)                       # 0 at the trunk, 1 at the base
        prof = h * (1 - dx - 0.12 * ((dx * 4) % 1.0))                      # stepped pine tiers
        win = prof > best
        best = np.where(win, prof, best)
        side = np.where(win, np.sign(xs - cx), side)
        tone = np.where(win, _hash((*key, 2), i), tone)
    return np.clip(best, 0, 1), side, tone


def _caption(a: dict, motion: str | None = None) -> str:
    """Longest phrasing that fits CAPTION_BYTES: details go first, the sky and ground words never."""
    mtn = "hills" if a["mountains"] == "hills" else ("snowy mountains" if a["snow"] else "mountains")
    water = {"none": "", "lake": " and a lake", "sea": " by the sea"}[a["water"]]
    extra = " with clouds" if a["clouds"] and a["sky"] != "night" and motion != "clouds" else ""
    if a["sky"] == "night":
        extra = " under a full moon" if a["moon_phase"] == 0 else " under the stars"
    suffix = f", {_MOTION_TEXT[motion]}" if motion else ""
    levels = ((0, water, extra), (0, water, ""), (1, water, ""), (1, "", ""), (2, "", ""), (3, "", ""))
    for short, wat, ext in levels:
        day = "by day" if short > 1 else "on a sunny day"
        sky = {"day": day, "sunset": "at sunset", "night": "at night"}[a["sky"]]
        ground = {"grass": ("green grassland", "grassland"), "desert": ("a desert", "a desert"),
                  "forest": ("a pine forest", "a forest")}[a["ground"]][min(short, 1)]
        mtn = mtn.replace("snowy ", "") if short > 2 else mtn
        text = f"{ground} with {mtn}{wat} {sky}" if a["template"] == 0 else f"{mtn} above {ground}{wat} {sky}"
        if len(text + ext + suffix) <= CAPTION_BYTES:
            break
    return text + ext + suffix


def render_landscape(seed: int, height: int, width: int, attrs: dict | None = None):
    """A landscape of exactly (height, width): (uint8 [H, W, 3], caption, attrs).

    attrs: any subset of the attributes to force (sky, ground, water, mountains, ridges, snow, clouds,
    horizon, sun_x, ...); the rest come from the seed. The returned attrs reproduce the picture.
    """
    if height < 1 or width < 1:
        raise ValueError(f"render_landscape: height and width must be >= 1, got {height}x{width}")
    a = _choose(seed, height, width, dict(attrs or {}))
    return (_render(a, height, width) * 255 + 0.5).astype(np.uint8), _caption(a), a


def render_landscape_video(seed: int, frames: int, height: int, width: int, attrs: dict | None = None):
    """The same world moving over `frames` frames: (uint8 [T, H, W, 3], caption, attrs).

    motion (from the seed or attrs["motion"]): "pan" (the camera pans right), "clouds" (clouds drift),
    "sunset" (the sun sinks and the sky warms over the clip).
    """
    if min(frames, height, width) < 1:
        raise ValueError(f"render_landscape_video: frames, height, width must be >= 1, "
                         f"got {frames}, {height}, {width}")
    given = dict(attrs or {})
    rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, 1])
    motion = given.get("motion", str(rng.choice(MOTIONS)))
    if motion not in MOTIONS:
        raise ValueError(f"render_landscape_video: motion must be one of {MOTIONS}, got {motion!r}")
    speed = float(given.get("speed", rng.uniform(0.02, 0.045)))          # height units per frame
    given.update({"clouds": True} if motion == "clouds" else {"sky": "sunset"} if motion == "sunset" else {})
    a = _choose(seed, height, width, given)
    a.update(motion=motion, speed=speed)
    if motion == "pan":
        step = max(1, round(speed * height))
        world = _render(a, height, width + step * (frames - 1))
        video = np.stack([world[:, i * step:i * step + width] for i in range(frames)])
    elif motion == "clouds":
        video = np.stack([_render(a, height, width, cloud_dx=-i * speed) for i in range(frames)])
    else:
        y0, y1 = a["horizon"] - 0.32, a["horizon"] + a["sun_r"]
        video = np.stack([_render(a, height, width, sun_y=y0 + (y1 - y0) * ti, warm=0.25 + 0.75 * ti)
                          for ti in np.linspace(0.0, 1.0, frames)])
    return (video * 255 + 0.5).astype(np.uint8), _caption(a, motion), a
