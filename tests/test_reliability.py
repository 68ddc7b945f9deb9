"""Reliability: resource limits, interrupts, leaks, determinism, hostile arguments."""
import math
import os
import random

import numpy as np
import pytest
import torch

from nuwa_fast import api, engine
from nuwa_fast.ncp import PoolTooLarge
from models import small_model


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_pool_too_large_fails_before_work(model, monkeypatch):
    monkeypatch.setenv("NUWA_FAST_MAX_POOL_BYTES", str(64 * 1024))
    calls = []
    monkeypatch.setattr(model.decoder, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(PoolTooLarge, match=r"needs \d+ pages x 1 samples .* at most \d+ pages fit"):
        model.generate_image(None, height=64, width=4096)
    assert not calls                                                    # nothing ran


def test_out_of_memory_reports_a_batch_that_fits(model, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setattr(engine, "run", oom)
    with pytest.raises(MemoryError, match=r"about \d+ samples fit: use batch=\d+"):
        model.generate_image(None, height=24, width=24, batch=4)


def test_interrupted_save_leaves_nothing(model, tmp_path, monkeypatch):
    r = model.generate_image(None, height=12, width=12)
    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(api, "_write", boom)
    with pytest.raises(KeyboardInterrupt):
        r.save(str(tmp_path / "x.png"))
    assert os.listdir(tmp_path) == []


def test_cli_ctrl_c_writes_nothing(tmp_path, monkeypatch, capsys):
    from nuwa_fast import cli
    from nuwa_fast.checkpoint import save_checkpoint
    ck = tmp_path / "m.safetensors"
    save_checkpoint(small_model(), ck)
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "run", interrupted)
    out = tmp_path / "o.png"
    assert cli.main(["generate", "-c", str(ck), "--width", "8", "--height", "8", "-o", str(out)]) == 130
    assert "nothing was written" in capsys.readouterr().err
    assert not out.exists()


def rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_fifty_generations_no_leak(model):
    for _ in range(5):                                                  # warm up allocator caches
        model.generate_image(None, height=12, width=16, batch=2)
    base = rss_bytes()
    for i in range(50):
        r = model.generate_image(None, height=12, width=16, batch=2, seed=i)
        assert r.stats.extra["pages_left"] == 0
    growth = rss_bytes() - base
    print("RSS growth over 50 generations:", growth / 2**20, "MiB")
    assert growth < 32 * 2**20


def test_same_seed_same_tokens_across_runs_and_batches(model):
    a = model.generate_image("x", height=16, width=16, batch=3, seed=11, top_k=10)
    b = model.generate_image("x", height=16, width=16, batch=3, seed=11, top_k=10)
    c = model.generate_image("x", height=16, width=16, batch=1, seed=11, top_k=10)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens[:1], c.tokens)


HOSTILE_SIZES = [0, -1, -10**9, 10**12, float("nan"), float("inf"), 2.5, "12", None, True, [12], 1, 7, 12.0]
HOSTILE_WORDS = ["", "DOWN", "down ", "../../etc", "\x00", "💥", "outward", "right", None, 3]


def test_fuzz_api_arguments(model):
    """Random hostile arguments: a clean error (ValueError/TypeError/MemoryError) or a correct result."""
    rng = random.Random(0)
    tried = ok = 0
    def pick(good, bad):                                               # mostly valid, sometimes hostile
        return rng.choice(bad) if rng.random() < 0.15 else rng.choice(good)
    for _ in range(120):
        h, w = pick([1, 7, 12, 12.0], HOSTILE_SIZES), pick([5, 12, 16], HOSTILE_SIZES)
        kw = dict(order=pick(["down", "up", "outward"], HOSTILE_WORDS), batch=pick([1, 2], [0, -3, 1.5, "2"]),
                  temperature=pick([1.0, 0], [-1, float("nan"), "hot"]),
                  top_k=pick([0, 5], [-1, 2.5]), top_p=pick([1.0, 0.5], [0, 1.5, float("nan")]),
                  backend=pick([None, "torch"], ["fortran", ""]))
        tried += 1
        try:
            r = model.generate_image(rng.choice([None, "", "a" * 100_000, "\ud800 bad utf-8", "ok"]),
                                     height=h, width=w, **kw)
        except (ValueError, TypeError, MemoryError) as e:
            assert str(e) and "Traceback" not in str(e)
            continue
        ok += 1
        H, W = int(h), int(w)
        assert r.pixels.shape[1:] == (H, W, 3)
    print(f"fuzz: {tried} argument sets tried, {ok} generated, {tried - ok} refused with a clear error")
    assert ok > 0 and tried - ok > 0


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F",
                                  "LA", "PA", "RGBX", "I;16", "La", "RGBa"])
def test_every_pil_mode(model, mode):
    from PIL import Image
    try:
        img = Image.new(mode, (12, 8))
    except (ValueError, OSError):
        pytest.skip(f"PIL cannot create mode {mode}")
    try:
        r = model.outpaint(img, right=4)
    except ValueError as e:
        assert "convert" in str(e)
        return
    assert r.pixels.shape == (1, 8, 16, 3)


def test_one_pixel_image_is_refused(model):
    from PIL import Image
    with pytest.raises(ValueError, match="at least"):
        model.outpaint(Image.new("RGB", (1, 1)), right=4)


def test_fuzz_cli(tmp_path, capsys):
    """Random argv lists: exit 0 with the file written, or exit 2 with `error:` and nothing written."""
    from nuwa_fast import cli
    from nuwa_fast.checkpoint import save_checkpoint
    ck = tmp_path / "m.safetensors"
    save_checkpoint(small_model(), ck)
    rng = random.Random(1)
    values = {"--width": ["8", "13", "0", "-4", "x", "1e3", "nan", "99999999999"],
              "--height": ["8", "5", "0", "", "NaN"], "--seed": ["0", "-1", "abc"],
              "--order": ["down", "left", "outward", "sideways", ""], "--top-p": ["0.9", "2", "-1"],
              "--top-k": ["0", "3", "-2", "k"], "--temperature": ["1", "0", "-3", "inf"],
              "--batch": ["1", "2", "0"], "--extent": ["0,1,1", "9,9,9", "1", "a,b,c"],
              "--backend": ["torch", "cuda9"]}
    tried = wrote = 0
    for i in range(60):
        out = tmp_path / f"o{i}.png"
        argv = ["generate", "-c", str(ck), "-q", "-o", str(out)]
        for flag in rng.sample(sorted(values), 4):
            argv += [flag, rng.choice(values[flag])]
        if "--width" not in argv:
            argv += ["--width", "8"]
        if "--height" not in argv:
            argv += ["--height", "8"]
        tried += 1
        try:
            code = cli.main(argv)
        except SystemExit as e:                                         # argparse type errors
            code = e.code
        err = capsys.readouterr().err
        assert code in (0, 2), (argv, code, err)
        if code == 0:
            wrote += 1
            assert out.exists() or (tmp_path / f"o{i}_0.png").exists()
        else:
            assert "error" in err and "Traceback" not in err
            assert not out.exists()
    print(f"cli fuzz: {tried} argv lists, {wrote} wrote an image, {tried - wrote} refused")
    assert wrote and tried - wrote
