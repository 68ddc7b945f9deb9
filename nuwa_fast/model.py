"""The NUWA-Infinity vision decoder (the reference semantics of docs/design-notes.md) and the full model.

A patch is P+1 rows: row 0 is a learned start embedding, row s >= 1 embeds token s-1 plus an axial
within-patch position. Row s predicts token s. Each layer: self-attention over null + context pages
+ own page (causal) with the ADC bias, cross-attention to the text, MLP (all pre-norm).

The self-attention of every layer is nuwa_fast.layers.NCPAttention, the public drop-in module. What
differs between training, the oracle and the engine is only where it reads its keys and values: the
`kv` source of each call (layers.DenseKV-style dense context for training and the oracle, the page
pool or the engine's gathered buffers when generating).

Where a patch lies (`Where`: its patch coordinates, its height on the canvas, the order's direction)
reaches the decoder as a `Placement`, computed once per patch:
  rope    (cfg.rope) 2D rotary embedding of token coordinates on q and k: the query of row s sits at
          token s, the key of row s at token s-1 (the token it embeds), in canvas token coordinates
          (y*p + r, x*p + c). Keys are rotated before they are written to their page, so the paged
          kernels are unchanged and every score depends on the token offset only (HORIZON rotates
          queries and memory keys the same way). Half the pairs rotate with the row, half with the
          column. The ADC bias per patch offset stays.
  add     (cfg.layout) a learned vector added to every row of the patch: the patch's height on the
          canvas, (y + 0.5) / rows in [0, 1] (interpolated between LAYOUT_KNOTS learned vectors, so any
          canvas height works), plus one per order direction (adc.ORDERS). So the first patch of any
          order knows whether it is sky or ground.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NuwaConfig
from .layers import NCPAttention

LAYOUT_KNOTS = 9
DIRECTIONS = ("down", "right", "up", "left", "outward")      # adc.ORDERS: the layout's direction ids


@dataclass
class Where:
    """Where each sample's patch lies: yx [B, 2] long patch coordinates, vfrac [B] float height of the
    patch centre on the canvas (0 top, 1 bottom), direction [B] long (index of DIRECTIONS)."""
    yx: torch.Tensor
    vfrac: torch.Tensor
    direction: torch.Tensor

    @staticmethod
    def of(yx, rows: int, direction: int, n: int, device=None, y_offset: float = 0.0, height=None) -> "Where":
        """One patch (y, x) of a canvas `rows` patches high, repeated for n samples. y_offset/height
        (in patches) place a crop inside a taller image: vfrac = (y_offset + y + 0.5) / height."""
        y, x = int(yx[0]), int(yx[1])
        h = float(height if height is not None else rows)
        return Where(torch.tensor([[y, x]], device=device).expand(n, 2),
                     torch.full((n,), (y_offset + y + 0.5) / h, device=device),
                     torch.full((n,), int(direction), dtype=torch.long, device=device))


@dataclass
class Placement:
    """What the decoder adds for a Where: add [B, 1, W] (layout) or None; rope = (cos_q, sin_q, cos_k,
    sin_k), each [B, 1, P+1, D/2] fp32 over the P+1 rows, or None."""
    add: torch.Tensor | None
    rope: tuple | None

    def rows(self, q_start: int, M: int):
        if self.rope is None:
            return None
        return tuple(t[:, :, q_start:q_start + M] for t in self.rope)


def rope_tables(yx, p: int, head_dim: int, base: float):
    """cos/sin of the 2D rotary embedding for the P+1 rows of patches yx [B, 2] -> 4 x [B, 1, P+1, D/2].

    Query row s sits at token s (row P, which predicts nothing, at local (p, 0)); key row s at token
    s-1 (row 0 has no key: token 0). Pairs 0..D/4-1 turn with the token row, D/4..D/2-1 with the
    column, at frequencies base ** (-i / (D/4)). Angles in float64, reduced mod 2 pi, so canvases of
    any size keep full precision."""
    P = p * p
    dev = yx.device
    s = torch.arange(P + 1, device=dev)
    ks = (s - 1).clamp(min=0)
    nf = head_dim // 4
    freqs = base ** (-torch.arange(nf, device=dev, dtype=torch.float64) / nf)              # [nf]
    y0 = yx[:, 0:1].to(torch.float64) * p                                                  # [B, 1]
    x0 = yx[:, 1:2].to(torch.float64) * p
    out = []
    for rows in (s, ks):
        ty = (y0 + (rows // p).to(torch.float64))[..., None] * freqs                      # [B, P+1, nf]
        tx = (x0 + (rows % p).to(torch.float64))[..., None] * freqs
        ang = torch.cat([ty, tx], -1).remainder(2 * math.pi)[:, None]                     # [B, 1, P+1, D/2]
        out += [ang.cos().float(), ang.sin().float()]
    return tuple(out)




class CrossAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def text_kv(self, mem):                                             # mem [B, Lt, width]
        B, Lt, W = mem.shape
        kv = self.kv(mem).view(B, Lt, 2, self.heads, W // self.heads)
        return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # 2 x [B, H, Lt, D]

    def forward(self, x, k, v, mask):                                   # x [B, M, width], mask [B, Lt]
        B, M, W = x.shape
        q = self.q(x).view(B, M, self.heads, W // self.heads).transpose(1, 2)   # [B, H, M, D]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(o.transpose(1, 2).reshape(B, M, W))


class DecoderLayer(nn.Module):
    """Pre-norm: self-attention (NCPAttention, keys/values from the call's source) -> cross-attention
    to the text -> MLP."""

    def __init__(self, cfg: NuwaConfig, index: int = 0):
        super().__init__()
        W, H = cfg.width, cfg.heads
        self.index = index
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(W), nn.LayerNorm(W), nn.LayerNorm(W)
        self.attn = NCPAttention(W, H, layer=index)
        self.cross = CrossAttention(W, H)
        self.mlp = nn.Sequential(nn.Linear(W, cfg.mlp_ratio * W), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * W, W))
        self._register_load_state_dict_pre_hook(_upgrade_attention_keys)

    def forward(self, x, kv, q_start, text, rope=None):
        """x [B, M, width] rows q_start..q_start+M-1; kv: where self-attention reads keys/values
        (layers module docstring); text: per-layer (k, v, mask); rope: Placement.rows(...) or None."""
        x = x + self.attn(self.ln1(x), kv, q_start, rope)
        tk, tv, tmask = text[self.index]
        x = x + self.cross(self.ln2(x), tk, tv, tmask)
        return x + self.mlp(self.ln3(x))


ATTENTION_KEYS = ("qkv.weight", "proj.weight", "null_k", "null_v")   # moved from a layer into layer.attn


def upgrade_key(name: str) -> str:
    """A tensor name of a checkpoint written before the self-attention became layer.attn, in today's
    naming: decoder.layers.3.qkv.weight -> decoder.layers.3.attn.qkv.weight (others unchanged)."""
    m = re.fullmatch(r"(.*decoder\.layers\.\d+\.)(.+)", name)
    return m[1] + "attn." + m[2] if m and m[2] in ATTENTION_KEYS else name


def _upgrade_attention_keys(state, prefix, *args):
    for k in ATTENTION_KEYS:
        if prefix + k in state:
            state[prefix + "attn." + k] = state.pop(prefix + k)


class VisionDecoder(nn.Module):
    def __init__(self, cfg: NuwaConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.tok = nn.Embedding(cfg.vq.codebook_size, W)
        self.start = nn.Parameter(torch.randn(W) * 0.02)
        self.pos_y = nn.Parameter(torch.randn(cfg.patch, W) * 0.02)      # axial within-patch position
        self.pos_x = nn.Parameter(torch.randn(cfg.patch, W) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(cfg, l) for l in range(cfg.layers))
        self.adc_bias = nn.Parameter(torch.zeros(cfg.layers, cfg.R, cfg.heads))   # B[l][R, heads]
        if cfg.layout:
            self.layout_y = nn.Parameter(torch.zeros(LAYOUT_KNOTS, W))      # height on the canvas
            self.layout_dir = nn.Parameter(torch.zeros(len(DIRECTIONS), W))  # the order's direction
        self.ln_f = nn.LayerNorm(W)
        self.head = nn.Linear(W, cfg.vq.codebook_size, bias=False)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.apply(_init)

    def text_memory(self, mem, mask):
        """Per-layer cross-attention keys/values of the text, computed once per generation."""
        return [(*layer.cross.text_kv(mem), mask) for layer in self.layers]

    def place(self, where: Where | None) -> Placement:
        """The per-patch additions for `where` (None: a config without rope and layout only)."""
        cfg = self.cfg
        if where is None:
            if cfg.rope or cfg.layout:
                raise ValueError("this decoder uses rope/layout: pass where= (the patches' placement)")
            return Placement(None, None)
        add = None
        if cfg.layout:
            f = where.vfrac.float().clamp(0, 1) * (LAYOUT_KNOTS - 1)                  # [B]
            i0 = f.floor().long().clamp(max=LAYOUT_KNOTS - 2)
            w = (f - i0)[:, None].to(self.layout_y.dtype)                              # keep the weights' dtype
            add = (self.layout_y[i0] * (1 - w) + self.layout_y[i0 + 1] * w
                   + self.layout_dir[where.direction])[:, None]                         # [B, 1, W]
        rope = rope_tables(where.yx, cfg.patch, cfg.head_dim, cfg.rope_base) if cfg.rope else None
        return Placement(add, rope)

    def positions(self):
        """The axial within-patch position embedding of the P tokens, [P, W]."""
        p = self.cfg.patch
        return (self.pos_y[:, None, :] + self.pos_x[None, :, :]).reshape(p * p, -1)

    def embed(self, tokens, q_start: int, M: int, placed: Placement | None = None):
        """Rows q_start .. q_start+M-1 of a patch. tokens [B, >= q_start+M-1] (token s-1 feeds row s)."""
        pos = self.positions()                                                       # [P, W]
        rows = []
        if q_start == 0:
            rows.append(self.start.expand(tokens.shape[0], 1, -1))
        lo = max(q_start, 1)
        hi = q_start + M
        if hi > lo:
            rows.append(self.tok(tokens[:, lo - 1:hi - 1]) + pos[lo - 1:hi - 1])       # [B, hi-lo, W]
        x = torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]
        if placed is not None and placed.add is not None:
            x = x + placed.add.to(x.dtype)
        return x

    def forward(self, tokens, q_start: int, M: int, kv, text, logits: bool = True, where=None):
        """Run rows q_start..q_start+M-1; returns logits [B, M, V] (or the final hidden states).
        kv: where self-attention reads keys/values, kv(attn, q, k, v, q_start) (nuwa_fast.layers).
        where: a Where, or a Placement computed once per patch (self.place)."""
        placed = where if isinstance(where, Placement) else self.place(where)
        x = self.embed(tokens, q_start, M, placed)
        rope = placed.rows(q_start, M)
        for layer in self.layers:
            x = layer(x, kv, q_start, text, rope)
        x = self.ln_f(x)
        return self.head(x) if logits else x


def _init(m):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


class NuwaModel(nn.Module):
    """VQ tokenizer + text encoder + vision decoder. Use nuwa_fast.load() to build one.

    The tasks are its methods. Each takes `config=` (a GenerationConfig) and any of its fields as
    keywords, which override the config: seed, temperature, top_k, top_p, guidance, order, extent,
    backend, attention, cuda_graphs, compile_step, schedule, max_lanes, oracle, progress, on_patch.
    Each returns an images.Result (pixels, tokens, stats). The model itself is not called: its modules
    are driven patch by patch by the engine.
    """

    def __init__(self, cfg: NuwaConfig):
        super().__init__()
        from .text import make_text_encoder
        from .vq import VQModel
        self.cfg = cfg
        self.vq = VQModel(cfg.vq)
        self.text = make_text_encoder(cfg.text, cfg.width)
        self.decoder = VisionDecoder(cfg)

    @property
    def device(self):
        return self.decoder.start.device

    @torch.no_grad()
    def encode_text(self, prompts):
        """prompts: list of str (None or "" = unconditional) -> per-layer text keys/values."""
        prompts = ["" if p is None else p for p in prompts]
        mem, mask = self.text.encode_prompts(prompts, self.device)
        return self.decoder.text_memory(mem, mask)

    def forward(self, *args, **kwargs):
        raise TypeError("a NuwaModel is not called directly (its modules are driven patch by patch by the engine): "
                        "use model.generate_image(prompt, height=, width=), model.generate_video, model.outpaint, "
                        "model.animate, or the pipeline: nuwa_fast.Pipeline.from_pretrained('tiny')(prompt, "
                        "height=, width=).images")

    # ---- the tasks (implemented in nuwa_fast.api) ---------------------------------------------------
    def generate_image(self, prompt=None, height=256, width=256, order=None, batch=1, region=None,
                       config=None, **options):
        """Unconditional (prompt None/"") or text-to-image of any size, patch by patch in `order`
        (default "down"; "outward" grows from `region`, a patch rectangle (y0, x0, y1, x1)).
        Result.pixels: uint8 [batch, height, width, 3]."""
        from . import api
        r = api.generate(self, prompt, 1, height, width, batch, region, _generation(config, order, options))
        r.pixels = r.pixels[:, 0]
        return r

    def generate_video(self, prompt=None, frames=8, height=256, width=256, order=None, batch=1, region=None,
                       config=None, **options):
        """Text-to-video (or unconditional video): frame after frame, each in `order` (default "down").
        Result.pixels: uint8 [batch, frames, height, width, 3]."""
        from . import api
        return api.generate(self, prompt, frames, height, width, batch, region, _generation(config, order, options))

    def outpaint(self, image, left=0, right=0, top=0, bottom=0, prompt=None, order=None, batch=1, paste=True,
                 config=None, **options):
        """Extend `image` (PIL, path, uint8 [H, W, 3] or tensor [3, H, W]) by the given number of pixels
        on each side; its own tokens stay unchanged (paste=True also keeps its exact pixels). Default
        order: away from the image (one side), else "outward" from it."""
        from . import api
        return api.outpaint(self, image, left, right, top, bottom, prompt, batch, paste,
                            _generation(config, order, options))

    def animate(self, image, frames=8, prompt=None, order=None, batch=1, paste=True, config=None, **options):
        """Image animation: frame 0 is `image` (its tokens stay unchanged), later frames are generated."""
        from . import api
        return api.animate(self, image, frames, prompt, batch, paste, _generation(config, order, options))


def _generation(config, order, options):
    from .generation import GenerationConfig
    if order is not None:
        options["order"] = order
    return GenerationConfig.of(config, **options)
