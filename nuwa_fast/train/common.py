"""Shared training plumbing: distributed setup, LR schedule, resumable state, metrics log.

Resumable state of a run folder `out/`: one file, written atomically.
  last.safetensors   the model (nuwa_fast.checkpoint format; loadable by nuwa_fast.load) plus, under
                     "train/", the optimizer tensors, extra modules, loop tensors and RNG state; its
                     metadata names the step ("train_step") and holds JSON: param groups, the run's
                     arguments and the data state.
It is written to a unique temporary name, fsynced and renamed over the previous one, so the previous
checkpoint stays complete until the new one is; a killed writer's temporary is removed when the
next run starts. Runs written by earlier versions (last.safetensors + last.state.safetensors, the
same step in both) resume too, and become one file at their next save. Nothing is pickled.

Every batch is a pure function of (seed, step, rank), so the data-loader state is the step.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from ..checkpoint import TRAIN_PREFIX, UNREADABLE, atomic_save_file
from ..errors import BadFile

STATE_FORMAT = "nuwa-fast-train-state"
STATE_VERSION = "2"                 # one file; version 1 was the separate <name>.state.safetensors


class TrainStateError(BadFile):
    """A run folder whose checkpoint cannot be resumed; the message says what to do instead."""


# ---- distributed ---------------------------------------------------------------------------------
def setup_distributed(device: str | None = None):
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); returns (rank, world, device).

    nccl on GPU, gloo on CPU. A single process needs no process group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def all_reduce_grads(module):
    """Average the gradients of a module that is not wrapped in DDP (e.g. the GAN discriminator)."""
    if not dist.is_initialized():
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def wrap_ddp(module, dev):
    if not dist.is_initialized():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(module, device_ids=[dev.index] if dev.type == "cuda" else None)


def cpu_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags)."""
    from ..cpu_ext import _cpu_flags
    return bool(set(_cpu_flags().split()) & {"avx512_bf16", "amx_bf16"})


_warned_bf16 = []


def autocast(dev, cpu_bf16: bool = False):
    """bf16 autocast on GPU (fp16 where bf16 is not supported); on CPU fp32, or bf16 when asked and the
    CPU has native bf16 (2.4x faster matmuls with AVX512-BF16: 64 vs 27 GFLOPS per core measured on
    AMD EPYC). Without it bf16 is emulated and slower than fp32: fp32 runs, with one warning."""
    if dev.type != "cuda":
        if cpu_bf16 and not cpu_native_bf16():
            if not _warned_bf16:
                _warned_bf16.append(True)
                import warnings
                warnings.warn("--cpu-bf16: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag), where "
                              "bf16 is slower than fp32; training runs in fp32", RuntimeWarning, stacklevel=2)
            cpu_bf16 = False
        return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16 else nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# ---- schedule ------------------------------------------------------------------------------------
