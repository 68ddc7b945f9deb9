"""Stage 2: the vision decoder and the text encoder, on patch chains tokenised by the frozen VQ.

Every step draws one chain shape and one of the four basic orders for the whole batch (per rank),
B captioned images of that shape, drops each caption with probability caption_drop (the
unconditional prompt for classifier-free guidance), and trains with cross-entropy on every token:

  mode "parallel"    one teacher-forced pass with the block mask of chain.parallel_logits (the
                     forward semantics of inference), one optimizer step per chain.
  mode "sequential"  render-and-optimize as in the paper: patch by patch in order, each patch's loss
                     back-propagated and the optimizer stepped, then its keys/values join the pool
                     detached. One optimizer step per patch; the LR follows the chain step.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import adc
from . import chain as chainlib
from . import common, sources
from .options import TrainOptions


class NuwaTrainer(nn.Module):
    """Text encoder + decoder behind one forward (what DDP wraps); the VQ stays outside, frozen."""

    def __init__(self, model):
        super().__init__()
        self.text = model.text
        self.decoder = model.decoder

    def text_memory(self, prompts, dev):
        mem, mask = self.text.encode_prompts(prompts, dev)
        return self.decoder.text_memory(mem, mask)

    def forward(self, kind, chain, prompts, rel=None, ctx=None, label_smoothing=0.0, where=None, weight=None):
        """kind "chain": chain [B, N, P] -> (loss, mean CE over all tokens);
        kind "patch": chain [B, P] one patch against ctx -> (loss, mean CE, page).
        weight ([N, P] or [P], optional): per-token loss weights; the loss is their weighted mean of the
        CE (the plain mean without), the mean CE is what bits/token report either way."""
        text = self.text_memory(prompts, chain.device)
        V = self.decoder.cfg.vq.codebook_size
        if kind == "chain":
            lg = chainlib.parallel_logits(self.decoder, chain, rel, text, where=where)   # [B, N, P, V]
            page = None
        else:
            lg, page = chainlib.patch_forward(self.decoder, chain, ctx, text, where=where)  # [B, P, V]
        ce = F.cross_entropy(lg.reshape(-1, V).float(), chain.reshape(-1), label_smoothing=label_smoothing,
                             reduction="none").view(chain.shape)
        mean = ce.mean()
        loss = mean if weight is None else (ce * weight).sum() / (weight.sum() * chain.shape[0])
        return (loss, mean) if kind == "chain" else (loss, mean, page)


def draw_chain_batch(vq, opt: TrainOptions, g, batch, p, heldout=False, shape=None, order=None, cache=None,
                     video_cache=None):
    """-> (chain tokens [B, N, P], prompts [B], order, (Hc, Wc), where). Deterministic in g.

    With a TokenCache the chains are token windows of cached images (clips from video_cache with
    probability opt.video: frames outermost, each frame in the same basic order); else images are
    rendered and tokenised by the VQ. The order is a basic one, or with probability opt.outward
    "outward" from a random rectangle of the chain. `where` places every patch of the B chains
    (chain.chain_where: its height in the source image, the order's direction).
    """
    from ..model import DIRECTIONS
    clip = video_cache is not None and shape is None and order is None and g.random() < opt.video
    if clip:
        T, Hc, Wc = opt.video_chain
    elif shape is None:
        T = 1
        w = np.array([c[2] if len(c) > 2 else 1.0 for c in opt.chains], np.float64)
        Hc, Wc = opt.chains[int(g.choice(len(w), p=w / w.sum()))][:2]
    else:
        T, (Hc, Wc) = 1, shape
    region = None
    if order is None:
        order = adc.BASIC_ORDERS[int(g.integers(4))]
        if not clip and opt.outward > 0 and g.random() < opt.outward:
            y0, x0 = int(g.integers(Hc)), int(g.integers(Wc))
            region = (y0, x0, min(Hc - 1, y0 + int(g.integers(2))), min(Wc - 1, x0 + int(g.integers(2))))
            order = "outward"
    dev = vq.codebook.device
    if cache is not None:
        src = video_cache if clip else cache
        tok, prompts, placed = src.crop_placed(g, batch, Hc * p, Wc * p, frames=T, phrasing=opt.phrasing)
        tok = tok.to(dev)
        y_off = [y / p for y in placed["y_offset"]]
        height = [placed["height"] / p] * batch
    else:
        pix = p * vq.f
        imgs, prompts = [], []
        for _ in range(batch):
            img, cap = sources.draw(opt.data, g, Hc * pix, Wc * pix, heldout=heldout)
            imgs.append(img)
            prompts.append(cap)
        with torch.no_grad():
            tok = vq.encode(sources.to_tensor(np.stack(imgs)).to(dev))          # [B, Hc*p, Wc*p]
        y_off, height = [0.0] * batch, [float(Hc)] * batch
    drop = g.random(batch) < opt.caption_drop
    prompts = ["" if d else c for c, d in zip(prompts, drop.tolist())]
    orde = adc.order([order] * T if T > 1 else order, (T, Hc, Wc), region)
    where = chainlib.chain_where(orde, y_off, height, DIRECTIONS.index(order), dev)
    return chainlib.to_chain(tok, orde, p), prompts, orde, (Hc, Wc), where


def _warm_start(model, src, path, log):
    """Start from another config's checkpoint: every decoder/VQ tensor of the same name and shape is
    copied (e.g. an older bundle before rope, layout or a new text encoder); the rest stay as
    initialised. Refused when the decoder's shape differs (nothing useful would carry over)."""
    c, s = model.cfg, src.cfg
    if (c.width, c.layers, c.heads, c.patch, c.extent, c.vq) != (s.width, s.layers, s.heads, s.patch, s.extent, s.vq):
        raise ValueError(f"--init {path}: its decoder (width {s.width}, layers {s.layers}, heads {s.heads}, "
                         f"patch {s.patch}, extent {s.extent}) or VQ differs from the preset's; start without --init")
    mine, theirs = model.state_dict(), src.state_dict()
    same = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape and not k.startswith("text.")}
    model.load_state_dict(same, strict=False)
    fresh = sorted(k for k in mine if k not in same)
    log(f"--init {path}: warm start, {len(same)} tensors copied, {len(fresh)} fresh: "
        f"{', '.join(fresh[:8])}{' ...' if len(fresh) > 8 else ''}")


