"""Checkpoints: safetensors only (never pickle), self-describing, checked on load, written atomically.

Metadata: {"format": "nuwa-fast", "format_version": "1", "config": <NuwaConfig JSON>, ...extra}.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import PRESETS, NuwaConfig, preset

FORMAT = "nuwa-fast"
FORMAT_VERSION = "1"
WEIGHTS_DIR = Path(__file__).parent / "weights"


class CheckpointError(ValueError):
    pass


def save_checkpoint(model, path, dtype=None, extra: dict | None = None) -> None:
    """Write `model` to `path` atomically (temp file + rename): a crash keeps the previous file."""
    state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
             .contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.cfg.to_json()}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_file(state, path, meta)


def atomic_save_file(tensors: dict, path: Path, metadata: dict) -> None:
    """safetensors to a temporary name, fsync, rename: a crash leaves the previous file intact."""
    from safetensors.torch import save_file
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_metadata(path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {e}. "
                              f"Re-download or re-save it with nuwa_fast.checkpoint.save_checkpoint") from e


def load_checkpoint(path, device="cpu", dtype=None):
    """Build a NuwaModel from a checkpoint, checking format, config, keys, shapes and dtypes."""
    from safetensors.torch import load_file
    from .model import NuwaModel
    from . import api  # noqa: F401  (binds the task methods)
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a nuwa-fast checkpoint (no "
                              f"'format: {FORMAT}' metadata); save it with nuwa_fast.checkpoint.save_checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('format_version')!r}; this "
                              f"nuwa-fast reads version {FORMAT_VERSION}: upgrade nuwa-fast")
    try:
        cfg = NuwaConfig.from_json(meta["config"])
    except Exception as e:
        raise CheckpointError(f"{path}: the config in the metadata is invalid: {e}") from e
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the tensors (truncated or corrupt?): {e}") from e
    model = NuwaModel(cfg)
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing) for its config; "
                              f"the file does not match its own config (re-save it)")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected); "
                              f"it was written for a different model version")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(state[k].shape)}, the config needs "
                                  f"{tuple(v.shape)}")
        if state[k].is_floating_point() != v.is_floating_point():
            raise CheckpointError(f"{path}: tensor {k!r} has dtype {state[k].dtype}, expected a "
                                  f"{'floating' if v.is_floating_point() else 'integer'} tensor")
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            raise CheckpointError(f"{path}: tensor {k!r} holds NaN or inf values; the checkpoint is corrupt")
    model.load_state_dict({k: state[k].to(want[k].dtype) for k in want})
    model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def bundled_path(name: str) -> Path | None:
    p = WEIGHTS_DIR / f"{name}.safetensors"
    return p if p.is_file() else None


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_dtype(dtype):
    """None, a torch floating dtype or its name ("float32", "bfloat16", "bf16", "float16", "fp16")."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"dtype must be a floating torch dtype or one of {sorted(DTYPES)}, got {dtype!r}")


def load(path_or_preset="tiny", device="cpu", dtype=None, seed: int = 0, torch_dtype=None):
    """A checkpoint path, or a preset name ("tiny": the bundled trained weights when present; any preset
    without bundled weights gives a randomly initialised model, seeded by `seed`).

    `dtype` (or its diffusers-style alias `torch_dtype`): the weights' dtype, e.g. torch.bfloat16 or
    "bfloat16" (default: as stored, float32 for the bundled model)."""
    from .model import NuwaModel
    from . import api  # noqa: F401
    if dtype is not None and torch_dtype is not None and resolve_dtype(dtype) != resolve_dtype(torch_dtype):
        raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; give one of them")
    dtype = resolve_dtype(dtype if dtype is not None else torch_dtype)
    if isinstance(path_or_preset, NuwaConfig):
        cfg = path_or_preset
    elif isinstance(path_or_preset, (str, os.PathLike)) and os.path.exists(path_or_preset):
        if os.path.isdir(path_or_preset):
            raise CheckpointError(f"{path_or_preset} is a folder; pass the .safetensors file inside it")
        return load_checkpoint(path_or_preset, device, dtype)
    elif isinstance(path_or_preset, str) and path_or_preset in PRESETS:
        bp = bundled_path(path_or_preset)
        if bp is not None:
            return load_checkpoint(bp, device, dtype)
        cfg = preset(path_or_preset)
    else:
        raise CheckpointError(f"{path_or_preset!r} is neither an existing checkpoint file nor a preset; "
                              f"presets: {sorted(PRESETS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NuwaModel(cfg)
    model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
