"""Options of a training run (both stages). Stored in the state file so a resume can check them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class TrainOptions:
    out: str = "runs/x"
    steps: int = 1000
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    bias_lr_scale: float = 30.0         # nuwa: LR multiplier of the ADC bias table (see common.make_adamw)
    seed: int = 0
    data: str = "landscape:0.85,skimage:0.15"
    save_every: int = 100
    log_every: int = 10
    eval_every: int = 0                 # 0: only at the end
    resume: bool = False
    stop_at: int = 0                    # end this invocation after this step (saving); 0 = run to `steps`
    device: str | None = None
    cpu_bf16: bool = False              # bf16 autocast on CPU as well (GPU always autocasts)
    threads: int = 0                    # torch.set_num_threads on CPU; 0 = leave as is
    progress: bool = True
    bundle: str | None = None           # also write an fp16 copy here at every save (e.g. the bundled tiny)
    # VQ stage
    sizes: tuple = (64, 64, 64, 96, 128)    # crop side per step, drawn uniformly from this list
    mse_weight: float = 1.0
    commit_weight: float = 0.1          # x the VQ's commitment term; 1.0 collapses the tiny codebook to one code
    restart_every: int = 20             # dead-code restarts from the usage of the last N steps; 0 = off
    decoder_only: bool = False          # vq: train the pixel decoder only (tokens stay exactly the same)
    gan: bool = False                   # patch-GAN (hinge) after gan_start steps
    gan_start: int = 500
    gan_weight: float = 0.1
    gan_adaptive: bool = False          # scale gan_weight by |grad rec| / |grad gan| at the decoder's last layer
    # NUWA stage
    vq: str | None = None               # checkpoint whose VQ (and nothing else) is used
    cache: str | None = None            # token cache (train/cache.py) to cut chains from instead of rendering
    init: str | None = None             # checkpoint to start the decoder + text encoder from
    chains: tuple = ((4, 3, 0.5), (4, 2, 0.3), (2, 4, 0.2))   # (patch rows, patch cols, weight)
    mode: str = "parallel"              # "parallel" (teacher-forced block mask) | "sequential" (render-and-optimize)
    caption_drop: float = 0.1
    label_smoothing: float = 0.0
    edge_weight: float = 1.0            # nuwa: loss weight of the tokens on a patch edge that touches an earlier patch
    phrasing: float = 0.85              # nuwa: P(a fresh phrasing of the cached image's attributes as caption)
    outward: float = 0.0                # nuwa: P(an "outward" order from a random region) per step
    video_cache: str | None = None      # nuwa: token cache of moving clips (train cache --frames 3)
    video: float = 0.0                  # nuwa: P(a clip chain from video_cache) per step
    video_chain: tuple = (2, 4, 2)      # nuwa: (frames, patch rows, patch cols) of a clip chain

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # options that must match when resuming (the rest may change: steps, save/log cadence, device)
    PINNED = ("batch", "lr", "warmup", "seed", "data", "sizes", "mse_weight", "commit_weight", "restart_every", "gan",
              "gan_start", "gan_weight", "gan_adaptive", "decoder_only", "chains", "mode", "caption_drop", "label_smoothing", "edge_weight", "weight_decay",
              "bias_lr_scale",
              "cache", "phrasing", "outward", "video_cache", "video", "video_chain")

    def check_resume(self, saved: dict):
        for k in self.PINNED:
            mine, theirs = _norm(getattr(self, k)), _norm(saved.get(k))
            if k in saved and mine != theirs:
                raise ValueError(f"--resume: option {k} is {mine!r} but the run was started with {theirs!r}; "
                                 f"resume with the same options (or start a new --out)")


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v
