"""Stage 1: the VQ tokenizer.

Loss = L1 + mse_weight * MSE + commit_weight * commitment (+ gan_weight * hinge patch-GAN after gan_start, behind
--gan; with --gan-adaptive the weight is also scaled by VQGAN's gradient balance at the decoder's last layer).
The discriminator has its own AdamW group (betas 0.5, 0.9, no decay) and its own gradient clipping. Dead codes (no hit in the last restart_every steps, summed over all ranks) are re-seeded
from encoder outputs on rank 0 and broadcast. Reported on held-out crops: PSNR and codebook usage.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import common, sources
from .options import TrainOptions


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (pix2pix): stride-2 convs, one logit per ~16 px patch."""

    def __init__(self, ch=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.GroupNorm(8, 2 * ch), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * ch, 4 * ch, 4, 1, 1), nn.GroupNorm(8, 4 * ch), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * ch, 1, 4, 1, 1))

    def forward(self, x):                                                   # [B, 3, H, W] -> [B, 1, h, w]
        return self.net(x)


def vq_loss(vq, img, mse_weight=1.0, commit_weight=0.1):
    """-> (total loss, recon, loss dict of the VQ model plus "mse").

    A full-weight commitment pulls the encoder outputs of an untrained encoder onto one code within
    ~10 steps (measured on the tiny preset: 1 code in use, PSNR stuck at 12 dB); at 0.1 with dead-code
    restarts every 20 steps the codebook stays in use.
    """
    recon, ld = vq(img)
    mse = F.mse_loss(recon, img)
    return ld["rec"] + mse_weight * mse + commit_weight * ld["commit"], recon, dict(ld, mse=mse)


def adaptive_weight(rec_loss, g_loss, last):
    """VQGAN's balance (Esser et al. 2021): |grad of the reconstruction loss| / |grad of the generator
    loss| at the decoder's last layer, clamped to [0, 1e4], so the adversarial term pushes about as hard
    as the reconstruction whatever the scale of the discriminator's logits."""
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def psnr(a, b):
    """PSNR in dB of images in [-1, 1] (peak 1 on the [0, 1] scale), per image mean."""
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).flatten(1).mean(1)             # [B]
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()


@torch.no_grad()
def evaluate_vq(vq, data, n=32, size=128, seed=1234, batch=8):
    """Held-out PSNR (encode -> decode), codebook usage and perplexity of the codes."""
    g = sources.rng(seed, 0, 0, salt=7)
    K = vq.cfg.codebook_size
    counts = torch.zeros(K, dtype=torch.long)
    ps = []
    dev = vq.codebook.device
    for i in range(0, n, batch):
        img = sources.crop_batch(data, g, min(batch, n - i), size, heldout=True).to(dev)
        tok = vq.encode(img)
        ps.append(psnr(vq.decode(tok).float(), img))
        counts += torch.bincount(tok.flatten().cpu(), minlength=K)
    p = counts.float() / counts.sum()
    ppl = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    return {"psnr": sum(ps) / len(ps), "usage": (counts > 0).float().mean().item(), "perplexity": ppl}