def build_model(cfg, opt: TrainOptions, log=print):
    from ..checkpoint import load_checkpoint
    from ..model import NuwaModel
    torch.manual_seed(opt.seed)
    model = NuwaModel(cfg)
    if opt.init:
        src = load_checkpoint(opt.init)
        if src.cfg == cfg:
            model.load_state_dict(src.state_dict())
        else:
            _warm_start(model, src, opt.init, log)
    if opt.vq:
        src = load_checkpoint(opt.vq)
        if src.cfg.vq != cfg.vq:
            raise ValueError(f"--vq {opt.vq}: its VQ config {src.cfg.vq} differs from the preset's {cfg.vq}")
        model.vq.load_state_dict(src.vq.state_dict())
    model.vq.requires_grad_(False).eval()
    return model


def train_nuwa(cfg, opt: TrainOptions, log=print):
    from ..checkpoint import save_checkpoint
    if opt.threads:
        torch.set_num_threads(opt.threads)
    rank, world, dev = common.setup_distributed(opt.device)
    model = build_model(cfg, opt, log).to(dev)
    trainer = NuwaTrainer(model).train()
    optim = common.make_adamw(trainer.parameters(), opt.lr, opt.weight_decay, fast=[model.decoder.adc_bias],
                              fast_scale=opt.bias_lr_scale)
    start = 0
    if opt.resume and common.has_checkpoint(opt.out):
        start, saved, _ = common.load_train_state(opt.out, model, optim)
        opt.check_resume(saved)
    ddp = common.wrap_ddp(trainer, dev)
    metrics = common.MetricsLog(f"{opt.out}/metrics.jsonl", enabled=common.is_main())
    p = cfg.patch
    rel_cache = {}
    cache = video_cache = None
    if opt.cache:
        from .cache import TokenCache
        cache = TokenCache(opt.cache)
        if opt.video_cache and opt.video > 0:
            video_cache = TokenCache(opt.video_cache)
    steps = range(start, opt.steps)
    if opt.progress and common.is_main():
        from tqdm import tqdm
        steps = tqdm(steps, initial=start, total=opt.steps, desc=f"nuwa ({opt.mode})", unit="chain", mininterval=5)
    params = [q for q in trainer.parameters() if q.requires_grad]
    edge_cache = {}

    def edge_weight_of(order):
        """The [N, P] loss weights of an order (None at --edge-weight 1), built once per order."""
        if opt.edge_weight == 1.0:
            return None
        key = tuple(map(tuple, order))
        if key not in edge_cache:
            edge_cache[key] = chainlib.edge_weights(order, p, opt.edge_weight, dev)
        return edge_cache[key]

    for step in steps:
        g = sources.rng(opt.seed, rank, step)
        chain, prompts, order, shape, where = draw_chain_batch(model.vq, opt, g, opt.batch, p, cache=cache,
                                                               video_cache=video_cache)
        lr = common.lr_at(step, opt.steps, opt.lr, opt.warmup)
        common.set_lr(optim, lr)
        if opt.mode == "parallel":
            key = tuple(order)
            if key not in rel_cache:
                rel_cache[key] = chainlib.context(order, cfg.extent, cfg.extent)
            weight = edge_weight_of(order)
            with common.autocast(dev, opt.cpu_bf16):
                loss, ce = ddp("chain", chain, prompts, rel=rel_cache[key], label_smoothing=opt.label_smoothing,
                               where=where, weight=weight)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
        else:
            loss, ce, gn = _render_and_optimize(ddp, optim, params, chain, prompts, order, cfg, opt, where,
                                                edge_weight_of(order))
        if common.is_main() and step % opt.log_every == 0:
            loss = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
            ce = float(ce.detach()) if torch.is_tensor(ce) else float(ce)
            row = {"step": step, "lr": lr, "loss": loss, "bits": ce / math.log(2),
                   "grad_norm": float(gn), "order": _order_name(order, shape), "shape": list(shape)}
            metrics.write(**row)
            if hasattr(steps, "set_postfix"):
                steps.set_postfix(loss=f"{row['loss']:.3f}")
        done = step + 1 == opt.steps or step + 1 == opt.stop_at
        if common.is_main() and ((step + 1) % opt.save_every == 0 or done):
            common.save_train_state(opt.out, model, optim, step + 1, opt.to_dict(),
                                    data_state={"step": step + 1, "batch": opt.batch})
            if opt.bundle:
                save_checkpoint(model, opt.bundle, dtype=torch.float16)
        if step + 1 == opt.stop_at:
            break
    common.barrier()
    return model


