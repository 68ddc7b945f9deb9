"""A diffusers-shaped pipeline beside the task methods of NuwaModel.

    import torch, nuwa_fast
    pipe = nuwa_fast.Pipeline.from_pretrained("tiny", torch_dtype=torch.float32, device="cpu")
    out = pipe("snowy mountains above a pine forest and a lake at sunset", height=256, width=1536,
               generator=torch.Generator().manual_seed(0))
    out.images[0].save("panorama.png")            # PIL images; output_type="np" | "pt" for arrays
    out.seed, out.stats.tokens_per_second         # the seed used, generation stats

    pipe.outpaint(image, right=256).images         # extend a picture
    pipe.animate(image, frames=8).frames           # [sample][frame] PIL images
    pipe(prompt, frames=8, height=128, width=256).frames    # text-to-video

Every call runs the same engine as model.generate_image & co. (the same tokens for the same seed).
Randomness: `seed=` is the task methods' seed; `generator=` draws one 31-bit seed from the
generator (so repeated calls with one generator differ, as in diffusers); neither draws one from
torch's global generator (reproducible after torch.manual_seed). The seed used is in `out.seed` and
`out.stats.seed`. Every image of a call gets its own noise: the sampler keys it by
(seed, sample index).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .engine import Stats
from .generation import GenerationConfig

D = GenerationConfig()     # the defaults of every task: the sampling the eval found best for the bundle

OUTPUT_TYPES = ("pil", "np", "pt")
SEED_RANGE = 2 ** 31 - 1


@dataclass
class PipelineOutput:
    """images: image tasks; frames: video tasks (the other one is None).

    output_type "pil": images = [PIL.Image] per sample, frames = [[PIL.Image] per frame] per sample;
    "np": float32 in [0, 1], images [B, H, W, 3], frames [B, T, H, W, 3];
    "pt": float32 in [0, 1], images [B, 3, H, W], frames [B, T, 3, H, W].
    """
    images: object = None
    frames: object = None
    seed: int = 0
    stats: Stats | None = None
    tokens: torch.Tensor | None = None      # int64 [B, T, h, w] VQ tokens (padded to whole patches)


def _to_output(pixels: np.ndarray, output_type: str):
    """uint8 [B, H, W, 3] or [B, T, H, W, 3] -> the requested type."""
    if output_type == "pil":
        from PIL import Image
        if pixels.ndim == 5:
            return [[Image.fromarray(f) for f in clip] for clip in pixels]
        return [Image.fromarray(im) for im in pixels]
    x = pixels.astype(np.float32) / 255.0
    if output_type == "np":
        return x
    return torch.from_numpy(x).movedim(-1, -3).contiguous()          # channels first


def resolve_seed(generator=None, seed=None) -> int:
    """The engine's seed from `generator` or `seed`, or a fresh one from torch's global generator."""
    if generator is not None and seed is not None:
        raise ValueError("give generator= or seed=, not both")
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError(f"got {len(generator)} generators; give one: every image of a call already gets "
                             f"its own noise (the sampler keys it by seed and sample index)")
        generator = generator[0]
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return int(torch.randint(0, SEED_RANGE, (1,), generator=generator, device=generator.device).item())
    if seed is None:
        return int(torch.randint(0, SEED_RANGE, (1,)).item())
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= 2 ** 63 - 1:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


def _expand_prompts(prompt, num_images_per_prompt):
    n = num_images_per_prompt
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"num_images_per_prompt must be a whole number >= 1, got {n!r}")
    if prompt is None or isinstance(prompt, str):
        prompts = [prompt or ""]
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise TypeError(f"prompt must be a string, a non-empty list of strings or None, got {prompt!r:.80}")
    return [p for p in prompts for _ in range(int(n))]                 # diffusers' order: p0, p0, p1, p1


class Pipeline:
    """The bundled model (or any checkpoint) behind one call: `pipe(prompt, height=, width=)`."""

    def __init__(self, model):
        self.model = model
        self._progress = {}

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path="tiny", torch_dtype=None, device=None) -> "Pipeline":
        """A preset name ("tiny": the bundled weights) or a .safetensors checkpoint path. Never downloads."""
        from .checkpoint import load
        return cls(load(name_or_path, device=device or "cpu", torch_dtype=torch_dtype))

    def to(self, device=None, dtype=None) -> "Pipeline":
        from .checkpoint import resolve_dtype
        self.model.to(device=device, dtype=resolve_dtype(dtype))
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm arguments for the progress bar of later calls, e.g. disable=True, leave=False."""
        self._progress = dict(kwargs)

    # ---- the calls ---------------------------------------------------------------------------------
    def __call__(self, prompt=None, height: int = 256, width: int = 256, frames: int = 1,
                 num_images_per_prompt: int = 1, generator=None, seed=None, output_type: str = "pil",
                 order: str = "down", temperature: float = D.temperature, top_k: int = D.top_k, top_p: float = D.top_p,
                 guidance_scale: float = D.guidance, on_patch=None, **kwargs) -> PipelineOutput:
        """Text-to-image (frames=1, output .images) or text-to-video (frames > 1, output .frames).

        order: the patch order, "down" by default as for the task methods (the bundle's eval: no
        upside-down sample in 16 seeds, docs/model_card.md).
        Other keywords go to the task: extent, backend, attention, cuda_graphs, compile_step, region.
        """
        prompts = _expand_prompts(prompt, num_images_per_prompt)
        video = _frames(frames) > 1
        task = self.model.generate_video if video else self.model.generate_image
        extra = {"frames": frames} if video else {}
        return self._run(task, prompts, generator, seed, output_type, on_patch, height=height, width=width,
                         order=order, temperature=temperature, top_k=top_k, top_p=top_p,
                         guidance=guidance_scale, **extra, **kwargs)

    def outpaint(self, image, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0, prompt=None,
                 num_images_per_prompt: int = 1, generator=None, seed=None, output_type: str = "pil",
                 temperature: float = D.temperature, top_k: int = D.top_k, top_p: float = D.top_p, guidance_scale: float = D.guidance,
                 on_patch=None, **kwargs) -> PipelineOutput:
        """Extend `image` (PIL, path, uint8 array) by the given pixels per side; output .images."""
        prompts = _expand_prompts(prompt, num_images_per_prompt)
        return self._run(self.model.outpaint, prompts, generator, seed, output_type, on_patch, image=image,
                         left=left, right=right, top=top, bottom=bottom, temperature=temperature, top_k=top_k,
                         top_p=top_p, guidance=guidance_scale, **kwargs)

    def animate(self, image, frames: int = 8, prompt=None, num_images_per_prompt: int = 1, generator=None,
                seed=None, output_type: str = "pil", temperature: float = D.temperature, top_k: int = D.top_k, top_p: float = D.top_p,
                guidance_scale: float = D.guidance, on_patch=None, **kwargs) -> PipelineOutput:
        """Animate `image` (it becomes frame 0); output .frames."""
        prompts = _expand_prompts(prompt, num_images_per_prompt)
        return self._run(self.model.animate, prompts, generator, seed, output_type, on_patch, image=image,
                         frames=frames, temperature=temperature, top_k=top_k, top_p=top_p,
                         guidance=guidance_scale, **kwargs)

    def _run(self, task, prompts, generator, seed, output_type, on_patch, **kw) -> PipelineOutput:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if "batch" in kw or "progress" in kw:
            raise TypeError("the pipeline sets batch (prompts x num_images_per_prompt) and the progress bar "
                            "(set_progress_bar_config) itself")
        if on_patch is not None and not callable(on_patch):
            raise TypeError(f"on_patch must be a callable taking a PatchEvent, got {type(on_patch).__name__}")
        seed = resolve_seed(generator, seed)
        bar = None

        def hook(event):
            nonlocal bar
            if bar is None:
                from tqdm.auto import tqdm
                bar = tqdm(total=event.total, **{"desc": "patches", "unit": "patch", **self._progress})
            bar.update(event.done - bar.n)
            if on_patch is not None:
                on_patch(event)
        try:
            r = task(prompt=prompts, batch=len(prompts), seed=seed, on_patch=hook, **kw)
        finally:
            if bar is not None:
                bar.close()
        out = _to_output(r.pixels, output_type)
        video = r.is_video
        return PipelineOutput(images=None if video else out, frames=out if video else None, seed=seed,
                              stats=r.stats, tokens=r.tokens)


def _frames(frames):
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a whole number >= 1, got {frames!r}")
    return int(frames)

