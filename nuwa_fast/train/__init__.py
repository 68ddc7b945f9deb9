"""Training: stage 1 (VQ tokenizer) and stage 2 (vision decoder + text encoder), resumable, DDP-ready.

    from nuwa_fast.train import TrainOptions, train_vq, train_nuwa
"""
from .options import TrainOptions  # noqa: F401


def train_vq(cfg, opt):
    from .vq_stage import train_vq as f
    return f(cfg, opt)


def train_nuwa(cfg, opt):
    from .nuwa_stage import train_nuwa as f
    return f(cfg, opt)
