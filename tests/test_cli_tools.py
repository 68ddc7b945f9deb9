"""The command line around a generation: --version, info, --threads, --preview, MP4, bench to out/."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import nuwa_fast
from nuwa_fast import runtime
from nuwa_fast.checkpoint import save_checkpoint
from models import small_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "small.safetensors"
    save_checkpoint(small_model(), path)
    return str(path)


def run_module(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=cwd)


def test_version_and_python_m(ckpt):
    r = run_module("nuwa_fast", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"nuwa-fast {nuwa_fast.__version__}", r
    r = run_module("nuwa_fast", "info", "-c", ckpt)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["nuwa_fast"] == nuwa_fast.__version__ and info["checkpoint"] == os.path.abspath(ckpt)
    assert info["backend_status"]["torch"].startswith("available")
    assert set(info["backend_status"]) == {"torch", "triton", "cuda"}
    for name, status in info["backend_status"].items():        # absent ones say why
        assert (name in info["backends"]) == status.startswith("available"), (name, status)
        assert status.startswith("available") or ": " in status


def test_threads_flag_sets_torch_threads(ckpt, tmp_path):
    from nuwa_fast.cli import main
    try:
        torch.set_num_threads(2)
        assert main(["generate", "-c", ckpt, "--width", "12", "--height", "12", "-q", "--threads", "1",
                     "-o", str(tmp_path / "a.png")]) == 0
        assert torch.get_num_threads() == 1
        assert main(["generate", "-c", ckpt, "--width", "12", "--height", "12", "-q",
                     "-o", str(tmp_path / "b.png")]) == 0
        assert torch.get_num_threads() == runtime.default_threads() == len(os.sched_getaffinity(0))
        assert main(["generate", "-c", ckpt, "-q", "--threads", "0", "-o", str(tmp_path / "c.png")]) == 2
        assert not (tmp_path / "c.png").exists()
    finally:
        torch.set_num_threads(1)


def test_busy_hint():
    cores = runtime.default_threads()
    assert runtime.busy_hint(1, loadavg=50.0) is None
    assert runtime.busy_hint(2, loadavg=0.0) is None
    assert "--threads 1" in runtime.busy_hint(2, loadavg=cores + 3.0)


_FAULTS = """
import resource, sys, torch
from nuwa_fast.runtime import keep_freed_memory
kept = keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    t = torch.empty(16 * 2 ** 20).fill_(1.0)        # 64 MB, every page touched
    del t
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_reuses_large_blocks_instead_of_faulting_them_in_again():
    def run(flag):
        env = dict(os.environ, NUWA_FAST_KEEP_MEMORY=flag)
        out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
        kept, faults = out.stdout.split()
        return kept == "True", int(faults)
    kept_on, faults_on = run("1")
    kept_off, faults_off = run("0")
    print("minor page faults, 6 x 64 MB: kept", faults_on, "returned", faults_off)
    assert kept_on and not kept_off
    assert faults_on < faults_off / 2.5                # the block is faulted in once and reused, not 6 times


def test_speed_flags_reach_the_engine(ckpt, tmp_path, capsys):
    from nuwa_fast.cli import main
    try:
        code = main(["generate", "-c", ckpt, "--width", "12", "--height", "12", "-q", "--attention", "sdpa",
                     "--cuda-graphs", "off", "--dtype", "bfloat16", "--threads", "1", "-o", str(tmp_path / "a.png")])
    finally:
        torch.set_num_threads(1)
    assert code == 0 and Image.open(tmp_path / "a.png").size == (12, 12)
    assert "1 threads" in capsys.readouterr().out


def test_preview_is_a_valid_image_before_the_run_ends(ckpt, tmp_path, monkeypatch):
    from nuwa_fast.cli import main
    out, seen = tmp_path / "pano.png", []
    original = runtime.PreviewWriter.__call__

    def checked(self, event):
        writes = self.writes
        original(self, event)
        if self.writes > writes:
            with Image.open(self.path) as im:
                im.load()                                      # a whole, decodable PNG
                seen.append((event.done, event.total, im.size, out.exists()))
    monkeypatch.setattr(runtime.PreviewWriter, "__call__", checked)
    assert main(["generate", "-c", ckpt, "--width", "30", "--height", "13", "-q", "--preview", "2",
                 "-o", str(out)]) == 0
    total = seen[0][1]
    dones = [s[0] for s in seen]                       # every time the count crosses a multiple of 2
    assert len(dones) >= 2 and dones[-1] == total
    assert all(b // 2 > a // 2 or b == total for a, b in zip([0] + dones, dones))
    assert all(size == (30, 13) and not done for _, _, size, done in seen)   # before the output existed
    assert out.exists() and not (tmp_path / "pano.preview.png").exists()     # removed at the end
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]          # no temporary left


