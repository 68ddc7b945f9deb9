"""Hostile inputs and faults: each a clear error (with its exit code) before any work, nothing lost or
left behind. One section per kind of fault; training checkpoints are in test_train_faults.py."""
import errno
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from nuwa_fast import engine, images, output
from nuwa_fast.checkpoint import save_checkpoint
from nuwa_fast.errors import BadArgument
from models import small_config, small_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "small.safetensors"
    save_checkpoint(small_model(), path)
    return str(path)


@pytest.fixture
def no_work(monkeypatch):
    """Counts calls of the generation loop: a refusal must come before it."""
    calls = []
    real = engine.run
    monkeypatch.setattr(engine, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def run_cli(argv, capsys):
    from nuwa_fast.cli import main
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# ---- 1. sizes are computed, never materialised to find out they are too big ------------------------
REFUSALS = r"""
import json, os, resource, sys, time
sys.path[:0] = [{tests!r}, {root!r}]
import numpy as np
from PIL import Image
import nuwa_fast
from nuwa_fast import cli
from models import small_model
model, rows = small_model(), []
base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # imports and the model
def attempt(name, fn):
    t0 = time.perf_counter()
    try:
        fn()
        rows.append(dict(name=name, error=None))
    except Exception as e:
        rows.append(dict(name=name, error=type(e).__name__, msg=str(e), s=round(time.perf_counter() - t0, 3),
                         rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024))
src = np.full((16, 16, 3), 90, np.uint8)
attempt("generate 1048576^2", lambda: model.generate_image(None, height=1 << 20, width=1 << 20))
attempt("outpaint +1000000", lambda: model.outpaint(src, right=1000000, bottom=1000000))
attempt("animate 2**20 frames", lambda: model.animate(np.full((256, 256, 3), 9, np.uint8), frames=1 << 20))
attempt("video 100000 frames", lambda: model.generate_video(None, frames=100000, height=4096, width=4096))
os.environ["NUWA_FAST_MAX_POOL_BYTES"] = str(1 << 20)
attempt("pool: 2 x 65536 patches, down", lambda: model.generate_image(None, height=24, width=12 * 65536))
attempt("pool: 1024 x 1024 patches, outward", lambda: model.generate_image(None, height=12 * 1024, width=12 * 1024,
        order="outward"))
attempt("pool: 1100 x 1100 patches, right", lambda: model.generate_image(None, height=12 * 1100, width=12 * 1100,
        order="right"))                                        # beyond sizing.EXACT_MAX: the closed form
del os.environ["NUWA_FAST_MAX_POOL_BYTES"]
codes = dict(info=cli.main(["info", "-c", {wide!r}]), negative=cli.main(["info", "-c", {negative!r}]))
print(json.dumps(dict(rows=rows, codes=codes, base_rss_mb=base_mb,
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def _rewrite_config(src, dst, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(src, framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    cfg = json.loads(meta["config"])
    for k, v in changes.items():
        if k.startswith("vq."):
            cfg["vq"][k[3:]] = v
        else:
            cfg[k] = v
    save_file(tensors, dst, metadata=dict(meta, config=json.dumps(cfg)))


def test_huge_canvases_and_configs_refused_in_bounded_memory(ckpt, tmp_path):
    """In a fresh process, so that its peak RSS is the refusals' own (torch's import included)."""
    wide, negative = str(tmp_path / "wide.safetensors"), str(tmp_path / "neg.safetensors")
    _rewrite_config(ckpt, wide, width=65536, layers=64, heads=2)
    _rewrite_config(ckpt, negative, **{"vq.codebook_size": -5})
    code = REFUSALS.format(tests=os.path.dirname(__file__), root=ROOT, wide=wide, negative=negative)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "TRITON_INTERPRET")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    for row in rep["rows"]:
        print(row)
        assert row["error"] in ("DoesNotFit", "PoolTooLarge"), row
    msgs = [row["msg"] for row in rep["rows"]]
    assert "of host memory (the result 3.00 TiB" in msgs[0] and "ask for fewer pixels" in msgs[0]
    assert all(m.strip() for m in msgs)
    assert "the Nearby Context Pool needs 65538 pages" in msgs[4]           # exact: a row of 65536 + 2
    assert "needs 1102 pages" in msgs[6]                                    # a column of 1100 + 2
    assert all(row["error"] == "PoolTooLarge" and "at most 227 pages fit" in row["msg"] for row in rep["rows"][4:])
    assert "its config describes a model of" in r.stderr and "codebook_size must be between 2" in r.stderr
    assert rep["codes"] == {"info": 4, "negative": 3}
    added = rep["peak_rss_mb"] - rep["base_rss_mb"]
    print(f"peak RSS {rep['peak_rss_mb']:.0f} MB, {rep['base_rss_mb']:.0f} MB before the first refusal")
    assert added < 200, rep["rows"]            # the refusals' own memory, beyond torch and the text encoder


def test_peak_pages_arithmetic_equals_the_plan():
    import random
    from nuwa_fast import adc, ncp, sizing
    rnd = random.Random(0)
    for _ in range(150):
        T, H, W = rnd.randint(1, 3), rnd.randint(1, 8), rnd.randint(1, 8)
        e = (rnd.randint(0, min(2, T - 1)), rnd.randint(0, min(2, H - 1)), rnd.randint(0, min(2, W - 1)))
        name = rnd.choice(adc.ORDERS)
        region = None
        if name == "outward" and rnd.random() < 0.5:
            y0, x0 = rnd.randrange(H), rnd.randrange(W)
            region = (y0, x0, rnd.randrange(y0, H), rnd.randrange(x0, W))
        exact = ncp.plan(adc.order(name, (T, H, W), region), e, (T, H, W)).peak_pages
        assert sizing.peak_pages([name] * T, (T, H, W), e, region) == exact, (name, T, H, W, e, region)
        bound = sizing.peak_pages_bound([name] * T, (T, H, W), e, region)
        assert bound >= exact
        if name != "outward" and min(H, W) > 2 * max(e[1:]) + 1:
            assert bound == exact


# ---- 3. the output is checked before the work --------------------------------------------------------
def test_bad_outputs_refused_before_work(ckpt, tmp_path, capsys, no_work, monkeypatch):
    (tmp_path / "base.png").write_bytes(b"x")
    (tmp_path / "adir").mkdir()
    cases = [("generate", str(tmp_path / "o.xyz"), "cannot save an image as '.xyz'"),
             ("generate", str(tmp_path / "o.gif"), ".gif is for a video"),
             ("video", str(tmp_path / "o.png"), ".png is for an image"),
             ("generate", str(tmp_path / "base.png" / "o.png"), "is a file, not a directory"),
             ("generate", str(tmp_path / "adir"), "is an existing directory"),
             ("generate", "/proc/o.png", "cannot write into /proc"),
             ("generate", "", "has no file name"),
             ("generate", str(tmp_path / ".png"), "no name before it")]
    for cmd, out, match in cases:
        code, err = run_cli([cmd, "-c", ckpt, "--width", "8", "--height", "8", "--frames", "2", "-q", "-o", out]
                            if cmd == "video" else [cmd, "-c", ckpt, "--width", "8", "--height", "8", "-q", "-o", out],
                            capsys)
        assert code == 2 and match in err, (out, code, err)
    monkeypatch.setattr(output.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    code, err = run_cli(["generate", "-c", ckpt, "--width", "64", "--height", "64", "-q", "-o",
                         str(tmp_path / "full.png")], capsys)
    assert code == 4 and "has 1000 B free but the result needs up to 12.0 KiB" in err, err
    assert not no_work
    assert sorted(os.listdir(tmp_path)) == ["adir", "base.png"]


def test_full_disk_while_writing_leaves_nothing(ckpt, tmp_path, capsys, monkeypatch):
    def full(arr, path, ext, fps):
        with open(path, "wb") as fh:
            fh.write(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(images, "_write", full)
    code, err = run_cli(["generate", "-c", ckpt, "--width", "8", "--height", "8", "-q", "-o",
                         str(tmp_path / "o.png")], capsys)
    assert code == 5 and "no space left on the device; nothing was written" in err, err
    assert os.listdir(tmp_path) == []


# ---- 4. bad image files ------------------------------------------------------------------------------
def test_bad_image_files(ckpt, tmp_path, capsys, no_work):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    img.save(tmp_path / "ok.png")
    img.save(tmp_path / "ok.jpg")
    png, jpg = (tmp_path / "ok.png").read_bytes(), (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    cases = {"empty.png": "is empty (0 bytes)", "cut.png": "is truncated or corrupt",
             "cut.jpg": "is truncated or corrupt", "text.png": "is not an image file Pillow can read",
             "folder.png": "is a directory, not an image file", "missing.png": "does not exist"}
    for name, match in cases.items():
        for cmd in (["outpaint", "--right", "8"], ["animate", "--frames", "2"]):
            out = tmp_path / ("o.png" if cmd[0] == "outpaint" else "o.gif")
            code, err = run_cli([cmd[0], str(tmp_path / name), *cmd[1:], "-c", ckpt, "-q", "-o", str(out)], capsys)
            assert code == 3 and match in err, (name, cmd, code, err)
            assert not out.exists()
    assert not no_work


# ---- 5. concurrent writers ---------------------------------------------------------------------------
def test_concurrent_writers_never_leave_a_partial_file(model, tmp_path):
    a = model.generate_image(None, height=96, width=96, seed=1)
    b = model.generate_image(None, height=96, width=96, seed=2)
    dst = tmp_path / "o.png"
    a.save(str(dst))
    want = {a.pixels[0].tobytes(), b.pixels[0].tobytes()}
    stop, bad, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            try:
                got = np.asarray(Image.open(dst).convert("RGB")).tobytes()
            except FileNotFoundError:
                got = None
            except Exception as e:                                     # a truncated file
                bad.append(repr(e))
                continue
            reads[0] += 1
            if got is not None and got not in want:
                bad.append("mixed")

    def writer(r):
        for _ in range(15):
            r.save(str(dst))
    threads = [threading.Thread(target=reader)] + [threading.Thread(target=writer, args=(r,)) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    print(f"{reads[0]} reads during 30 concurrent saves")
    assert not bad and reads[0] > 0
    assert os.listdir(tmp_path) == ["o.png"]                           # no temporary left
    with pytest.raises(OSError, match="appeared while generating"):
        output.write_all([b"x"], [str(dst)], lambda x, p: open(p, "wb").close(), overwrite=False)
    assert os.listdir(tmp_path) == ["o.png"]


# ---- 6. devices and seeds ----------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu(ckpt, tmp_path, capsys):
    import nuwa_fast
    code, err = run_cli(["generate", "-c", ckpt, "--device", "cuda", "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "device 'cuda'" in err and "use --device cpu" in err, err
    with pytest.raises(BadArgument, match="use --device cpu"):
        nuwa_fast.load(small_config(), device="cuda")
    from nuwa_fast.cli import main
    assert main(["profile", "--device", "cuda", "--checkpoint", ckpt]) == 2
    assert "device 'cuda'" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_seeds_are_64_bit_and_whole(model, tmp_path, capsys):
    def toks(seed):
        return model.generate_image(None, height=12, width=12, seed=seed).tokens
    assert not torch.equal(toks(2 ** 32), toks(0))
    assert not torch.equal(toks(2 ** 64 - 1), toks(2 ** 32 - 1))
    assert torch.equal(toks(2.0), toks(2))
    for bad in (1.7, -1, 2 ** 64, "3", True):
        with pytest.raises(BadArgument, match=r"seed must be"):
            toks(bad)
    code, err = run_cli(["generate", "--seed", str(2 ** 64), "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "--seed must be in [0, 2**64)" in err


# ---- 7. environment ----------------------------------------------------------------------------------
def test_bad_environment_variable(ckpt, tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setenv("NUWA_FAST_MAX_POOL_BYTES", "lots")
    code, err = run_cli(["generate", "-c", ckpt, "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "NUWA_FAST_MAX_POOL_BYTES='lots' must be a whole number of bytes" in err, err
    assert not no_work and not os.listdir(tmp_path)


# ---- 8. names, overwrites, batches, arguments --------------------------------------------------------
def test_existing_outputs_are_kept_unless_overwrite(ckpt, tmp_path, capsys, no_work):
    (tmp_path / "o.png").write_bytes(b"mine")
    (tmp_path / "b_1.png").write_bytes(b"mine too")
    code, err = run_cli(["generate", "-c", ckpt, "--width", "8", "--height", "8", "-q", "-o",
                         str(tmp_path / "o.png")], capsys)
    assert code == 2 and "already exists; pass --overwrite" in err
    code, err = run_cli(["generate", "-c", ckpt, "--width", "8", "--height", "8", "--batch", "2", "-q", "-o",
                         str(tmp_path / "b.png")], capsys)
    assert code == 2 and "b_1.png already exists" in err
    assert not no_work
    assert (tmp_path / "o.png").read_bytes() == b"mine" and sorted(os.listdir(tmp_path)) == ["b_1.png", "o.png"]
    code, err = run_cli(["generate", "-c", ckpt, "--width", "8", "--height", "8", "-q", "--overwrite", "-o",
                         str(tmp_path / "o.png")], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "o.png").size == (8, 8)


def test_interrupted_batch_save_writes_nothing(ckpt, tmp_path, capsys, monkeypatch):
    real, n = images._write, [0]

    def third_interrupted(arr, path, ext, fps):
        n[0] += 1
        if n[0] == 3:
            raise KeyboardInterrupt
        real(arr, path, ext, fps)
    monkeypatch.setattr(images, "_write", third_interrupted)
    code, err = run_cli(["generate", "-c", ckpt, "--width", "8", "--height", "8", "--batch", "3", "-q", "-o",
                         str(tmp_path / "o.png")], capsys)
    assert code == 130 and "interrupted: nothing was written" in err
    assert os.listdir(tmp_path) == []


def test_region_and_extent_messages(model):
    with pytest.raises(BadArgument, match=r"region must be four whole numbers \(y0, x0, y1, x1\)"):
        model.generate_image(None, height=36, width=36, order="outward", region="center")
    with pytest.raises(ValueError, match=r"extent must be three whole numbers >= 0 .* got '1,2,2'"):
        model.generate_image(None, height=12, width=12, extent="1,2,2")
