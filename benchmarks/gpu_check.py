"""One prepared check for a lent GPU machine (H200; torch + triton installed, no network).

    bash benchmarks/gpu_check.sh                  # everything, within --budget-s (330 s)
    bash benchmarks/gpu_check.sh --no-flex        # leave FlexAttention out of the kernel benchmark
    bash benchmarks/gpu_check.sh --dry-run        # CPU: print the plan, check every step's command line
    bash benchmarks/gpu_check.sh --cap smoke=20   # change one step's cap (seconds)
    bash benchmarks/gpu_check.sh --only build,smoke   # a subset, in plan order

Steps, most valuable first; each runs as its own process group under its cap (and the time left),
writes its JSON as it goes, and a failed or timed-out step never stops the next one. After every step
$OUT/summary.json (and summary.txt) is rewritten, so whatever ran is on disk even if the machine goes.

Files in --out (default $OUT, else ./gpu_check_out), flat:
  summary.json, summary.txt   the plan, each step's status, seconds, command
  env.json                    GPU, driver, versions, backends and why one is absent
  build.json, build.log       nuwa_fast._C built into the tree for this GPU (cmake, else one nvcc line)
  smoke.json                  every backend on every op vs the torch reference, small shapes
  bench_patch_attention.json  kernel benchmark (paper decode at batch 1 first), rewritten per shape
  bench_engine.json           end-to-end engine benchmark (the engine's default schedule)
  pytest.jsonl                the GPU tests, one line per test as it finishes (pytest-xdist if present)
  kernel_resources.json       sm_90 registers / shared memory / spills under this machine's Triton
  <step>.log                  each step's output

Dry run (CI, no GPU): every step runs a cheap probe instead of its GPU work: env and smoke run for real
on the CPU (smoke lists the cases it would run), build prints its commands, the benchmark and resources
scripts must accept every flag the real run passes (checked against their --help), and pytest
collects the GPU tests.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
BUDGET_S = 330


@dataclass
class Step:
    name: str
    cap_s: int
    cmd: list[str]                      # the real run
    probe: list[str]                    # the dry run
    outputs: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)   # flags the probe's --help must list
    env: dict = field(default_factory=dict)


def plan(out: Path, py: str, no_flex: bool) -> list[Step]:
    me = [py, str(HERE)]
    nproc = os.cpu_count() or 1
    bench = [py, "benchmarks/bench_patch_attention.py", "--out", str(out / "bench_patch_attention.json"),
             "--budget-s", "55"] + (["--no-flex"] if no_flex else [])
    engine = [py, "benchmarks/bench_engine.py", "--device", "cuda", "--budget-s", "40",
              "--out", str(out / "bench_engine.json")]
    xdist = _has("xdist")
    tests = [py, "-m", "pytest", "-q", "-m", "gpu and not slow", "-rfEs", "-p", "no:cacheprovider",
             "-p", "pytest_json_log", "tests"] + (["-n", str(min(8, nproc)), "--dist", "loadfile"] if xdist else [])
    resources = [py, "benchmarks/kernel_resources.py", "--no-csrc", "--only", "arch=90", "--jobs", str(nproc),
                 "--cache", "", "--out", str(out / "kernel_resources.json")]
    return [
        Step("env", 10, me + ["--step", "env", "--out", str(out)], me + ["--step", "env", "--out", str(out)],
             ["env.json"]),
        Step("build", 80, me + ["--step", "build", "--out", str(out)],
             me + ["--step", "build", "--out", str(out), "--dry-run"], ["build.json", "build.log"]),
        Step("smoke", 40, me + ["--step", "smoke", "--out", str(out)],
             me + ["--step", "smoke", "--out", str(out), "--dry-run"], ["smoke.json"],
             env={"NUWA_FAST_TRITON_AUTOTUNE": "0"}),                 # correctness: no autotune compiles
        Step("kernel-bench", 70, bench, [py, bench[1], "--help"], ["bench_patch_attention.json"],
             flags=[f for f in bench[2:] if f.startswith("--")]),
        Step("engine-bench", 50, engine, [py, engine[1], "--help"], ["bench_engine.json"],
             flags=[f for f in engine[2:] if f.startswith("--")]),
        Step("gpu-tests", 60, tests, [py, "-m", "pytest", "-q", "--collect-only", "-m", "gpu and not slow",
                                      "-p", "no:cacheprovider", "-p", "pytest_json_log", "tests"],
             ["pytest.jsonl"], env={"NUWA_PYTEST_JSON": str(out / "pytest.jsonl")}),
        Step("aot-resources", 20, resources, [py, resources[1], "--help"], ["kernel_resources.json"],
             flags=[f for f in resources[2:] if f.startswith("--")]),
    ]


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "benchmarks"), env.get("PYTHONPATH")]))
    if not shutil.which("nvcc"):
        for d in [env.get("CUDA_HOME", ""), "/usr/local/cuda", *sorted(map(str, Path("/usr/local").glob("cuda-*")))]:
            if d and Path(d, "bin", "nvcc").exists():
                env["PATH"], env["CUDA_HOME"] = f"{d}/bin{os.pathsep}{env['PATH']}", d
                break
    return env


def run_step(step: Step, cmd: list[str], seconds: float, log: Path, env: dict) -> tuple[str, int | None]:
    """Run cmd in its own process group; on timeout kill the whole group (xdist workers too)."""
    with open(log, "a") as f:
        f.write(f"===== {step.name}: {' '.join(cmd)} (timeout {seconds:.0f} s)\n")
        f.flush()
        p = subprocess.Popen(cmd, cwd=ROOT, env=dict(env, **step.env), stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                    p.wait(timeout=5)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            return "timeout", None
    if rc == 5 and step.name == "gpu-tests":
        return "no tests collected", rc
    return ("ok" if rc == 0 else "failed"), rc


def check_flags(step: Step, log: Path) -> str | None:
    """Dry run: every flag the real command passes must be in the probe's --help output."""
    text = log.read_text(errors="replace")
    missing = [f for f in step.flags if f not in text]
    return f"flags not accepted by {step.cmd[1]}: {missing}" if missing else None