def train_vq(cfg, opt: TrainOptions, log=print):
    """Train the VQ of a NuwaModel(cfg); writes opt.out/last.safetensors (a full nuwa-fast checkpoint)."""
    from ..model import NuwaModel
    from ..checkpoint import save_checkpoint
    if opt.threads:
        torch.set_num_threads(opt.threads)
    rank, world, dev = common.setup_distributed(opt.device)
    torch.manual_seed(opt.seed)
    src = None
    if opt.init:
        from ..checkpoint import load_checkpoint
        src = load_checkpoint(opt.init)
        if src.cfg.vq != cfg.vq:
            raise ValueError(f"--init {opt.init}: its VQ config differs from the preset's")
    if src is not None and opt.decoder_only:
        # Tokens stay exactly the same, so the init's vision decoder and text encoder stay valid: keep
        # the whole model (its config too), and the bundle written is a complete model with a new painter.
        model = src
    else:
        model = NuwaModel(cfg)
        if src is not None:                              # continue from a checkpoint's VQ
            model.vq.load_state_dict(src.vq.state_dict())
            del src
    vq = model.vq.to(dev).train()
    if opt.decoder_only:                             # the encoder and codebook, hence every token, stay fixed
        for mod in (vq.encoder, vq.quant_in):
            mod.requires_grad_(False)
        vq.codebook.requires_grad_(False)
    disc = PatchDiscriminator().to(dev) if opt.gan else None
    params = [q for q in vq.parameters() if q.requires_grad]
    optim = common.make_adamw(params, opt.lr, opt.weight_decay, betas=(0.9, 0.99))
    if disc is not None:        # its own group (the usual GAN betas, no decay), clipped on its own below
        optim.add_param_group({"params": list(disc.parameters()), "weight_decay": 0.0, "lr_scale": 1.0,
                               "betas": (0.5, 0.9)})
    last_layer = vq.decoder[-1].weight               # the adaptive GAN weight balances gradients here
    start, resumed_usage = 0, None
    extra = {"disc": disc} if disc is not None else {}
    if opt.resume and common.has_checkpoint(opt.out):
        start, saved, dstate = common.load_train_state(opt.out, model, optim, modules=extra)
        opt.check_resume(saved)
        resumed_usage = dstate["tensors"].get("usage")
    ddp_vq = common.wrap_ddp(vq, dev)
    metrics = common.MetricsLog(f"{opt.out}/metrics.jsonl", enabled=common.is_main())
    K = cfg.vq.codebook_size
    usage = torch.zeros(K, dtype=torch.long, device=dev)           # code hits since the last restart
    if start and resumed_usage is not None:
        usage.copy_(resumed_usage)
    steps = range(start, opt.steps)
    if opt.progress and common.is_main():
        from tqdm import tqdm
        steps = tqdm(steps, initial=start, total=opt.steps, desc="vq", unit="step", mininterval=5)
    for step in steps:
        g = sources.rng(opt.seed, rank, step)
        size = opt.sizes[int(g.integers(len(opt.sizes)))]
        img = sources.crop_batch(opt.data, g, opt.batch, size).to(dev)
        lr = common.lr_at(step, opt.steps, opt.lr, opt.warmup)
        common.set_lr(optim, lr)
        with common.autocast(dev, opt.cpu_bf16):
            loss, recon, ld = vq_loss(ddp_vq, img, opt.mse_weight, opt.commit_weight)
            gan = {}
            if disc is not None and step >= opt.gan_start:
                disc.requires_grad_(False)               # the generator term trains the VQ only
                g_loss = -disc(recon).mean()
                disc.requires_grad_(True)
                d_loss = F.relu(1 - disc(img)).mean() + F.relu(1 + disc(recon.detach())).mean()
                w = opt.gan_weight
                if opt.gan_adaptive:
                    w = w * adaptive_weight(loss, g_loss, last_layer)
                loss = loss + w * g_loss + d_loss        # d_loss reaches the discriminator only
                gan = {"g_loss": g_loss.item(), "d_loss": d_loss.item(), "gan_weight": float(w)}
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if disc is not None:
            common.all_reduce_grads(disc)
            torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
        optim.step()
        usage += ld["usage"]
        if opt.restart_every and not opt.decoder_only and (step + 1) % opt.restart_every == 0:
            restarted = _restart(vq, usage, ld["z"], step, opt.seed)
            usage.zero_()
        else:
            restarted = None
        if common.is_main() and (step % opt.log_every == 0 or restarted is not None):
            row = {"step": step, "lr": lr, "loss": loss.item(), "l1": ld["rec"].item(), "mse": ld["mse"].item(),
                   "commit": ld["commit"].item(), "psnr": psnr(recon.detach().float(), img), "size": size, **gan}
            if restarted is not None:
                row["restarted"] = restarted
            metrics.write(**row)
            if hasattr(steps, "set_postfix"):
                steps.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.2f}")
        done = step + 1 == opt.steps or step + 1 == opt.stop_at
        if (step + 1) % opt.save_every == 0 or done:
            _save(model, extra, optim, step + 1, opt, usage)
        at_end = step + 1 == opt.steps and opt.eval_every >= 0
        if common.is_main() and ((opt.eval_every > 0 and (step + 1) % opt.eval_every == 0) or at_end):
            vq.eval()
            ev = evaluate_vq(vq, opt.data)
            vq.train()
            metrics.write(step=step + 1, eval=ev)
            log(f"vq step {step + 1}: held-out PSNR {ev['psnr']:.2f} dB, usage {ev['usage']:.3f}, "
                f"perplexity {ev['perplexity']:.1f}")
        if step + 1 == opt.stop_at:
            break
    common.barrier()
    return model


def _restart(vq, usage, z, step, seed):
    """Re-seed dead codes on rank 0 from its encoder outputs, then broadcast the codebook."""
    if dist.is_initialized():
        dist.all_reduce(usage)
    n = 0
    if common.is_main():
        n = vq.restart_dead_codes(z, usage, generator=common.step_generator(seed, step, 0, salt=3))
    if dist.is_initialized():
        dist.broadcast(vq.codebook.data, 0)
        t = torch.tensor([n], device=usage.device)
        dist.broadcast(t, 0)
        n = int(t)
    return n


def _save(model, extra, optim, step, opt, usage):
    from ..checkpoint import save_checkpoint
    if not common.is_main():
        return
    common.save_train_state(opt.out, model, optim, step, opt.to_dict(), modules=extra,
                            data_state={"step": step, "batch": opt.batch}, extra_tensors={"usage": usage})
    if opt.bundle:
        save_checkpoint(model, opt.bundle, dtype=torch.float16)
