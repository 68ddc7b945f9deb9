"""nuwa-fast: NUWA-Infinity inference engine (autoregression over autoregression, any size and duration).

    import nuwa_fast
    model = nuwa_fast.load("tiny")              # the bundled model (or a checkpoint path)
    result = model.generate_image("a lake at sunset", height=256, width=1536, order="right")
    result.save("panorama.png")

    pipe = nuwa_fast.Pipeline.from_pretrained("tiny")          # the same, diffusers-shaped
    pipe("a lake at sunset", height=256, width=1536).images[0]
"""
__version__ = "0.1.0"

from . import adc, ncp, ops  # noqa: E402,F401
from .checkpoint import load, load_checkpoint, save_checkpoint  # noqa: E402,F401
from .config import PRESETS, NuwaConfig, TextConfig, VQConfig  # noqa: E402,F401
from .generation import GenerationConfig  # noqa: E402,F401
from .images import Result  # noqa: E402,F401

from .layers import DenseKV, NCPAttention, PagedKV  # noqa: E402,F401
from .pipeline import Pipeline, PipelineOutput  # noqa: E402,F401
