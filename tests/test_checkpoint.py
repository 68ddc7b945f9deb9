"""Checkpoints: round trip, and every way a file can be wrong gives an error naming the fix."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import nuwa_fast
from nuwa_fast.checkpoint import CheckpointError, read_metadata, save_checkpoint
from models import small_config, small_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = small_model()
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_checkpoint(model, path)
    return model, path


def test_round_trip_same_tokens(saved):
    model, path = saved
    again = nuwa_fast.load(str(path))
    assert again.cfg == model.cfg
    a = model.generate_image(None, height=12, width=12, seed=3).tokens
    b = again.generate_image(None, height=12, width=12, seed=3).tokens
    assert torch.equal(a, b)
    meta = read_metadata(path)
    assert meta["format"] == "nuwa-fast" and json.loads(meta["config"])["patch"] == 3


def rewrite(path, dst, edit_state=None, edit_meta=None):
    state = load_file(str(path))
    meta = read_metadata(path)
    if edit_state:
        edit_state(state)
    if edit_meta:
        edit_meta(meta)
    save_file(state, str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize("edit,match", [
    (dict(edit_state=lambda s: s.pop("decoder.head.weight")), "missing tensor 'decoder.head.weight'"),
    (dict(edit_state=lambda s: s.update({"decoder.head.weight": torch.zeros(3, 3)})), "'decoder.head.weight' has shape"),
    (dict(edit_state=lambda s: s.update({"extra.tensor": torch.zeros(1)})), "unexpected tensor 'extra.tensor'"),
    (dict(edit_state=lambda s: s.update({"decoder.start": torch.zeros(32, dtype=torch.int32)})), "'decoder.start' has dtype"),
    (dict(edit_state=lambda s: s["decoder.start"].fill_(float("nan"))), "NaN"),
    (dict(edit_meta=lambda m: m.update(format="other")), "not a nuwa-fast checkpoint"),
    (dict(edit_meta=lambda m: m.update(format_version="99")), "format version"),
    (dict(edit_meta=lambda m: m.update(config="{not json")), "config in the metadata is invalid"),
    (dict(edit_meta=lambda m: m.update(config=json.dumps({**json.loads(m["config"]), "layers": 3}))), "missing tensor"),
])
def test_bad_checkpoints(saved, tmp_path, edit, match):
    _, path = saved
    bad = rewrite(path, tmp_path / "bad.safetensors", **edit)
    with pytest.raises(CheckpointError, match=match):
        nuwa_fast.load(str(bad))


def test_truncated_and_garbage(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        nuwa_fast.load(str(tmp_path / "trunc.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        nuwa_fast.load(str(tmp_path / "junk.safetensors"))
    with pytest.raises(CheckpointError, match="neither an existing checkpoint file nor a preset"):
        nuwa_fast.load(str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match="is a folder"):
        nuwa_fast.load(str(tmp_path))


def test_pickle_is_never_loaded(tmp_path):
    p = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, p)                              # a pickle under a safetensors name
    with pytest.raises(CheckpointError):
        nuwa_fast.load(str(p))


def test_killed_writer_keeps_previous_checkpoint(saved, tmp_path):
    """SIGKILL a process in the middle of save_checkpoint: the old file must stay intact."""
    model, path = saved
    dst = tmp_path / "live.safetensors"
    dst.write_bytes(path.read_bytes())
    before = dst.read_bytes()
    code = f"""
import os, sys, signal
sys.path[:0] = {[os.path.dirname(__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]!r}
import safetensors.torch as st
from models import small_model
from nuwa_fast.checkpoint import save_checkpoint
real = st.save_file
def dying(state, filename, metadata=None):
    real(state, filename, metadata=metadata)
    os.truncate(filename, 100)                 # half-written temp file
    os.kill(os.getpid(), signal.SIGKILL)
st.save_file = dying
save_checkpoint(small_model(seed=1), {str(dst)!r})
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode != 0
    assert dst.read_bytes() == before
    nuwa_fast.load(str(dst))                                          # still loads


def test_preset_without_weights_is_random_but_seeded():
    a = nuwa_fast.load(small_config())
    b = nuwa_fast.load(small_config())
    assert torch.equal(a.decoder.head.weight, b.decoder.head.weight)
    with pytest.raises(CheckpointError, match="presets"):
        nuwa_fast.load("no-such-preset")
