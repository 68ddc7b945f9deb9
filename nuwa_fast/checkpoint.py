"""Checkpoints: safetensors only (never pickle), self-describing, checked on load, written atomically.

Metadata: {"format": "nuwa-fast", "format_version": "1", "config": <NuwaConfig JSON>, ...extra}.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from .config import PRESETS, NuwaConfig, preset
from .errors import BadArgument, BadFile, DoesNotFit

from safetensors import SafetensorError

UNREADABLE = (OSError, SafetensorError)               # what a truncated, corrupt or missing file raises

FORMAT = "nuwa-fast"
FORMAT_VERSION = "1"
WEIGHTS_DIR = Path(__file__).parent / "weights"


class CheckpointError(BadFile):
    pass


TRAIN_PREFIX = "train/"          # tensors of the training state inside a training checkpoint


def check_device(device) -> torch.device:
    """The device, refused with what to use instead when it does not exist on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BadArgument(f"device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise BadArgument(f"device {device!r}: {why}; use --device cpu (device='cpu')")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise BadArgument(f"device {device!r}: this machine has {n} CUDA device(s), cuda:0 .. cuda:{n - 1}")
    elif dev.type != "cpu":
        raise BadArgument(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def config_tensors(cfg) -> dict:
    """{name: (shape, is_float)} of a model with this config, built on the meta device (no memory)."""
    from .model import NuwaModel
    with torch.device("meta"):
        model = NuwaModel(cfg)
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in model.state_dict().items()}


def _check_fits_memory(path, want: dict, device):
    from .ncp import _human, available_bytes
    need = sum(math.prod(shape) * 4 for shape, _ in want.values())
    avail = available_bytes(device)
    if need > avail:
        raise DoesNotFit(f"{path}: its config describes a model of {_human(need)} (fp32), but {_human(avail)} is "
                         f"available on {device}; the config (or the file) is wrong, or use a bigger machine")


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
    """safetensors to a unique temporary name, fsync, rename, fsync the folder: a crash (or a full
    disk) leaves the previous file intact; a killed writer's temporary is removed by clean_stale."""
    import safetensors.torch as st
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{os.urandom(4).hex()}")
    try:
        st.save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except UNREADABLE as e:                             # safetensors reports a full disk as "(os error 28)"
        import errno
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or \
                any(f"os error {c}" in str(e) for c in (errno.ENOSPC, errno.EDQUOT)):
            raise DoesNotFit(f"no space left on the device while writing {path}; the previous {path.name} (if "
                             f"any) is unchanged: free some space and write it again") from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_dir(d) -> None:
    try:
        fd = os.open(str(d), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_stale(folder, name: str) -> list[str]:
    """Remove temporaries `.<name>.tmp<pid>[-<random>]` whose writing process is gone."""
    import re
    removed = []
    pat = re.compile(rf"^\.{re.escape(name)}\.tmp(\d+)(-[0-9a-f]+)?$")
    for p in Path(folder).glob(f".{name}.tmp*"):
        m = pat.match(p.name)
        if not m or _alive(int(m.group(1))):
            continue
        try:
            p.unlink()
            removed.append(str(p))
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_metadata(path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except UNREADABLE as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {e}. "
                              f"Re-download or re-save it with nuwa_fast.checkpoint.save_checkpoint") from e


def load_checkpoint(path, device="cpu", dtype=None):
    """Build a NuwaModel from a checkpoint, checking, in this order and before allocating the model:
    format, config (field bounds, then its size against the memory available), every tensor's name,
    shape and dtype from the file's header; then the values (finite)."""
    from safetensors import safe_open
    from .model import NuwaModel, upgrade_key
    path = Path(path)
    dev = check_device(device)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a nuwa-fast checkpoint (no "
                              f"'format: {FORMAT}' metadata); save it with nuwa_fast.checkpoint.save_checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('format_version')!r}; this "
                              f"nuwa-fast reads version {FORMAT_VERSION}: upgrade nuwa-fast")
    try:
        cfg = NuwaConfig.from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as e:    # no config, not JSON, unknown or out-of-range fields
        raise CheckpointError(f"{path}: the config in the metadata is invalid: {e}") from e
    want = config_tensors(cfg)
    _check_fits_memory(path, want, dev)
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = [k for k in fh.keys() if not (meta.get("train_state") and k.startswith(TRAIN_PREFIX))]
            names = {upgrade_key(k): k for k in keys}                      # today's name -> the file's
            header = {k: (tuple(fh.get_slice(f).get_shape()), fh.get_slice(f).get_dtype()) for k, f in names.items()}
    except UNREADABLE as e:
        raise CheckpointError(f"{path}: cannot read the tensors (truncated or corrupt?): {e}") from e
    missing = sorted(set(want) - set(header))
    unexpected = sorted(set(header) - set(want))
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing) for its config; "
                              f"the file does not match its own config (re-save it)")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected); "
                              f"it was written for a different model version")
    for k, (shape, is_float) in want.items():
        if header[k][0] != shape:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {header[k][0]}, the config needs {shape}")
        if header[k][1].startswith(("F", "BF")) != is_float:
            raise CheckpointError(f"{path}: tensor {k!r} has dtype {header[k][1]}, expected a "
                                  f"{'floating' if is_float else 'integer'} tensor")
    try:
        with safe_open(str(path), framework="pt") as fh:
            state = {k: fh.get_tensor(names[k]) for k in want}
    except UNREADABLE as e:
        raise CheckpointError(f"{path}: cannot read the tensors (truncated or corrupt?): {e}") from e
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: tensor {k!r} holds NaN or inf values; the checkpoint is corrupt")
    model = NuwaModel(cfg)
    ref = model.state_dict()
    model.load_state_dict({k: state[k].to(ref[k].dtype) for k in ref})
    model.eval()
    return model.to(device=dev, dtype=dtype) if dtype is not None else model.to(dev)


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
    device = check_device(device)
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