def _render_and_optimize(ddp, optim, params, chain, prompts, order, cfg, opt, where=None, weight=None):
    """The paper's training: per patch forward, backward, step; pages join the pool detached.
    weight: the chain's [N, P] loss weights (chain.edge_weights), or None for a plain mean."""
    step_of = {tuple(o): i for i, o in enumerate(order)}
    pages, total, total_ce, gn = {}, 0.0, 0.0, 0.0
    for i, (t, y, x) in enumerate(order):
        ctx = []
        for d in adc.offsets(cfg.extent):
            j = (t + d[0], y + d[1], x + d[2])
            if j in step_of and step_of[j] < i:
                ctx.append((pages[j], adc.rel_index(d, cfg.extent)))
        with common.autocast(chain.device, opt.cpu_bf16):
            loss, ce, page = ddp("patch", chain[:, i], prompts, ctx=ctx, label_smoothing=opt.label_smoothing,
                                 where=chainlib.where_step(where, chain.shape[0], chain.shape[1], i),
                                 weight=None if weight is None else weight[i])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optim.step()
        pages[(t, y, x)] = [(k.detach(), v.detach()) for k, v in page]
        total += float(loss.detach())
        total_ce += float(ce.detach())
    return total / len(order), total_ce / len(order), gn


def _order_name(order, shape):
    for name in adc.BASIC_ORDERS:
        if adc.order(name, shape) == [tuple(o) for o in order]:
            return name
    return "?"
