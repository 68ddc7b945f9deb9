"""`nuwa-fast train vq|nuwa ...` and `nuwa-fast eval ...`.

    nuwa-fast train vq   --preset tiny --data landscape:0.85,skimage:0.15 --steps 1500 --batch 8 --out runs/vq
    nuwa-fast train cache --vq runs/vq/last.safetensors --data landscape --images 200 --size 256x512 --out runs/cache.safetensors
    nuwa-fast train nuwa --preset tiny --vq runs/vq/last.safetensors [--cache runs/cache.safetensors] --steps 1000 --batch 8 --out runs/nuwa
    torchrun --nproc_per_node 2 -m nuwa_fast.train.cli train nuwa ...      (DDP: nccl on GPU, gloo on CPU)
    nuwa-fast eval runs/nuwa/last.safetensors --json eval.json

A killed run continues where its last checkpoint left off with the same command plus --resume.
Every argument, the output folder and the input files are checked before any work; exit codes as
`nuwa-fast` (nuwa_fast.errors): 2 bad argument, 3 bad file, 4 does not fit, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys

from .options import TrainOptions


def _count(name, minimum=1):
    def parse(v):
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {v!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {n}")
        return n
    return parse


def _positive_float(name):
    def parse(v):
        import math
        try:
            x = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {v!r}") from None
        if not math.isfinite(x) or x <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a finite number > 0, got {v!r}")
        return x
    return parse


def _hxw(name, what="pixels"):
    def parse(v):
        try:
            h, w = (int(x) for x in v.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be HxW in {what}, e.g. 4x3, got {v!r}") from None
        if h < 1 or w < 1:
            raise argparse.ArgumentTypeError(f"{name} must be HxW with H, W >= 1, got {v!r}")
        return h, w
    return parse


def _chains(v):
    out = []
    for part in v.split(","):
        try:
            h, w, *wt = part.split("x")
            c = (int(h), int(w), float(wt[0]) if wt else 1.0)
            if len(wt) > 1 or c[0] < 1 or c[1] < 1 or not c[2] > 0:
                raise ValueError
            out.append(c)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--chains: expected HxW[xweight],... (patches >= 1, weight > 0), "
                                             f"got {v!r}") from None
    return tuple(out)


def _sizes(v):
    try:
        sizes = tuple(int(x) for x in v.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes: expected comma-separated pixel sizes >= 1, got {v!r}")
    return sizes


DATA_HELP = """\
data sources (--data; nothing is downloaded):
  landscape            procedural landscapes rendered on the fly, captioned from what they show
                         --data landscape
  skimage              the photographs scikit-image ships (pip install scikit-image), random crops
                         --data skimage
  folder:PATH          your own images and videos: PATH/*.png|jpg|jpeg|webp|bmp, videos (.gif, and
                       .mp4 & co. when imageio can read them), or a subfolder of frames per video;
                       captions from a same-named .txt, or PATH/captions.json / captions.jsonl
                       ({"photo.jpg": "a lake at dawn"}); no caption = unconditional
                         --data folder:/data/my_photos
  a mixture            comma-separated sources with relative weights (a folder path may not hold
                       a comma)
                         --data landscape:0.85,skimage:0.15
                         --data landscape:3,folder:/data/my_photos:1

train your own model on your folder (stage 1, then stage 2; add --resume to continue a killed run):
  nuwa-fast train vq --preset tiny --data folder:/data/my_photos --steps 1500 --batch 8 --out runs/vq
  nuwa-fast train nuwa --preset tiny --vq runs/vq/last.safetensors --data folder:/data/my_photos \\
      --steps 2000 --batch 8 --out runs/nuwa
  nuwa-fast generate -c runs/nuwa/last.safetensors --prompt "a lake at dawn" --width 512 -o out/mine.png
"""


def build_parser(prog="nuwa-fast train"):
    ap = argparse.ArgumentParser(prog=prog, description="Train the VQ tokenizer (stage 1) or the NUWA "
                                 "decoder + text encoder (stage 2)", epilog=DATA_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("vq", "nuwa", "cache"),
                    help="vq: stage 1; nuwa: stage 2; cache: tokenise --images wide images once for stage 2 "
                         "(--out is then the .safetensors file)")
    ap.add_argument("--preset", default="tiny", help="config preset (nuwa_fast.config.PRESETS)")
    d = TrainOptions()
    ap.add_argument("--data", default=d.data, help="source mix, e.g. landscape:0.85,skimage:0.15")
    ap.add_argument("--steps", type=_count("--steps"), default=d.steps)
    ap.add_argument("--batch", type=_count("--batch"), default=d.batch, help="per process")
    ap.add_argument("--out", default=d.out)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.* if present")
    ap.add_argument("--stop-at", type=_count("--stop-at", 0), default=0, help="stop (and save) after this step; resume later")
    ap.add_argument("--lr", type=_positive_float("--lr"), default=None, help="peak LR (default: 2e-3 vq, 1e-3 nuwa)")
    ap.add_argument("--warmup", type=_count("--warmup", 0), default=d.warmup)
    ap.add_argument("--seed", type=_count("--seed", 0), default=d.seed)
    ap.add_argument("--save-every", type=_count("--save-every"), default=d.save_every)
    ap.add_argument("--log-every", type=_count("--log-every"), default=d.log_every)
    ap.add_argument("--eval-every", type=_count("--eval-every", -1), default=d.eval_every,
                    help="0: only at the end; -1: never")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=_count("--threads", 0), default=0)
    ap.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU too (AVX512-BF16/AMX CPUs)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--bundle", default=None, help="also write an fp16 checkpoint here at every save")
    ap.add_argument("--sizes", type=_sizes, default=d.sizes, help="vq: crop sides, e.g. 64,96,128")
    ap.add_argument("--gan", action="store_true", help="vq: add a patch-GAN after --gan-start steps")
    ap.add_argument("--decoder-only", action="store_true",
                    help="vq: fine-tune the pixel decoder only (with --init); tokens stay the same")
    ap.add_argument("--gan-start", type=_count("--gan-start", 0), default=d.gan_start)
    ap.add_argument("--gan-weight", type=float, default=d.gan_weight, help="vq: weight of the generator's hinge term")
    ap.add_argument("--gan-adaptive", action="store_true",
                    help="vq: scale --gan-weight by VQGAN's gradient balance at the decoder's last layer")
    ap.add_argument("--commit-weight", type=float, default=d.commit_weight)
    ap.add_argument("--restart-every", type=_count("--restart-every", 0), default=d.restart_every)
    ap.add_argument("--vq", default=None, help="nuwa: checkpoint with the trained VQ (stage 1 output)")
    ap.add_argument("--cache", default=None, help="nuwa: token cache (nuwa-fast train cache ...) to cut chains from")
    ap.add_argument("--images", type=_count("--images"), default=200, help="cache: number of images")
    ap.add_argument("--size", type=_hxw("--size"), default=(256, 512), help="cache: image HxW in pixels")
    ap.add_argument("--frames", type=_count("--frames"), default=1,
                    help="cache: frames per clip (> 1: moving landscape clips)")
    ap.add_argument("--init", default=None, help="nuwa: checkpoint to start the decoder and text encoder from; vq: checkpoint to start the VQ from")
    ap.add_argument("--chains", type=_chains, default=d.chains,
                    help="nuwa: patch-chain shapes HxW[xweight], e.g. 4x3x0.5,2x4x0.5")
    ap.add_argument("--mode", choices=("parallel", "sequential"), default=d.mode,
                    help="nuwa: teacher-forced block mask (fast) or render-and-optimize (the paper)")
    ap.add_argument("--caption-drop", type=float, default=d.caption_drop)
    ap.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    ap.add_argument("--edge-weight", type=_edge_weight, default=d.edge_weight,
                    help="nuwa: loss weight (>= 1) of the tokens on a patch edge that touches an earlier patch of "
                         "the order (the tokens a seam runs along); the rest weigh 1")
    ap.add_argument("--bias-lr-scale", type=float, default=d.bias_lr_scale,
                    help="nuwa: LR multiplier of the ADC bias table (additive attention biases need large moves)")
    ap.add_argument("--phrasing", type=float, default=d.phrasing,
                    help="nuwa: probability of a fresh plain-English phrasing of a cached image's attributes as its caption")
    ap.add_argument("--outward", type=float, default=d.outward,
                    help="nuwa: probability per step of an 'outward' order from a random region (outpainting)")
    ap.add_argument("--video-cache", default=None, help="nuwa: token cache of clips (train cache --frames 3 ...)")
    ap.add_argument("--video", type=float, default=d.video, help="nuwa: probability per step of a clip chain")
    ap.add_argument("--video-chain", type=_video_chain, default=d.video_chain,
                    help="nuwa: clip chain FxHxW (frames x patch rows x patch cols), e.g. 2x4x2")
    return ap


def _edge_weight(v):
    try:
        w = float(v)
        if not w >= 1.0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--edge-weight: expected a number >= 1 (1 = every token alike), got {v!r}") from None
    return w


def _video_chain(v):
    try:
        f, h, w = (int(x) for x in v.lower().split("x"))
        if min(f, h, w) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--video-chain: expected FxHxW (positive ints), got {v!r}") from None
    return (f, h, w)


def options_from_args(a) -> TrainOptions:
    lr = a.lr if a.lr is not None else (2e-3 if a.stage == "vq" else 1e-3)
    return TrainOptions(out=a.out, steps=a.steps, batch=a.batch, lr=lr, warmup=a.warmup, seed=a.seed,
                        data=a.data, save_every=a.save_every, log_every=a.log_every, eval_every=a.eval_every,
                        resume=a.resume, stop_at=a.stop_at, device=a.device, threads=a.threads, cpu_bf16=a.cpu_bf16, progress=not a.no_progress,
                        bundle=a.bundle, sizes=a.sizes, gan=a.gan, decoder_only=a.decoder_only, gan_start=a.gan_start, gan_weight=a.gan_weight, gan_adaptive=a.gan_adaptive,
                        restart_every=a.restart_every, commit_weight=a.commit_weight, vq=a.vq, cache=a.cache, init=a.init, chains=a.chains, mode=a.mode,
                        caption_drop=a.caption_drop, label_smoothing=a.label_smoothing, edge_weight=a.edge_weight,
                        bias_lr_scale=a.bias_lr_scale, phrasing=a.phrasing, outward=a.outward,
                        video_cache=a.video_cache, video=a.video, video_chain=a.video_chain)


def main(argv=None):
    """`nuwa-fast train ...`; argv excludes the leading "train"."""
    from ..errors import run_command
    state = {}
    return run_command(lambda av: _train(av, state), argv, lambda e: _what_was_written(state))


def _train(argv, state):
    a = build_parser().parse_args(argv)
    from ..config import preset
    cfg = preset(a.preset)
    opt = options_from_args(a)
    _check_inputs(a)
    state["out"] = a.out if a.stage != "cache" else None
    from ..runtime import keep_freed_memory
    keep_freed_memory()
    if a.stage == "cache":
        import torch
        from ..checkpoint import load_checkpoint
        from .cache import build_cache
        if a.threads:
            torch.set_num_threads(a.threads)
        h, w = a.size
        build_cache(load_checkpoint(a.vq).vq, a.data, a.images, h, w, a.out, seed=a.seed, frames=a.frames)
        return 0
    if a.stage == "vq":
        from .vq_stage import train_vq
        train_vq(cfg, opt)
    else:
        from .nuwa_stage import train_nuwa
        train_nuwa(cfg, opt)
    return 0


def _check_inputs(a):
    """Everything that can be checked before the work: the output, the inputs, the data spec."""
    import os
    from ..checkpoint import check_device
    from ..errors import BadArgument
    from . import common, sources
    if a.device:
        check_device(a.device)
    if a.stage == "cache":
        if not a.vq:
            raise BadArgument("nuwa-fast train cache: pass --vq runs/vq/last.safetensors (the stage-1 VQ)")
        if os.path.isdir(a.out):
            raise BadArgument(f"--out {a.out} is a directory; `train cache` writes one file: give a "
                              f"path like {os.path.join(a.out, 'cache.safetensors')}")
        if os.path.exists(a.out):
            raise BadArgument(f"--out {a.out} already exists; delete it or choose another path")
        _check_parent(a.out)
    else:
        if a.stage == "nuwa" and not a.vq and not a.init and not a.resume:
            raise BadArgument("nuwa-fast train nuwa: pass --vq runs/vq/last.safetensors (the stage-1 VQ)")
        if os.path.exists(a.out) and not os.path.isdir(a.out):
            raise BadArgument(f"--out {a.out} is a file; a training run writes a folder: choose another --out")
        _check_parent(os.path.join(a.out, "last.safetensors"))
        step = common.checkpoint_step(a.out) if os.path.isdir(a.out) else None
        if step is not None and not a.resume:
            raise BadArgument(f"--out {a.out} already holds a checkpoint at step {step}: add --resume to continue "
                              f"it, or choose a new --out (nothing was changed)")
        if step is None and a.resume:
            print(f"--resume: {a.out} has no checkpoint yet; starting at step 0", file=sys.stderr)
        if step is not None and step >= a.steps:
            print(f"--resume: {a.out} is already at step {step} of --steps {a.steps}; nothing to train",
                  file=sys.stderr)
    for flag in ("vq", "init"):
        if getattr(a, flag):
            _check_checkpoint(getattr(a, flag), f"--{flag}")
    if a.cache:
        _check_cache(a.cache)
    if a.bundle:
        if os.path.isdir(a.bundle):
            raise BadArgument(f"--bundle {a.bundle} is a directory; give a .safetensors file path")
        _check_parent(a.bundle)
    sources.source(a.data, False)                              # a bad --data spec fails here, not at step 0


def _check_parent(path):
    import os
    from ..errors import BadArgument
    d = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d) or not os.access(d, os.W_OK | os.X_OK):
        raise BadArgument(f"cannot write {path}: {d} is not a writable directory")


def _check_checkpoint(path, flag):
    import os
    from ..checkpoint import FORMAT, read_metadata
    from ..errors import BadFile
    if not os.path.isfile(path):
        raise BadFile(f"{flag} {path}: no such file" + (" (it is a folder; pass the last.safetensors inside "
                                                        "it)" if os.path.isdir(path) else ""))
    if read_metadata(path).get("format") != FORMAT:
        raise BadFile(f"{flag} {path} is not a nuwa-fast checkpoint")


def _check_cache(path):
    import os
    from safetensors import safe_open
    from ..checkpoint import UNREADABLE
    from ..errors import BadFile
    if not os.path.isfile(path):
        raise BadFile(f"--cache {path}: no such file (make one with `nuwa-fast train cache`)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta, keys = fh.metadata() or {}, list(fh.keys())
            shape = fh.get_slice("tokens").get_shape() if "tokens" in keys else None
    except UNREADABLE as e:
        raise BadFile(f"--cache {path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    if shape is None or "captions" not in meta:
        what = "a model checkpoint" if meta.get("format") == "nuwa-fast" else "something else"
        raise BadFile(f"--cache {path} is {what}, not a token cache (tokens + captions); make one with "
                      f"`nuwa-fast train cache --vq ... --out {path}` or pass the cache's path")
    if len(shape) != 3:
        raise BadFile(f"--cache {path}: tokens must be [n, h, w], got shape {tuple(shape)}")


def _write_text(text, path):
    with open(path, "w") as fh:
        fh.write(text)


def _what_was_written(state) -> str:
    from . import common
    out = state.get("out")
    if not out:
        return "nothing was written (the cache is written at the end)"
    from ..checkpoint import UNREADABLE, CheckpointError
    try:
        step = common.checkpoint_step(out)
    except (common.TrainStateError, CheckpointError, *UNREADABLE):    # nothing resumable there: say so below
        step = None
    if step is None:
        return f"no checkpoint was written to {out}"
    return (f"the last complete checkpoint in {out} is at step {step}; continue with the same command "
            f"plus --resume")


def build_eval_parser(prog="nuwa-fast eval"):
    ap = argparse.ArgumentParser(prog=prog, description="Held-out VQ PSNR / codebook usage and bits per "
                                 "token with the trained NCP extent vs no context, per order")
    ap.add_argument("checkpoint", nargs="?", default="tiny", help="checkpoint path or preset (default: bundled tiny)")
    ap.add_argument("--data", default="landscape:0.85,skimage:0.15")
    ap.add_argument("--samples", type=_count("--samples"), default=16, help="held-out patch chains per order")
    ap.add_argument("--chain", type=_hxw("--chain", "patches"), default=(4, 3),
                    help="patch chain HxW of the held-out images")
    ap.add_argument("--vq-samples", type=_count("--vq-samples"), default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the report here")
    return ap


def eval(argv=None):  # noqa: A001  (the `nuwa-fast eval` entry point)
    """`nuwa-fast eval ...`: prints (and optionally writes) a JSON report."""
    from ..errors import run_command
    return run_command(_eval, argv, lambda e: "nothing was written")


def _eval(argv):
    import os
    from ..checkpoint import check_device
    from ..errors import BadArgument
    from . import sources
    a = build_eval_parser().parse_args(argv)
    check_device(a.device)
    if a.json:
        if os.path.isdir(a.json):
            raise BadArgument(f"--json {a.json} is a directory; give a file path, e.g. {os.path.join(a.json, 'eval.json')}")
        _check_parent(a.json)
    sources.source(a.data, True)
    from .evaluate import evaluate
    rep = evaluate(a.checkpoint, data=a.data, samples=a.samples, chain=a.chain, vq_samples=a.vq_samples,
                   device=a.device)
    text = json.dumps(rep, indent=2)
    print(text)
    if a.json:
        from ..output import write_all
        write_all([text + "\n"], [a.json], _write_text)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "train":
        sys.exit(main(args[1:]))
    if args and args[0] == "eval":
        sys.exit(eval(args[1:]))
    sys.exit(main(args))
