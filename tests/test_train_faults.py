"""Training checkpoints under faults: one atomic file, the previous one kept until the new one is
complete, killed writers' temporaries cleaned, resume never silent, bit-identical to a whole run."""
import errno
import json
import os
import signal

import pytest
import safetensors.torch as st
import torch
from safetensors import SafetensorError, safe_open

from models import small_config

from nuwa_fast.errors import DoesNotFit
from nuwa_fast.train import TrainOptions, common
from nuwa_fast.train import cli as train_cli
from nuwa_fast.train.vq_stage import train_vq

FAST = dict(batch=2, warmup=1, lr=3e-3, log_every=1, progress=False, eval_every=-1, data="landscape",
            sizes=(16,), restart_every=2)
CFG = small_config(extent=(0, 1, 1))


def _opts(out, **kw):
    return TrainOptions(out=str(out), **{**FAST, "steps": 6, "save_every": 2, **kw})


def _weights(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("train/")}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    train_vq(CFG, _opts(out))
    return _weights(out / "last.safetensors")


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _metrics_steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _killed_child(out, stage, at_save=2):
    """Fork; the child trains and SIGKILLs itself at `stage` of checkpoint write number `at_save`."""
    pid = os.fork()
    if pid == 0:                                                # the child: never returns
        try:
            n = {"save": 0}
            real_save, real_fsync, real_replace = st.save_file, os.fsync, os.replace

            def die():
                os.kill(os.getpid(), signal.SIGKILL)

            def save(tensors, filename, metadata=None):
                n["save"] += 1
                real_save(tensors, filename, metadata=metadata)
                if n["save"] == at_save and stage == "write":
                    os.truncate(filename, os.path.getsize(filename) // 2)       # half-written
                    die()

            def fsync(fd):
                if n["save"] == at_save and stage == "fsync":
                    die()
                real_fsync(fd)

            def replace(a, b):
                last = str(b).endswith("last.safetensors")
                if n["save"] == at_save and last and stage == "rename":
                    die()
                real_replace(a, b)
                if n["save"] == at_save and last and stage == "renamed":
                    die()

            st.save_file, os.fsync, os.replace = save, fsync, replace
            train_vq(CFG, _opts(out))
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


@pytest.mark.parametrize("stage,kept_step", [("write", 2), ("fsync", 2), ("rename", 2), ("renamed", 4)])
def test_sigkill_at_each_step_of_a_checkpoint_write(tmp_path, whole, stage, kept_step):
    out = tmp_path / "run"
    _killed_child(out, stage)
    assert common.checkpoint_step(out) == kept_step             # the last complete checkpoint; temps cleaned
    assert sorted(os.listdir(out)) == ["last.safetensors", "metrics.jsonl"]
    resumed = train_vq(CFG, _opts(out, resume=True))
    assert _same(whole, {k: v for k, v in resumed.state_dict().items()})
    assert _same(whole, _weights(out / "last.safetensors"))
    steps = _metrics_steps(out)
    assert steps == sorted(set(steps)) == list(range(6))        # no step logged twice after the resume


def test_full_disk_keeps_the_previous_checkpoint_and_resumes(tmp_path, whole, monkeypatch):
    out = tmp_path / "run"
    real, n = st.save_file, {"save": 0}

    def full(tensors, filename, metadata=None):
        n["save"] += 1
        if n["save"] == 2:                                       # the step-4 checkpoint: the disk fills up
            with open(filename, "wb") as fh:
                fh.write(b"\0" * 1000)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(DoesNotFit, match=r"no space left on the device .* previous last.safetensors .* unchanged"):
        train_vq(CFG, _opts(out))
    monkeypatch.setattr(st, "save_file", real)
    assert sorted(os.listdir(out)) == ["last.safetensors", "metrics.jsonl"]      # no temporary left
    assert common.checkpoint_step(out) == 2
    train_vq(CFG, _opts(out, resume=True))
    assert _same(whole, _weights(out / "last.safetensors"))


def _to_old_layout(out):
    """Rewrite out/last.safetensors as the two files earlier versions wrote (weights + state)."""
    path = out / "last.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    step = meta["train_step"]
    st.save_file({k[6:]: v for k, v in tensors.items() if k.startswith("train/")}, str(out / "last.state.safetensors"),
                 metadata={"format": common.STATE_FORMAT, "step": step, "args": meta["args"],
                           "param_groups": meta["param_groups"], "data_state": meta["data_state"]})
    st.save_file({k: v for k, v in tensors.items() if not k.startswith("train/")}, str(path),
                 metadata={"format": meta["format"], "format_version": meta["format_version"],
                           "config": meta["config"], "train_step": step})


def test_run_of_the_earlier_two_file_layout_resumes_and_migrates(tmp_path, whole):
    out = tmp_path / "run"
    train_vq(CFG, _opts(out, stop_at=2))
    _to_old_layout(out)
    (out / ".last.safetensors.tmp999999").write_bytes(b"x" * 100)         # a killed old writer's temporary
    assert common.checkpoint_step(out) == 2
    train_vq(CFG, _opts(out, resume=True))
    assert sorted(os.listdir(out)) == ["last.safetensors", "metrics.jsonl"]   # one file now, temp gone
    assert _same(whole, _weights(out / "last.safetensors"))


def _cli(argv, capsys, fn=None):
    try:
        code = (fn or train_cli.main)(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _vq_argv(out, *extra):
    return ["vq", "--preset", "tiny", "--steps", "2", "--batch", "1", "--sizes", "16", "--out", str(out),
            "--no-progress", "--eval-every", "-1", "--data", "landscape", "--save-every", "1", *extra]


def test_mismatched_earlier_layout_is_refused_and_never_restarts(tmp_path, capsys):
    out = tmp_path / "run"
    train_vq(CFG, _opts(out, stop_at=4))
    _to_old_layout(out)
    weights = (out / "last.safetensors").read_bytes()
    meta = {"format": "nuwa-fast", "format_version": "1", "config": CFG.to_json(), "train_step": "2"}
    st.save_file(_weights(out / "last.safetensors"), str(out / "last.safetensors"), metadata=meta)  # weights at 2
    weights = (out / "last.safetensors").read_bytes()
    state = (out / "last.state.safetensors").read_bytes()
    code, err = _cli(_vq_argv(out, "--resume"), capsys)
    assert code == 3 and "is at step 2 but last.state.safetensors at step 4" in err and "--init" in err, err
    assert "Traceback" not in err
    (out / "last.state.safetensors").unlink()                           # the old advice: delete one
    code, err = _cli(_vq_argv(out, "--resume"), capsys)
    assert code == 3 and "no training state" in err, err
    assert (out / "last.safetensors").read_bytes() == weights            # nothing overwritten
    assert state


def test_resume_and_fresh_run_messages(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(_vq_argv(out, "--resume"), capsys)                  # nothing yet: says so, starts at 0
    assert code == 0 and "no checkpoint yet; starting at step 0" in err, err
    before = (out / "last.safetensors").read_bytes()
    code, err = _cli(_vq_argv(out), capsys)                              # a fresh run would overwrite it
    assert code == 2 and "already holds a checkpoint at step 2: add --resume" in err, err
    assert (out / "last.safetensors").read_bytes() == before
    data = (out / "last.safetensors").read_bytes()
    (out / "last.safetensors").write_bytes(data[: len(data) // 3])        # truncated
    code, err = _cli(_vq_argv(out, "--resume", "--steps", "4"), capsys)
    assert code == 3 and "cannot be resumed" in err and "Traceback" not in err, err


def test_ctrl_c_in_training_names_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = common.save_train_state

    def save_then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(common, "save_train_state", save_then_interrupt)
    code, err = _cli(_vq_argv(out), capsys)
    assert code == 130, err
    assert f"the last complete checkpoint in {out} is at step 1; continue with the same command plus --resume" in err
    assert "nothing was written" not in err


@pytest.mark.parametrize("edit,code,match", [
    (dict(batch="0"), 2, "--batch must be >= 1, got 0"),
    (dict(steps="-1"), 2, "--steps must be >= 1, got -1"),
    (dict(sizes="16,x"), 2, "--sizes: expected comma-separated pixel sizes"),
    (dict(out="FILE"), 2, "is a file; a training run writes a folder"),
    (dict(stage="nuwa", cache="MODEL", vq="MODEL"), 3, "is a model checkpoint, not a token cache"),
    (dict(stage="nuwa", vq="MISSING"), 3, "--vq"),
    (dict(stage="cache", vq="MODEL", size="abc"), 2, "--size must be HxW in pixels"),
    (dict(data="nowhere:1"), 2, "cannot parse"),
])
def test_train_cli_refuses_bad_arguments_before_work(tmp_path, capsys, edit, code, match):
    model = tmp_path / "m.safetensors"
    from nuwa_fast.checkpoint import save_checkpoint
    from models import small_model
    save_checkpoint(small_model(), model)
    (tmp_path / "f.txt").write_text("mine")
    subs = {"FILE": str(tmp_path / "f.txt"), "MODEL": str(model), "MISSING": str(tmp_path / "no.safetensors")}
    edit = {k: subs.get(v, v) for k, v in edit.items()}
    out = edit.pop("out", str(tmp_path / "run"))
    argv = [edit.pop("stage", "vq"), "--out", out, "--no-progress", "--steps", "1"]
    for k, v in edit.items():
        argv += [f"--{k}", v]
    got, err = _cli(argv, capsys)
    assert got == code and match in err and "Traceback" not in err, (argv, got, err)
    assert sorted(os.listdir(tmp_path)) == ["f.txt", "m.safetensors"]     # nothing created
    assert (tmp_path / "f.txt").read_text() == "mine"


def test_eval_cli_arguments(tmp_path, capsys):
    code, err = _cli_eval(["--chain", "4by3"], capsys)
    assert code == 2 and "--chain must be HxW in patches" in err
    code, err = _cli_eval(["--json", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err
    code, err = _cli_eval([str(tmp_path / "none.safetensors")], capsys)
    assert code == 3 and "neither an existing checkpoint" in err


def _cli_eval(argv, capsys):
    return _cli(argv, capsys, train_cli.eval)
