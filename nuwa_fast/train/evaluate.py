"""Held-out evaluation of a checkpoint: VQ reconstruction and decoder bits per token.

bits/token = mean cross-entropy (base 2) of every token of held-out patch chains, teacher-forced
with chain.parallel_logits (the forward semantics of inference), for each of the four basic orders,
once with the NCP extent the checkpoint was trained with and once with extent (0, 0, 0): no
context, each patch alone with its caption. The gap is what the Nearby Context Pool buys.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .. import adc
from . import chain as chainlib
from . import sources
from .options import TrainOptions
from .vq_stage import evaluate_vq


@torch.no_grad()
def bits_per_token(model, data="landscape", samples=16, chain=(4, 3), extents=None, batch=4, seed=99):
    """{order: {"trained": bits, "none": bits}} on held-out chains (the same images for every order)."""
    cfg = model.cfg
    extents = extents or {"trained": cfg.extent, "none": (0, 0, 0)}
    opt = TrainOptions(data=data, caption_drop=0.0)
    V = cfg.vq.codebook_size
    dec = model.decoder
    from .nuwa_stage import draw_chain_batch
    out = {}
    for name in adc.BASIC_ORDERS:
        sums = {k: 0.0 for k in extents}
        n = 0
        for b0 in range(0, samples, batch):
            g = sources.rng(seed, 0, b0, salt=5)                              # same images for every order
            bs = min(batch, samples - b0)
            ch, prompts, order, _, where = draw_chain_batch(model.vq, opt, g, bs, cfg.patch, heldout=True,
                                                            shape=chain, order=name)
            mem, mask = model.text.encode_prompts(prompts, model.device)
            text = dec.text_memory(mem, mask)
            for k, ext in extents.items():
                lg = chainlib.parallel_logits(dec, ch, chainlib.context(order, ext, cfg.extent), text, where=where)
                sums[k] += F.cross_entropy(lg.reshape(-1, V).float(), ch.reshape(-1), reduction="sum").item()
            n += ch.numel()
        out[name] = {k: v / n / math.log(2) for k, v in sums.items()}
    return out


def evaluate(checkpoint="tiny", data="landscape", samples=16, chain=(4, 3), vq_samples=32, device="cpu",
             vq_data="landscape:0.85,skimage:0.15"):
    from ..checkpoint import load
    model = load(checkpoint, device=device)
    t0 = time.time()
    vq = evaluate_vq(model.vq, vq_data, n=vq_samples)
    t1 = time.time()
    bits = bits_per_token(model, data, samples, chain)
    t2 = time.time()
    mean = {k: sum(b[k] for b in bits.values()) / len(bits) for k in ("trained", "none")}
    return {
        "checkpoint": str(checkpoint), "config": model.cfg.name, "extent": list(model.cfg.extent),
        "vq": {**vq, "data": vq_data, "images": vq_samples, "crop": 128, "seconds": round(t1 - t0, 1)},
        "bits_per_token": {"data": data, "chains": samples, "chain_patches": list(chain),
                           "per_order": bits, "mean": mean,
                           "context_gain_bits": mean["none"] - mean["trained"], "seconds": round(t2 - t1, 1)},
        "uniform_bits": math.log2(model.cfg.vq.codebook_size),
    }