@pytest.mark.parametrize("size", [(13, 30), (12, 16)])
def test_mp4_round_trip(size, tmp_path):
    import av
    H, W = size
    r = small_model().generate_video(None, frames=3, height=H, width=W, seed=0)
    path = r.save(str(tmp_path / "clip.mp4"), fps=6)[0]
    with av.open(path) as c:
        st = c.streams.video[0]
        assert (st.codec_context.width, st.codec_context.height) == (W, H)
        assert st.average_rate == 6
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert frames.shape == (3, H, W, 3)
    err = np.abs(frames.astype(np.float32) - r.pixels[0]).mean()
    print("mean abs error after H.264:", err)
    assert err < 12


def test_cli_video_mp4(ckpt, tmp_path):
    import av
    r = run_module("nuwa_fast", "video", "-c", ckpt, "--frames", "2", "--width", "12", "--height", "12", "-q",
                   "-o", str(tmp_path / "v.mp4"))
    assert r.returncode == 0, r.stderr
    with av.open(str(tmp_path / "v.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 2


def _git_status():
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                          text=True).stdout


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")) and not os.path.isfile(os.path.join(ROOT, ".git")),
                    reason="not a git checkout")
def test_bench_user_shape_writes_under_out_and_leaves_the_tree_clean(ckpt):
    before = _git_status()
    committed = os.path.join(ROOT, "benchmarks", "results", "engine_cpu.json")
    stamp = os.stat(committed).st_mtime_ns if os.path.exists(committed) else None
    r = run_module("nuwa_fast", "bench", "-c", ckpt, "--device", "cpu", "--height", "24", "--width", "40",
                   "--frames", "1", "--batch", "2", cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    path = os.path.join(ROOT, "out", "bench", "engine_cpu.json")
    assert f"wrote {os.path.join('out', 'bench', 'engine_cpu.json')}" in r.stdout
    row = json.load(open(path))["shape"]
    assert (row["height"], row["width"], row["batch"], row["canvas"]) == (24, 40, 2, "1x2x4")
    assert row["patches"] == 8 and row["tokens"] == 2 * 8 * 9 and row["tokens_per_s"] > 0   # 2 x 8 patches of 9
    assert _git_status() == before
    assert (os.stat(committed).st_mtime_ns if os.path.exists(committed) else None) == stamp
    r = run_module("nuwa_fast", "bench", "-c", ckpt, "--device", "cpu", "--schedule", "waves", "--width", "8",
                   "--out", os.path.join(ROOT, "out", "bench", "schedule.json"), cwd=ROOT)
    import inspect
    from nuwa_fast import engine
    if "schedule" not in inspect.signature(engine.run).parameters:
        assert r.returncode != 0 and "no schedule option" in r.stderr
    else:
        assert r.returncode == 0, r.stderr[-2000:]


def test_train_help_lists_every_data_source_with_an_example(tmp_path):
    import re
    from nuwa_fast.data import make_source
    from nuwa_fast.train.cli import build_parser
    text = build_parser().format_help()
    specs = re.findall(r"--data (\S+)", text.split("data sources")[1])
    for name in ("landscape", "skimage", "folder:"):
        assert any(s.startswith(name) for s in specs), (name, specs)
    assert any("," in s for s in specs)                               # a mixture
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(tmp_path / "a.png")
    for spec in specs:                                                # every example parses
        assert make_source(spec.replace("/data/my_photos", str(tmp_path))) is not None


def test_model_card_figures_match_the_eval_json():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import model_card
    finally:
        sys.path.pop(0)
    path = model_card.eval_json()
    ev = json.load(open(path))
    card = open(model_card.CARD).read()
    assert model_card.updated_card(card, model_card.render(ev, path)) == card, \
        "docs/model_card.md is out of date: run python3 benchmarks/model_card.py"
    assert f"{ev['vq']['psnr']:.1f} dB PSNR" in card
    ev["vq"]["psnr"] += 1.0                                       # a new eval changes the card
    assert model_card.updated_card(card, model_card.render(ev, path)) != card


def test_bench_and_profile_without_the_benchmarks_folder_say_so(monkeypatch, tmp_path, capsys):
    """A wheel ships no benchmarks/: the thin entry points name what is missing (exit 2), no traceback."""
    from nuwa_fast import cli, tools
    assert tools.load("bench").__file__ == os.path.join(ROOT, "benchmarks", "bench_engine.py")
    monkeypatch.setattr(tools, "BENCHMARKS", tmp_path / "benchmarks")
    for command in ("bench", "profile"):
        assert cli.run([command, "--help"]) == 2
        err = capsys.readouterr().err
        assert f"`nuwa-fast {command}` is not available" in err and str(tmp_path / "benchmarks") in err
