"""Reliability: resource limits, interrupts, leaks, determinism, hostile arguments."""
import math
import os
import random

import numpy as np
import pytest
import torch

from nuwa_fast import api, engine, images
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
    monkeypatch.setattr(images, "_write", boom)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fifty_generations_no_device_leak():
    m = small_model().cuda()
    for _ in range(5):
        m.generate_image(None, height=12, width=16, batch=2)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for i in range(50):
        r = m.generate_image(None, height=12, width=16, batch=2, seed=i)
        assert r.stats.extra["pages_left"] == 0
    torch.cuda.synchronize()
    growth = torch.cuda.memory_allocated() - base
    print("device memory growth over 50 generations:", growth / 2**20, "MiB")
    assert growth <= 1 * 2**20                         # allocations are per call; nothing may stay behind


def test_same_seed_same_tokens_across_runs_and_batches(model):
    a = model.generate_image("x", height=16, width=16, batch=3, seed=11, top_k=10)
    b = model.generate_image("x", height=16, width=16, batch=3, seed=11, top_k=10)
    c = model.generate_image("x", height=16, width=16, batch=1, seed=11, top_k=10)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens[:1], c.tokens)


HOSTILE_SIZES = [0, -1, -10**9, 10**12, float("nan"), float("inf"), 2.5, "12", None, True, [12]]
HOSTILE_WORDS = ["", "DOWN", "down ", "../../etc", "\x00", "💥", 3]


def test_fuzz_api_arguments(model):
    """Random hostile arguments: every set with a hostile value is refused with a ValueError/TypeError
    that names one of the hostile arguments, and every set without one generates the right shape."""
    rng = random.Random(0)
    tried = ok = 0
    for _ in range(120):
        bad = []

        def pick(name, good, hostile):                                 # mostly valid, sometimes hostile
            if rng.random() < 0.15:
                bad.append(name)
                return rng.choice(hostile)
            return rng.choice(good)
        h, w = pick("height", [1, 7, 12, 12.0], HOSTILE_SIZES), pick("width", [5, 12, 16], HOSTILE_SIZES)
        kw = dict(order=pick("order", ["down", "up", "outward", None], HOSTILE_WORDS),
                  batch=pick("batch", [1, 2], [0, -3, 1.5, "2"]),
                  temperature=pick("temperature", [1.0, 0], [-1, float("nan"), "hot"]),
                  top_k=pick("top_k", [0, 5], [-1, 2.5]), top_p=pick("top_p", [1.0, 0.5], [0, 1.5, float("nan")]),
                  backend=pick("backend", [None, "torch"], ["fortran", ""]))
        prompt = rng.choice([None, "", "a" * 100_000, "\ud800 bad utf-8", "ok"])
        tried += 1
        if not bad:
            r = model.generate_image(prompt, height=h, width=w, **kw)
            ok += 1
            assert r.pixels.shape == (kw["batch"], int(h), int(w), 3)
            continue
        with pytest.raises((ValueError, TypeError)) as e:
            model.generate_image(prompt, height=h, width=w, **kw)
        msg = str(e.value)
        assert any(name in msg for name in bad), (bad, msg)
        assert "Traceback" not in msg
    print(f"fuzz: {tried} argument sets tried, {ok} generated, {tried - ok} refused naming the argument")
    assert ok > 10 and tried - ok > 10


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
    """Random argv lists: exit 0 with the file written, or 2 (bad argument) / 4 (does not fit) with `error:`
    and nothing written."""
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
        assert code in (0, 2, 4), (argv, code, err)               # done, bad argument, does not fit
        if code == 0:
            wrote += 1
            assert out.exists() or (tmp_path / f"o{i}_0.png").exists()
        else:
            assert "error" in err and "Traceback" not in err
            assert not out.exists()
    print(f"cli fuzz: {tried} argv lists, {wrote} wrote an image, {tried - wrote} refused")
    assert wrote and tried - wrote


# ---- 20k x 20k images: a clear error or bounded memory, never a blow-up -----------------------------
HUGE = 20_000


def test_huge_image_file_gets_a_clear_error(model, tmp_path):
    from PIL import Image
    path = tmp_path / "huge.png"
    Image.new("1", (HUGE, HUGE)).save(path)                # 400 Mpx, a few hundred kB on disk
    with pytest.raises(ValueError, match=r"decompression-bomb limit .*MAX_IMAGE_PIXELS = None"):
        model.outpaint(str(path), right=12)


def test_huge_image_encodes_in_bounded_memory(model, monkeypatch):
    """A 20k x 20k image is encoded tile by tile: no encoder call sees more than one tile plus halo,
    and beyond the token grid no image-sized array is allocated (the image is never padded whole)."""
    import tracemalloc
    f, halo = model.cfg.vq.f, model.vq.encode_halo
    img = np.zeros((HUGE, HUGE - 1, 3), dtype=np.uint8)     # width not a multiple of f: edge tiles pad
    seen = []

    def fake_encode(x):                                     # records the tile; tokens = tile index
        seen.append(tuple(x.shape))
        return torch.full((1, x.shape[2] // f, x.shape[3] // f), len(seen) % 48, dtype=torch.long)
    monkeypatch.setattr(model.vq, "encode", fake_encode)
    tracemalloc.start()
    toks = images.encode_pixels(model, img)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    h, w = -(-HUGE // f), -(-(HUGE - 1) // f)
    assert toks.shape == (h, w)
    side = (64 + 2 * halo) * f
    assert len(seen) == (-(-h // 64)) * (-(-w // 64))
    assert max(s[2] for s in seen) <= side and max(s[3] for s in seen) <= side
    assert peak <= toks.nbytes + 16 * 2 ** 20, f"peak {peak / 2**20:.0f} MiB for a {toks.nbytes / 2**20:.0f} MiB grid"
    assert len(np.unique(toks[:64, :64])) == 1 and toks[0, 0] != toks[0, 64]    # every token from its tile


def test_huge_outpaint_refused_before_encoding(monkeypatch):
    """A pool that cannot fit is reported before the 20k x 20k image is encoded."""
    m = small_model(patch=16)                               # 64 px patches: a 313 x 314 patch grid
    monkeypatch.setenv("NUWA_FAST_MAX_POOL_BYTES", str(256 * 1024))
    monkeypatch.setattr(api, "encode_pixels", lambda *a, **k: pytest.fail("encoded before the pool check"))
    img = np.zeros((HUGE, HUGE, 3), dtype=np.uint8)
    with pytest.raises(PoolTooLarge, match=r"needs \d+ pages x 1 samples"):
        m.outpaint(img, right=64)
    with pytest.raises(PoolTooLarge, match=r"needs \d+ pages x 1 samples"):
        m.animate(img, frames=2)


def test_strip_decode_equals_whole_decode(model):
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, model.cfg.vq.codebook_size, (2, 2, 37, 29), generator=g)
    f = model.cfg.vq.f
    H, W, oy, ox = 37 * f - 7, 29 * f - 6, 3, 5
    got = images.decode_tokens(model, toks, 2, 37, 29, H, W, oy, ox, strip=8)
    for t in range(2):
        px = model.vq.decode(toks[:, t])
        want = ((px.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(got[:, t], want[:, oy:oy + H, ox:ox + W])
