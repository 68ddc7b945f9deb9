"""VQ tokenizer: conv encoder/decoder with a cosine-similarity codebook (VQGAN family).

Every layer is local: convolutions, a per-pixel RMS norm over channels and nearest upsampling; there
is no GroupNorm, BatchNorm or attention. An output pixel therefore depends only on the tokens within
`VQModel.halo` of its own token, so any token grid decodes in tiles of bounded memory that match the
full decode exactly (no seams).

Layout for channel_mult (m0, .., mn) and width c (widths w_i = c * m_i, resolution i = pixels / 2**i):
  encoder  conv3x3 3->w0; per level i: res_blocks ResBlock (the first w_{i-1}->w_i), then a stride-2
           conv3x3 w_i->w_i if i < n; mid ResBlock(w_n); norm, SiLU; quant_in conv1x1 w_n->code_dim
  decoder  quant_out conv1x1 code_dim->w_n; mid ResBlock(w_n); per level i from n down to 0:
           [Up(w_{i+1}->w_i): conv1x1 + nearest x2, if i < n] + res_blocks ResBlock(w_i);
           norm, SiLU, conv3x3 w0->3
Tiny preset: 1.6 M parameters, ~0.42 GMAC per 64 px image forward, halo 3 tokens.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VQConfig

COMMIT_BETA = 0.25      # weight of the encoder-side commitment term
LOOKUP_CHUNK = 4096     # tokens per codebook lookup: bounds the [tokens, codebook] similarity matrix


class ChannelNorm(nn.Module):
    """RMS norm over the channels of each pixel: no spatial reduction, so tiled decode stays exact."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x):                                                    # x [B, C, H, W]
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps) * self.weight[:, None, None]


