"""The command line: each task writes its file; bad input exits 2 with `error: ...` and writes nothing."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nuwa_fast.checkpoint import save_checkpoint
from models import small_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "small.safetensors"
    save_checkpoint(small_model(), path)
    return str(path)


def cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "nuwa_fast.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_generate_video_outpaint_animate(ckpt, tmp_path):
    out = tmp_path / "img.png"
    r = cli("generate", "-c", ckpt, "--width", "30", "--height", "13", "--prompt", "a lake", "-q", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (30, 13)
    src = tmp_path / "src.png"
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(src)
    r = cli("outpaint", str(src), "-c", ckpt, "--right", "9", "--top", "3", "-q", "-o", str(tmp_path / "o.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "o.png").size == (25, 15)
    r = cli("animate", str(src), "-c", ckpt, "--frames", "2", "-q", "-o", str(tmp_path / "a.gif"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "a.gif").n_frames == 2
    r = cli("video", "-c", ckpt, "--frames", "2", "--width", "12", "--height", "12", "--batch", "2", "-q",
            "-o", str(tmp_path / "v.gif"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "v_0.gif").exists() and (tmp_path / "v_1.gif").exists()


@pytest.mark.parametrize("args,match,code", [
    (["generate", "--width", "0"], "width must be between", 2),
    (["generate", "--height", "-5"], "height must be between", 2),
    (["generate", "--width", "abc"], "--width must be a whole number", 2),
    (["generate", "--width", "nan"], "--width must be a whole number", 2),
    (["generate", "--order", "spiral"], "unknown order", 2),
    (["generate", "--extent", "0,9,9"], "larger than the extent", 2),
    (["generate", "--extent", "1,2"], "three values", 2),
    (["generate", "--backend", "fortran"], "not available", 2),
    (["generate", "--top-p", "0"], "top_p", 2),
    (["generate", "-c", "/no/such.safetensors"], "neither an existing checkpoint", 3),
    (["outpaint", "/no/such.png", "--right", "8"], "does not exist", 3),
    (["generate", "-o", "out.txt"], "cannot save", 2),
    (["generate", "--schedule", "fast"], "invalid choice: 'fast'", 2),
    (["generate", "--max-lanes", "0"], "max_lanes must be a whole number >= 1", 2),
])
def test_bad_arguments(ckpt, tmp_path, args, match, code, capsys):
    """In-process (argparse errors exit 2 through SystemExit, the rest return 2; a bad file 3)."""
    from nuwa_fast.cli import main
    out = tmp_path / "never.png"
    if "-o" not in args:
        args = args + ["-o", str(out)]
    if "-c" not in args:
        args = args + ["-c", ckpt]
    want = code
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == want, (code, err)
    assert match in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_info(ckpt, capsys):
    import json

    import nuwa_fast
    from nuwa_fast import ops
    from nuwa_fast.cli import main
    assert main(["info", "-c", ckpt]) == 0
    info = json.loads(capsys.readouterr().out)
    model = nuwa_fast.load(ckpt)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["config"] == json.loads(model.cfg.to_json()) and info["nuwa_fast"] == nuwa_fast.__version__
    assert info["backends"] == ops.available_backends() and "torch" in info["backends"]
    for b in ("torch", "triton", "cuda"):                 # each backend: available, or absent with its reason
        status = info["backend_status"][b]
        assert status.startswith("available") == (b in info["backends"]), (b, status)
        assert status.startswith("available") or len(status) > len("absent: "), (b, status)