def harness(a) -> int:
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(out, a.python, a.no_flex)
    if a.only:
        unknown = set(a.only.split(",")) - {s.name for s in steps}
        if unknown:
            raise SystemExit(f"--only: no step {sorted(unknown)}; steps are {[s.name for s in steps]}")
        steps = [s for s in steps if s.name in a.only.split(",")]
    for item in filter(None, a.cap.split(",")):
        name, cap = item.split("=")
        match = [s for s in steps if s.name == name]
        if not match:
            raise SystemExit(f"--cap: no step {name!r}; steps are {[s.name for s in steps]}")
        match[0].cap_s = int(cap)
    total = sum(s.cap_s for s in steps)
    mode = "dry run (probes only)" if a.dry_run else "GPU run"
    lines = [f"gpu_check {mode}: {len(steps)} steps, caps sum {total} s, budget {a.budget_s} s, out {out}"]
    for i, s in enumerate(steps, 1):
        lines.append(f"  {i}. {s.name:14s} cap {s.cap_s:3d} s  -> {', '.join(s.outputs)}  $ {shlex.join(s.cmd)}")
    print("\n".join(lines), flush=True)
    if total > a.budget_s:
        print(f"gpu_check: the caps ({total} s) exceed the budget ({a.budget_s} s)", file=sys.stderr)
        return 2
    env = _env()
    t0 = time.time()
    doc = dict(mode="dry-run" if a.dry_run else "gpu", budget_s=a.budget_s, caps_total_s=total, out=str(out),
               started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
               steps=[dict(name=s.name, cap_s=s.cap_s, cmd=s.cmd, outputs=s.outputs, status="pending")
                      for s in steps])

    def save():
        (out / "summary.json.tmp").write_text(json.dumps(doc, indent=1))
        os.replace(out / "summary.json.tmp", out / "summary.json")
        rows = [f"{r['name']:14s} {r['status']:20s} {r.get('seconds', 0):6.1f} s / cap {r['cap_s']} s"
                + (f"  ({r['detail']})" if r.get("detail") else "") for r in doc["steps"]]
        (out / "summary.txt").write_text("\n".join(lines + [""] + rows) + "\n")

    save()
    for s, row in zip(steps, doc["steps"]):
        left = a.budget_s - (time.time() - t0)
        if left < 5:
            row.update(status="skipped: out of time")
            save()
            continue
        log = out / f"{s.name}.log"
        t = time.time()
        status, rc = run_step(s, s.probe if a.dry_run else s.cmd, min(s.cap_s, left), log, env)
        row.update(status=status, rc=rc, seconds=round(time.time() - t, 1), log=log.name)
        if a.dry_run and status == "ok" and s.flags:
            bad = check_flags(s, log)
            if bad:
                row.update(status="failed", detail=bad)
        row["present"] = [f for f in s.outputs if (out / f).exists()]
        print(f"[{s.name}] {row['status']} in {row['seconds']} s (log {log.name})", flush=True)
        save()
    doc["seconds"] = round(time.time() - t0, 1)
    save()
    print(f"gpu_check done in {doc['seconds']} s; files: {' '.join(sorted(p.name for p in out.iterdir()))}")
    failed = [r["name"] for r in doc["steps"] if r["status"] not in ("ok", "no tests collected")]
    return 1 if a.dry_run and failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_check_out"))
    ap.add_argument("--budget-s", type=int, default=BUDGET_S)
    ap.add_argument("--no-flex", action="store_true", help="no FlexAttention in the kernel benchmark")
    ap.add_argument("--dry-run", action="store_true", help="probes only (CPU): the plan and the command lines")
    ap.add_argument("--cap", default="", help="override caps: name=seconds[,name=seconds]")
    ap.add_argument("--only", default="", help="comma-separated step names (default: all)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)        # run one step's body (internal)
    a = ap.parse_args(argv)
    if a.step is None:
        return harness(a)
    from gpu_check_steps import STEPS                                     # benchmarks/ is on sys.path
    return STEPS[a.step](Path(a.out), a.dry_run)


if __name__ == "__main__":
    sys.exit(main())
