"""GenerationConfig: every option of a generation in one typed, validated dataclass.

Every task of NuwaModel (generate_image, generate_video, outpaint, animate) takes `config=` and the
same options as keywords; a keyword overrides the config's field:

    cfg = nuwa_fast.GenerationConfig(temperature=0.9, top_k=100, seed=3, order="right")
    model.generate_image("a lake at sunset", height=256, width=1536, config=cfg)
    model.generate_image("a lake at sunset", height=256, width=1536, config=cfg, seed=4)   # seed 4
    model.generate_image("a lake at sunset", height=256, width=1536, temperature=0.9)      # no config

The CLI builds one from its flags (cli.generation_config).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import ncp
from .sampling import Sampling, check_seed


@dataclass(frozen=True)
class GenerationConfig:
    # ---- sampling (sampling.Sampling) ----
    temperature: float = 1.0           # 0 = greedy
    top_k: int = 0                     # keep the k most likely tokens; 0 = off
    top_p: float = 1.0                 # nucleus: the smallest set with this probability; 1 = off
    guidance: float = 1.0              # classifier-free guidance scale (> 1 = on; doubles the rows)
    seed: int = 0                      # the sampler's noise is keyed by (seed, sample, patch, row)
    # ---- what is generated where ----
    order: str | None = None           # patch order (adc.ORDERS); None = the task's default
    extent: tuple | None = None        # NCP window (e_t, e_h, e_w) at inference; None = the checkpoint's
    # ---- how it runs (tokens do not depend on these) ----
    backend: str | None = None         # "torch" | "triton" | "cuda"; None = NUWA_FAST_BACKEND, then device
    attention: str | None = None       # "paged" | "gathered" | "sdpa" | "flex" | "fused"; None = by backend
    cuda_graphs: bool | None = None    # capture the row step and prefill (None = on with CUDA)
    compile_step: bool = False         # torch.compile the row step (pays off on large canvases only)
    schedule: str = "waves"            # "waves" (every ready patch at once) | "sequential"
    max_lanes: int | None = None       # most patches decoded at once; None = as memory allows
    oracle: bool = False               # run the naive reference generator instead (tests, checks)
    # ---- feedback ----
    progress: bool = False             # a tqdm bar over patches
    on_patch: Callable | None = None   # called with a PatchEvent after each wave

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "seed", check_seed(self.seed))
        self.sampling()                                   # raises on bad temperature/top_k/top_p/guidance
        ncp.check_schedule(self.schedule, self.max_lanes)
        if self.extent is not None:
            set_(self, "extent", check_extent_arg(self.extent))
        if self.on_patch is not None and not callable(self.on_patch):
            raise TypeError(f"on_patch must be a callable taking a PatchEvent, got {type(self.on_patch).__name__}")
        if self.backend is not None and (not isinstance(self.backend, str) or not self.backend):
            raise ValueError(f"backend must be the name of a backend (ops.available_backends()) or None "
                             f"(the default), got {self.backend!r}")
        if self.order is not None and not isinstance(self.order, str):
            raise TypeError(f"order must be the name of an order (adc.ORDERS), got {self.order!r}")
        for name in ("progress", "compile_step", "oracle"):
            set_(self, name, bool(getattr(self, name)))

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, guidance=self.guidance)

    def replace(self, **options) -> "GenerationConfig":
        """This config with some fields changed; an unknown name is a TypeError naming it."""
        unknown = sorted(set(options) - FIELDS)
        if unknown:
            raise TypeError(f"unexpected arguments {unknown}; the generation options are {sorted(FIELDS)}")
        return dataclasses.replace(self, **options) if options else self

    @classmethod
    def of(cls, config: "GenerationConfig | None" = None, **options) -> "GenerationConfig":
        """`config` (default: all defaults) with the keyword options applied on top."""
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"config must be a nuwa_fast.GenerationConfig, got {type(config).__name__}")
        return (config or cls()).replace(**options)


FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationConfig))


def check_extent_arg(extent) -> tuple:
    if isinstance(extent, (str, bytes)) or not hasattr(extent, "__len__") or len(extent) != 3 or \
            any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 0 for e in extent):
        raise ValueError(f"extent must be three whole numbers >= 0 (e_t, e_h, e_w), e.g. (0, 2, 2); got {extent!r}")
    return tuple(int(e) for e in extent)
