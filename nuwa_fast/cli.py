"""`nuwa-fast` command line: generate, outpaint, animate, video, info, train, eval, bench, profile.

    nuwa-fast generate --prompt "a snowy mountain range at sunset" --width 1536 --height 256 -o pano.png
    nuwa-fast outpaint photo.png --right 256 -o wider.png
    nuwa-fast animate photo.png --frames 8 -o clip.gif
    nuwa-fast video --prompt "clouds drift over green hills" --frames 8 -o clip.gif
"""
from __future__ import annotations

import argparse
import json
import sys


def _int(name):
    def parse(v):
        try:
            return int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {v!r}") from None
    return parse


def _float(v):
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    return x


def _seed(v):
    from .sampling import check_seed
    try:
        return check_seed(int(v), "--seed")
    except ValueError as e:
        msg = str(e) if v.strip().lstrip("+-").isdigit() else f"--seed must be a whole number, got {v!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _extent(v):
    try:
        e = tuple(int(x) for x in v.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--extent must be e_t,e_h,e_w (e.g. 0,2,2), got {v!r}") from None
    if len(e) != 3:
        raise argparse.ArgumentTypeError(f"--extent must have three values e_t,e_h,e_w, got {v!r}")
    return e


def _common(sp, video=False, size=True):
    from .generation import GenerationConfig
    D = GenerationConfig()                                  # the one set of defaults (API, pipeline, CLI)
    sp.add_argument("--checkpoint", "-c", default="tiny", help="checkpoint path or preset (default: bundled tiny)")
    sp.add_argument("--prompt", "-p", default=None, help="text prompt (empty: unconditional)")
    if size:
        sp.add_argument("--height", type=_int("--height"), default=256, help="pixels (any size)")
        sp.add_argument("--width", type=_int("--width"), default=256, help="pixels (any size)")
    if video:
        sp.add_argument("--frames", type=_int("--frames"), default=8)
        sp.add_argument("--fps", type=_int("--fps"), default=8)
    sp.add_argument("--order", default=None, help="down | right | up | left | outward")
    sp.add_argument("--seed", type=_seed, default=0, help="any whole number in [0, 2**64)")
    sp.add_argument("--batch", type=_int("--batch"), default=1, help="samples generated in lockstep")
    sp.add_argument("--temperature", type=_float, default=D.temperature)
    sp.add_argument("--top-k", type=_int("--top-k"), default=D.top_k, help="0 = off")
    sp.add_argument("--top-p", type=_float, default=D.top_p)
    sp.add_argument("--guidance", type=_float, default=D.guidance, help="classifier-free guidance scale (1 = off)")
    sp.add_argument("--extent", type=_extent, default=None, help="NCP extent e_t,e_h,e_w (<= the checkpoint's)")
    sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    sp.add_argument("--backend", default=None, help="torch | triton | cuda (default: best for the device)")
    sp.add_argument("--schedule", default="waves", choices=["waves", "sequential"],
                    help="waves: every patch whose context is complete at once (default); sequential: one "
                         "patch at a time (the reference). Same tokens either way")
    sp.add_argument("--max-lanes", type=_int("--max-lanes"), default=None,
                    help="most patches decoded at once with --schedule waves (default: as memory allows)")
    sp.add_argument("--out", "-o", required=True, help="output file (.png for images, .gif/.mp4 for videos)")
    sp.add_argument("--overwrite", action="store_true", help="replace existing output files")
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _speed(sp)


def _speed(sp):
    g = sp.add_argument_group("speed")
    g.add_argument("--threads", type=_int("--threads"), default=None,
                   help="CPU threads for torch (default: the cores this process may use)")
    g.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights and compute dtype (default: as stored, float32)")
    g.add_argument("--attention", default=None, choices=("paged", "gathered", "sdpa", "flex", "fused"),
                   help="where attention reads its context (default: gathered on torch, paged on triton/cuda)")
    g.add_argument("--cuda-graphs", default=None, choices=("on", "off"),
                   help="capture and replay the per-row step as CUDA graphs (default: on with CUDA)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the per-row step: pays off on large canvases only (a warning says when not)")
    g.add_argument("--preview", type=_int("--preview"), default=None, metavar="N",
                   help="rewrite OUT's .preview.png every N patches while generating (removed at the end)")


def build_parser():
    from . import __version__
    ap = argparse.ArgumentParser(prog="nuwa-fast", description="NUWA-Infinity: images and videos of any size")
    ap.add_argument("--version", action="version", version=f"nuwa-fast {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _common(sub.add_parser("generate", help="unconditional or text-to-image"))
    sp = sub.add_parser("outpaint", help="extend an image on any side")
    sp.add_argument("image")
    for side in ("left", "right", "top", "bottom"):
        sp.add_argument(f"--{side}", type=_int(f"--{side}"), default=0, help="pixels to add")
    _common(sp, size=False)
    sp = sub.add_parser("animate", help="animate an image (it becomes frame 0)")
    sp.add_argument("image")
    _common(sp, video=True, size=False)
    _common(sub.add_parser("video", help="text-to-video"), video=True)
    sp = sub.add_parser("info", help="checkpoint, presets and available backends")
    sp.add_argument("--checkpoint", "-c", default="tiny")
    for name in DELEGATED:
        sub.add_parser(name, help=f"see `nuwa-fast {name} --help`", add_help=False)
    return ap


def generation_config(a, on_patch=None):
    """The GenerationConfig of the task flags (the task's default order when --order is not given)."""
    from .generation import GenerationConfig
    return GenerationConfig(seed=a.seed, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                            guidance=a.guidance, order=a.order or None, extent=a.extent, backend=a.backend,
                            attention=a.attention or None,
                            cuda_graphs=None if not a.cuda_graphs else a.cuda_graphs == "on",
                            compile_step=bool(a.compile), schedule=a.schedule, max_lanes=a.max_lanes,
                            progress=not a.quiet, on_patch=on_patch)


DELEGATED = {"train": ("nuwa_fast.train.cli", "main"), "eval": ("nuwa_fast.train.cli", "eval"),
             "bench": ("nuwa_fast.tools", "bench"), "profile": ("nuwa_fast.tools", "profile")}


def run(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:                   # these parse their own arguments (and --help)
        import importlib
        mod, fn = DELEGATED[argv[0]]
        from .tools import ToolMissing
        try:
            command = getattr(importlib.import_module(mod), fn)
        except ImportError as e:                        # a missing optional dependency
            print(f"error: `nuwa-fast {argv[0]}` is not available in this installation: {e}", file=sys.stderr)
            return 2
        try:
            return command(argv[1:]) or 0
        except ToolMissing as e:                        # bench/profile without benchmarks/ beside the package
            print(f"error: `nuwa-fast {argv[0]}` is not available in this installation: {e}", file=sys.stderr)
            return 2
    a = build_parser().parse_args(argv)
    import warnings
    warnings.formatwarning = lambda message, *args, **kw: f"warning: {message}\n"
    import nuwa_fast
    from . import output, runtime
    from .checkpoint import check_device
    if a.cmd == "info":
        from nuwa_fast import ops
        model = nuwa_fast.load(a.checkpoint)
        n = sum(p.numel() for p in model.parameters())
        print(json.dumps({"nuwa_fast": nuwa_fast.__version__, "torch": __import__("torch").__version__,
                          "checkpoint": runtime.checkpoint_path(a.checkpoint), "parameters": n,
                          "threads": runtime.default_threads(), "backends": ops.available_backends(),
                          "backend_status": runtime.backend_report(),
                          "config": json.loads(model.cfg.to_json())}, indent=2))
        return 0
    # Everything cheap first, in this order: arguments, output path, input image, checkpoint, canvas.
    check_device(a.device)
    from .ncp import available_bytes
    available_bytes(a.device if a.device.startswith("cuda") else "cpu")   # a bad NUWA_FAST_MAX_POOL_BYTES
    kind = "image" if a.cmd in ("generate", "outpaint") else "video"
    names = output.check(a.out, kind, a.batch, overwrite=a.overwrite)
    image = None
    if a.cmd in ("outpaint", "animate"):
        from .images import to_rgb_array
        image = to_rgb_array(a.image)
        H, W = image.shape[0] + (a.top + a.bottom if a.cmd == "outpaint" else 0), \
            image.shape[1] + (a.left + a.right if a.cmd == "outpaint" else 0)
    else:
        H, W = a.height, a.width
    output.check_space(names, a.batch * getattr(a, "frames", 1) * H * W * 3)
    threads = runtime.set_threads(a.threads)
    runtime.keep_freed_memory()
    hint = runtime.busy_hint(threads) if a.threads is None else None
    if hint:
        print(hint, file=sys.stderr)
    preview = runtime.PreviewWriter(a.out, a.preview) if a.preview is not None else None
    model = nuwa_fast.load(a.checkpoint, device=a.device, dtype=a.dtype)
    config = generation_config(a, on_patch=preview)
    try:
        return _task(a, model, image, config)
    finally:
        if preview is not None:
            preview.remove()


def _task(a, model, image, config) -> int:
    if a.cmd == "generate":
        r = model.generate_image(a.prompt, height=a.height, width=a.width, batch=a.batch, config=config)
    elif a.cmd == "video":
        r = model.generate_video(a.prompt, frames=a.frames, height=a.height, width=a.width, batch=a.batch,
                                 config=config)
    elif a.cmd == "outpaint":
        r = model.outpaint(image, left=a.left, right=a.right, top=a.top, bottom=a.bottom, prompt=a.prompt,
                           batch=a.batch, config=config)
    else:
        r = model.animate(image, frames=a.frames, prompt=a.prompt, batch=a.batch, config=config)
    paths = r.save(a.out, overwrite=a.overwrite, **({"fps": a.fps} if r.is_video else {}))
    s = r.stats
    print(f"wrote {', '.join(paths)}: {s.patches} patches, {s.generated_tokens} tokens sampled in "
          f"{s.seconds:.2f} s ({s.tokens_per_second:.0f} tokens/s) in {s.waves} waves "
          f"({s.mean_lanes:.1f} patches each), peak {s.peak_pages} pages, backend {s.backend}, "
          f"{__import__('torch').get_num_threads()} threads")
    return 0


def main(argv=None) -> int:
    """Exit codes (nuwa_fast.errors): 0 done, 2 bad argument, 3 bad input file, 4 does not fit,
    5 write failed, 130 interrupted, 1 a bug."""
    from .errors import run_command
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