class ResBlock(nn.Module):
    """Bottleneck residual block: skip(x) + conv1x1(SiLU(conv3x3(SiLU(conv1x1(norm(x)))))).

    The 3x3 conv runs at half the output width (a quarter of the FLOPs of a full-width one), which is
    what keeps the full-resolution levels cheap enough to train on a CPU.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = max(c_out // 2, 1)
        self.norm, self.reduce = ChannelNorm(c_in), nn.Conv2d(c_in, mid, 1)
        self.conv = nn.Conv2d(mid, mid, 3, padding=1)
        self.expand = nn.Conv2d(mid, c_out, 1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):                                                    # x [B, c_in, H, W]
        h = F.silu(self.reduce(self.norm(x)))                                # [B, c_out/2, H, W]
        h = F.silu(self.conv(h))                                             # [B, c_out/2, H, W]
        return self.skip(x) + self.expand(h)                                 # [B, c_out, H, W]


class Up(nn.Sequential):
    """Channel change at the coarse resolution (cheap), then nearest x2; the next ResBlock convolves."""

    def __init__(self, c_in: int, c_out: int):
        layers = [nn.Conv2d(c_in, c_out, 1)] if c_in != c_out else []
        super().__init__(*layers, nn.Upsample(scale_factor=2, mode="nearest"))


class VQModel(nn.Module):
    """Images in [-1, 1], [B, 3, H, W] (H, W multiples of f) <-> tokens [B, H/f, W/f] long."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        w = [cfg.channels * m for m in cfg.channel_mult]
        enc = [nn.Conv2d(3, w[0], 3, padding=1)]
        for i in range(len(w)):
            enc += [ResBlock(w[max(i - 1, 0)] if j == 0 else w[i], w[i]) for j in range(cfg.res_blocks)]
            if i < len(w) - 1:
                enc.append(nn.Conv2d(w[i], w[i], 3, stride=2, padding=1))
        enc += [ResBlock(w[-1], w[-1]), ChannelNorm(w[-1]), nn.SiLU()]
        self.encoder = nn.Sequential(*enc)
        self.quant_in = nn.Conv2d(w[-1], cfg.code_dim, 1)
        # Unit-norm rows: lookups use cosine similarity, and restarted codes are unit vectors too.
        self.codebook = nn.Parameter(F.normalize(torch.randn(cfg.codebook_size, cfg.code_dim), dim=1))
        self.quant_out = nn.Conv2d(cfg.code_dim, w[-1], 1)
        dec = [ResBlock(w[-1], w[-1])]
        for i in reversed(range(len(w))):
            if i < len(w) - 1:
                dec.append(Up(w[i + 1], w[i]))
            dec += [ResBlock(w[i], w[i]) for _ in range(cfg.res_blocks)]
        dec += [ChannelNorm(w[0]), nn.SiLU(), nn.Conv2d(w[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def f(self) -> int:
        return self.cfg.f

    @property
    def halo(self) -> int:
        """Receptive-field radius of the decoder in tokens, walked from the pixels back to the tokens.

        A stride-1 conv of kernel k and dilation d adds d*(k-1)//2 at its resolution; a nearest x2
        upsample maps a radius of r fine pixels to ceil(r/2) coarse ones. Branches of a ResBlock are
        summed, not maxed, which can only overestimate.
        """
        r = 0
        for m in reversed([*self.quant_out.modules(), *self.decoder.modules()]):
            if isinstance(m, nn.Conv2d):
                r += max(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
            elif isinstance(m, nn.Upsample):
                r = -(-r // 2)
        return r

    @property
    def encode_halo(self) -> int:
        """Receptive-field radius of the encoder in tokens: a conv of kernel k after strides s adds
        (k // 2) * s input pixels; rounded up to whole tokens."""
        r, stride = 0, 1
        for m in [*self.encoder.modules(), *self.quant_in.modules()]:
            if isinstance(m, nn.Conv2d):
                r += max(d * (k // 2) for d, k in zip(m.dilation, m.kernel_size)) * stride
                stride *= m.stride[0]
        return -(-r // self.f)

    # ---- codebook --------------------------------------------------------------------------------
    def _encode_z(self, img):                                                # img [B, 3, H, W]
        H, W = img.shape[-2:]
        if img.dim() != 4 or img.shape[1] != 3 or H % self.f or W % self.f or not H * W:
            raise ValueError(f"VQModel: expected images [B, 3, H, W] with H, W positive multiples of "
                             f"f={self.f}, got {tuple(img.shape)}")
        return F.normalize(self.quant_in(self.encoder(img)), dim=1)          # [B, D, h, w] unit vectors

    def _lookup(self, z):                                                    # z [N, D] unit vectors
        e = F.normalize(self.codebook, dim=1)                                # [K, D]
        return torch.cat([(zc @ e.t()).argmax(1) for zc in z.split(LOOKUP_CHUNK)])  # [N] long

    def embed(self, tokens):                                                 # tokens [B, h, w] long
        e = F.normalize(self.codebook, dim=1)[tokens]                        # [B, h, w, D]
        return e.permute(0, 3, 1, 2)                                         # [B, D, h, w]

    @torch.no_grad()
    def restart_dead_codes(self, z_flat, usage_counts, generator=None) -> int:
        """Re-seed every code with usage_counts == 0 from random encoder outputs z_flat [N, D].

        usage_counts [K] is accumulated by the trainer from loss_dict["usage"], z_flat from
        loss_dict["z"]. A small jitter splits codes seeded from the same vector. Returns how many
        codes were restarted.
        """
        dead = (usage_counts == 0).nonzero().squeeze(1)                      # [n_dead]
        if dead.numel() == 0 or z_flat.shape[0] == 0:
            return 0
        dev = z_flat.device
        pick = torch.randint(z_flat.shape[0], (dead.numel(),), generator=generator, device=dev)
        noise = torch.randn(dead.numel(), z_flat.shape[1], generator=generator, device=dev)
        seeds = F.normalize(z_flat[pick].float() + 0.01 * noise, dim=1)      # [n_dead, D]
        self.codebook[dead.to(self.codebook.device)] = seeds.to(self.codebook)
        return dead.numel()

    # ---- public API ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, img):                                                   # img [B, 3, H, W] in [-1, 1]
        z = self._encode_z(img)                                              # [B, D, h, w]
        B, D, h, w = z.shape
        return self._lookup(z.permute(0, 2, 3, 1).reshape(-1, D)).view(B, h, w)  # [B, h, w] long

    @torch.no_grad()
    def decode(self, tokens):                                                # tokens [B, h, w] long
        return self.decoder(self.quant_out(self.embed(tokens))).clamp(-1, 1)  # [B, 3, h*f, w*f]

    @torch.no_grad()
    def decode_tiled(self, tokens, tile: int = 32, halo: int | None = None):
        """decode() in tiles of tile x tile tokens, each decoded with `halo` tokens of context per side.

        With halo >= self.halo the result equals decode(); peak activation memory is that of one
        (tile + 2*halo)^2 token decode, whatever the canvas. Only the output is canvas-sized.
        """
        halo = self.halo if halo is None else halo
        if tile < 1 or halo < 0:
            raise ValueError(f"decode_tiled: need tile >= 1 and halo >= 0, got tile={tile}, halo={halo}")
        B, h, w = tokens.shape
        f = self.f
        out = torch.empty(B, 3, h * f, w * f, device=tokens.device, dtype=self.codebook.dtype)
        for y0 in range(0, h, tile):
            y1, ya = min(y0 + tile, h), max(y0 - halo, 0)
            yb = min(y1 + halo, h)
            for x0 in range(0, w, tile):
                x1, xa = min(x0 + tile, w), max(x0 - halo, 0)
                xb = min(x1 + halo, w)
                img = self.decode(tokens[:, ya:yb, xa:xb])                   # [B, 3, (yb-ya)*f, (xb-xa)*f]
                out[:, :, y0 * f:y1 * f, x0 * f:x1 * f] = img[:, :, (y0 - ya) * f:(y1 - ya) * f,
                                                              (x0 - xa) * f:(x1 - xa) * f]
        return out                                                           # [B, 3, h*f, w*f]

    @torch.no_grad()
    def decode_video(self, tokens, tile: int = 32, halo: int | None = None):
        """Video token grid [B, T, h, w] -> frames [B, T, 3, h*f, w*f], one tiled decode per frame."""
        B, T, h, w = tokens.shape
        out = torch.empty(B, T, 3, h * self.f, w * self.f, device=tokens.device, dtype=self.codebook.dtype)
        for t in range(T):
            out[:, t] = self.decode_tiled(tokens[:, t], tile, halo)
        return out

    def forward(self, img):
        """Training pass. Returns (recon [B, 3, H, W], unclamped, loss_dict).

        loss_dict: "rec" (L1), "commit" (codebook + COMMIT_BETA * commitment, squared distance of unit
        vectors), "total" = rec + commit, "usage" [K] long (hits per code in this batch) and "z" [N, D]
        (detached encoder outputs, the seeds for restart_dead_codes).
        """
        z = self._encode_z(img)                                              # [B, D, h, w]
        B, D, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(-1, D)                            # [N, D]
        with torch.no_grad():
            idx = self._lookup(zf)                                           # [N] long
        zq = F.normalize(self.codebook, dim=1)[idx]                          # [N, D]
        commit = ((zq - zf.detach()).pow(2).sum(1).mean()
                  + COMMIT_BETA * (zf - zq.detach()).pow(2).sum(1).mean())
        zst = zf + (zq - zf).detach()                                        # straight-through [N, D]
        recon = self.decoder(self.quant_out(zst.view(B, h, w, D).permute(0, 3, 1, 2)))  # [B, 3, H, W]
        rec = F.l1_loss(recon, img)
        usage = torch.bincount(idx, minlength=self.cfg.codebook_size)        # [K]
        return recon, {"rec": rec, "commit": commit, "total": rec + commit, "usage": usage,
                       "z": zf.detach()}
