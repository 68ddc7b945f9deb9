"""benchmarks/gpu_check.sh --dry-run on the CPU: the plan (a cap per step, summing to <= 330 s), every
step's command line probed, every step's JSON where the plan says, and a failing step that leaves the
JSON of the steps before it and does not stop the ones after it."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "build", "smoke", "kernel-bench", "engine-bench", "gpu-tests", "aot-resources"]


def dry_run(out, *args):
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out), *args], cwd=ROOT,
                       env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=900)
    print(p.stdout[-6000:], p.stderr[-3000:])
    return p


def test_dry_run_prints_the_plan_and_every_probe_passes(tmp_path):
    p = dry_run(tmp_path, "--no-flex")
    assert p.returncode == 0
    doc = json.loads((tmp_path / "summary.json").read_text())
    caps = [s["cap_s"] for s in doc["steps"]]
    assert [s["name"] for s in doc["steps"]] == STEPS
    assert all(c > 0 for c in caps) and sum(caps) == doc["caps_total_s"] <= 330
    for s in doc["steps"]:
        assert f"{s['name']:14s} cap {s['cap_s']:3d} s" in p.stdout           # the plan, one line per step
        assert s["status"] == "ok", s
    bench = next(s for s in doc["steps"] if s["name"] == "kernel-bench")
    assert "--no-flex" in bench["cmd"] and "--budget-s" in bench["cmd"]
    for f in ("env.json", "build.json", "smoke.json", "summary.txt"):
        assert (tmp_path / f).exists(), f
    env = json.loads((tmp_path / "env.json").read_text())
    assert "torch" in env["backends"]
    for name, why in env["absent_backends"].items():                        # absent backends say why
        assert why and ":" in why, (name, why)
    smoke = json.loads((tmp_path / "smoke.json").read_text())
    covered = {(r["op"], r["backend"]) for r in smoke["rows"]}
    ops = {"patch_attention", "adc_gather", "ncp_select", "ncp_add", "ncp_remove"}
    assert covered == {(o, b) for o in ops for b in ("torch", "triton", "cuda")}
    build = json.loads((tmp_path / "build.json").read_text())
    assert "cmake_build" in build["commands"] and "sm_90a" in build["commands"]["nvcc"]


def test_a_failed_step_keeps_the_json_before_it(tmp_path):
    p = dry_run(tmp_path, "--only", "env,build,smoke,aot-resources", "--cap", "smoke=0")
    assert p.returncode == 1                                                  # a dry run reports the failure
    doc = json.loads((tmp_path / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in doc["steps"]}
    assert status == {"env": "ok", "build": "ok", "smoke": "timeout", "aot-resources": "ok"}, status
    assert (tmp_path / "env.json").exists() and (tmp_path / "build.json").exists()


def test_caps_over_budget_are_refused(tmp_path):
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path),
                        "--budget-s", "100"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "exceed the budget" in p.stderr


def test_smoke_body_runs_on_cpu(tmp_path):
    """The smoke step for real (not its probe): on a CPU only the torch rows run, against fp32 math."""
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--step", "smoke", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(p.stdout[-2000:], p.stderr[-2000:])
    assert p.returncode == 0
    rows = json.loads((tmp_path / "smoke.json").read_text())["rows"]
    ran = [r for r in rows if r["backend"] == "torch"]
    assert len(ran) == 14 and all(r["status"] == "ok" for r in ran)
