"""Seeded, sync-free sampling: temperature, top-k, top-p, classifier-free guidance.

The randomness is a counter-based hash of (seed, sample, step, row, token id), evaluated with
integer tensor ops on the logits' device. So the same seed gives the same tokens on every device,
for every batch size (sample b always draws the same numbers) and for the engine and the oracle
alike, and nothing ever waits for the host. The draw is the Gumbel-max trick:
argmax(logits / T + Gumbel) is a sample of softmax(logits / T).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF
SEED_LIMIT = 1 << 64


def check_seed(seed, name: str = "seed") -> int:
    """A seed is a whole number in [0, 2**64); every one gives its own random stream."""
    import numbers
    from .errors import BadArgument
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        if isinstance(seed, float) and seed.is_integer():
            seed = int(seed)
        else:
            raise BadArgument(f"{name} must be a whole number in [0, 2**64), got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise BadArgument(f"{name} must be in [0, 2**64) (= 0 .. 18446744073709551615), got {seed}")
    return seed


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0     # 0 = greedy
    top_k: int = 0               # 0 = off
    top_p: float = 1.0           # 1 = off
    guidance: float = 1.0        # classifier-free guidance scale; 1 = off

    def __post_init__(self):
        import math
        for name in ("temperature", "top_k", "top_p", "guidance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must be a number, got {v!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance}")


def _fmix32(h):
    """murmur3 finaliser on int64 tensors holding 32-bit values (products wrap; low bits survive)."""
    h = h & _M32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


_VOCAB_HASH: dict = {}


def _vocab_hash(vocab: int, dev) -> torch.Tensor:
    """The per-token-id half of the hash [vocab], computed once per (vocab, device)."""
    key = (vocab, str(dev))
    if key not in _VOCAB_HASH:
        v = torch.arange(vocab, device=dev, dtype=torch.int64)
        _VOCAB_HASH[key] = _fmix32(v * 0x27D4EB2F + 0x165667B1)
    return _VOCAB_HASH[key]


def uniform(seed: int, sample_ids, step, row, vocab: int):
    """U(0, 1) noise [B, vocab], a pure function of (seed, sample id, step, row, token id).

    The seed's high 32 bits feed a second key, mixed in only when they are non-zero: seeds below
    2**32 keep the streams they always had, and 2**32 + s is not s.
    """
    dev = sample_ids.device
    seed = int(seed)
    key = _fmix32(torch.full_like(sample_ids, seed & _M32) ^ 0x9E3779B9)
    key = _fmix32(key ^ _fmix32(sample_ids.long() + 0x632BE5AB))
    key = _fmix32(key ^ _fmix32(torch.as_tensor(step, device=dev).long() + 0x85157AF5))
    key = _fmix32(key ^ _fmix32(torch.as_tensor(row, device=dev).long() + 0x4CF5AD43))   # [B]
    h = _fmix32(key[:, None] ^ _vocab_hash(vocab, dev)[None, :])                             # [B, V]
    if seed >> 32:
        hi = _fmix32(torch.full_like(sample_ids, (seed >> 32) & _M32) ^ 0x7F4A7C15)          # [B]
        h = _fmix32(h ^ _fmix32(hi[:, None] + _vocab_hash(vocab, dev)[None, :]))            # [B, V]
    return ((h >> 8).double() + 0.5) / float(1 << 24)


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """Mask (to -inf) everything outside the top-k and outside the smallest top-p nucleus."""
    V = logits.shape[-1]
    if top_k and top_k < V:
        kth = torch.topk(logits, int(top_k), dim=-1).values[..., -1:]                      # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        srt, idx = torch.sort(logits, dim=-1, descending=True)
        prob = torch.softmax(srt, dim=-1)
        drop = (torch.cumsum(prob, dim=-1) - prob) >= top_p                                # keeps >= 1
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
    return logits


def sample(logits, s: Sampling, seed: int, sample_ids, step, row):
    """logits [B, V] -> token ids [B] (int64)."""
    logits = logits.float()
    if s.temperature == 0:
        return torch.argmax(logits, dim=-1)
    logits = filter_logits(logits / s.temperature, s.top_k, s.top_p)
    u = uniform(seed, sample_ids, step, row, logits.shape[-1])
    gumbel = -torch.log(-torch.log(u))
    return torch.argmax(logits.double() + gumbel, dim=-1)


def guide(logits, B: int, scale: float):
    """Classifier-free guidance over a doubled batch: rows [:B] conditional, [B:] unconditional."""
    cond, uncond = logits[:B].float(), logits[B:].float()
    return uncond + scale * (cond - uncond)