def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine down to floor * peak at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(opt, lr: float):
    """Set every group's LR to lr x the group's lr_scale (1 unless make_adamw gave it one)."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def make_adamw(params, lr, weight_decay=0.01, betas=(0.9, 0.95), fast=(), fast_scale: float = 1.0):
    """AdamW with no decay on biases, norms, embeddings-like vectors (ndim < 2).

    `fast`: parameters that get fast_scale x the LR and no decay. Adam moves a parameter by about
    the LR per step whatever its gradient, so a table of additive attention biases (the ADC table,
    whose useful values are several units) would need tens of thousands of steps at a weight LR.
    """
    fast_ids = {id(p) for p in fast}
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2 and id(p) not in fast_ids]
    no_decay = [p for p in params if p.ndim < 2 and id(p) not in fast_ids]
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    fast = [p for p in params if id(p) in fast_ids]
    if fast:
        groups.append({"params": fast, "weight_decay": 0.0, "lr_scale": float(fast_scale)})
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


# ---- resumable state -----------------------------------------------------------------------------
def save_train_state(out, model, opt, step: int, args: dict, data_state: dict | None = None,
                     name: str = "last", modules: dict | None = None, extra_tensors: dict | None = None):
    """Write out/<name>.safetensors: the model and the training state, one atomic file.

    modules: extra trained modules that are not part of the model (a GAN discriminator), kept as
    "train/mod.<name>.<param>". extra_tensors: loop state (e.g. code usage since the last restart),
    returned by load_train_state in data_state["tensors"].
    """
    from ..checkpoint import FORMAT, FORMAT_VERSION, clean_stale
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale(out, f"{name}.safetensors")
    sd = opt.state_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    T = TRAIN_PREFIX
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{T}opt.{pid}.{k}"] = v.detach().contiguous().cpu() if torch.is_tensor(v) \
                else torch.tensor(v, dtype=torch.float64)
    for mname, mod in (modules or {}).items():
        for k, v in mod.state_dict().items():
            tensors[f"{T}mod.{mname}.{k}"] = v.detach().contiguous().cpu()
    for k, v in (extra_tensors or {}).items():
        tensors[f"{T}extra.{k}"] = v.detach().contiguous().cpu()
    tensors[f"{T}rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors[f"{T}rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.cfg.to_json(),
            "train_step": str(step), "train_state": STATE_VERSION, "train_format": STATE_FORMAT,
            "args": json.dumps(args, sort_keys=True), "param_groups": json.dumps(sd["param_groups"]),
            "data_state": json.dumps(data_state or {})}
    atomic_save_file(tensors, out / f"{name}.safetensors", meta)
    old = out / f"{name}.state.safetensors"           # an earlier version's separate state: now stale
    if old.exists():
        old.unlink()


def checkpoint_step(out, name: str = "last") -> int | None:
    """The step of the complete checkpoint in `out`, None when there is none at all.

    Raises TrainStateError when `out` holds checkpoint files that cannot be resumed.
    """
    from ..checkpoint import clean_stale, read_metadata
    out = Path(out)
    wpath, spath = out / f"{name}.safetensors", out / f"{name}.state.safetensors"
    if out.is_dir():
        clean_stale(out, wpath.name)
        clean_stale(out, spath.name)
    if not wpath.exists():
        if spath.exists():
            raise TrainStateError(f"{out} holds {spath.name} but not {wpath.name} (the weights); this run cannot "
                                  f"be resumed: start again with a new --out")
        return None
    meta = _metadata(wpath, read_metadata)
    if meta.get("train_state"):
        if meta.get("train_state") != STATE_VERSION:
            raise TrainStateError(f"{wpath} holds training state version {meta['train_state']!r}; this "
                                  f"nuwa-fast resumes version {STATE_VERSION}: upgrade nuwa-fast")
        return _int_meta(wpath, meta, "train_step")
    if not spath.exists():
        raise TrainStateError(f"{wpath} has weights but no training state (optimizer, RNG): it cannot be "
                              f"resumed exactly; to continue from these weights with a fresh optimizer, "
                              f"start a new --out with --init {wpath}")
    smeta = _metadata(spath, read_metadata)
    if smeta.get("format") != STATE_FORMAT:
        raise TrainStateError(f"{spath} is not a nuwa-fast training state file")
    step, wstep = _int_meta(spath, smeta, "step"), _int_meta(wpath, meta, "train_step")
    if wstep != step:
        raise TrainStateError(f"{wpath} is at step {wstep} but {spath.name} at step {step} (a run of an earlier "
                              f"nuwa-fast was stopped between writing the two); the state of step {wstep} is "
                              f"gone, so it cannot be resumed exactly. To continue from the step-{wstep} weights "
                              f"with a fresh optimizer, start a new --out with --init {wpath}")
    return step


def has_checkpoint(out, name: str = "last") -> bool:
    return checkpoint_step(out, name) is not None


def _metadata(path, read_metadata) -> dict:
    try:
        return read_metadata(path)
    except BadFile as e:
        raise TrainStateError(f"{e}; this run cannot be resumed from it: start a new --out (or restore the "
                              f"file)") from None


def _int_meta(path, meta, key) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        raise TrainStateError(f"{path}: metadata {key!r} is missing or not a number; the file is damaged") from None


def load_train_state(out, model, opt, name: str = "last", modules: dict | None = None):
    """Restore model weights, optimizer and RNG from out/; returns (step, args, data_state).

    Also drops the metrics.jsonl rows of steps at or after the checkpoint (the interrupted run logged
    them after its last save; the resumed run logs them again).
    """
    from safetensors import safe_open
    from ..checkpoint import load_checkpoint, read_metadata
    out = Path(out)
    step = checkpoint_step(out, name)
    if step is None:
        raise TrainStateError(f"--resume: {out} has no checkpoint ({name}.safetensors) to resume from; "
                              f"start without --resume")
    wpath, spath = out / f"{name}.safetensors", out / f"{name}.state.safetensors"
    meta = read_metadata(wpath)
    one_file = bool(meta.get("train_state"))
    src, prefix = (wpath, TRAIN_PREFIX) if one_file else (spath, "")
    if not one_file:
        meta = read_metadata(spath)
    try:
        model.load_state_dict(load_checkpoint(wpath).state_dict())
        with safe_open(str(src), framework="pt") as fh:
            tensors = {k[len(prefix):]: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}
        groups = json.loads(meta["param_groups"])
        args, data_state = json.loads(meta["args"]), json.loads(meta["data_state"])
    except TrainStateError:
        raise
    except (*UNREADABLE, KeyError, ValueError) as e:      # truncated file, missing or malformed metadata
        raise TrainStateError(f"{src}: cannot read the training state (truncated or corrupt?): {e}; this run "
                              f"cannot be resumed from it: start a new --out, or --init {wpath} for the "
                              f"weights alone") from e
    state = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name_ = k.split(".", 2)
            state.setdefault(int(pid), {})[name_] = v
    ref = opt.state_dict()
    if len(groups) != len(ref["param_groups"]):
        raise TrainStateError(f"--resume: {src} holds {len(groups)} optimizer groups, this run has "
                              f"{len(ref['param_groups'])} (it was written by another nuwa-fast version or "
                              f"options); start a new --out, or --init {wpath} for the weights alone")
    for pid, st in state.items():        # keep the param's device; Adam's `step` stays a cpu scalar
        for k, v in st.items():
            if k != "step":
                st[k] = v.to(_param_by_id(opt, pid).device)
    ref["state"] = state
    ref["param_groups"] = [dict(g, params=r["params"]) for g, r in zip(groups, ref["param_groups"])]
    opt.load_state_dict(ref)
    for mname, mod in (modules or {}).items():
        pre = f"mod.{mname}."
        mod.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    data_state["tensors"] = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    if is_main():
        trim_metrics(out / "metrics.jsonl", step)
    return step, args, data_state


def trim_metrics(path, step: int):
    """Keep the rows of steps before `step` (and evaluations at `step`); rewrite atomically."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue                                       # a line cut by the kill
        s = row.get("step", -1)
        if s < step or ("eval" in row and s == step):
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)


def _param_by_id(opt, pid):
    i = 0
    for g in opt.param_groups:
        for p in g["params"]:
            if i == pid:
                return p
            i += 1
    raise KeyError(pid)


# ---- metrics -------------------------------------------------------------------------------------
class MetricsLog:
    """Append-only JSONL: one object per logged step (rank 0 only)."""

    def __init__(self, path, enabled=True):
        self.path = Path(path)
        self.enabled = enabled
        self.t0 = time.time()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **row):
        if not self.enabled:
            return
        row = {"time": round(time.time() - self.t0, 2), **{k: _plain(v) for k, v in row.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def _plain(v):
    if torch.is_tensor(v):
        v = v.item()
    return round(v, 6) if isinstance(v, float) else v


def step_generator(seed: int, step: int, rank: int, salt: int = 0) -> torch.Generator:
    """The RNG of one (step, rank): batches, orders and caption drops never depend on history."""
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + step) * 1009 + rank) * 31 + salt)
    return g
