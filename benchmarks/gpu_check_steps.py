"""The bodies of gpu_check's own steps (env, build, smoke); each writes its JSON as it goes.

Run through `python benchmarks/gpu_check.py --step NAME --out DIR [--dry-run]`.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _write(path: Path, doc) -> None:
    path.with_suffix(".tmp").write_text(json.dumps(doc, indent=1, default=str))
    os.replace(path.with_suffix(".tmp"), path)


def _sh(cmd: list[str], timeout: float = 20) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (p.stdout or p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"


def env(out: Path, dry_run: bool) -> int:
    doc = dict(python=sys.version.split()[0], git=_sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]))
    doc["nvidia_smi"] = _sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                             "--format=csv,noheader"]) if shutil.which("nvidia-smi") else "not found"
    doc["nvcc"] = _sh(["nvcc", "--version"]).splitlines()[-1] if shutil.which("nvcc") else "not found"
    doc["cmake"] = _sh(["cmake", "--version"]).splitlines()[0] if shutil.which("cmake") else "not found"
    for m in ("torch", "triton", "pybind11", "pytest", "xdist"):
        try:
            mod = importlib.import_module(m)
            doc[m] = getattr(mod, "__version__", "present")
        except ImportError as e:
            doc[m] = f"absent: {e}"
    _write(out / "env.json", doc)
    import torch
    doc["cuda"] = dict(available=torch.cuda.is_available(), torch_cuda=torch.version.cuda)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        doc["cuda"].update(name=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                           memory_gib=round(p.total_memory / 2 ** 30, 1))
    from nuwa_fast import ops
    doc.update(backends=ops.available_backends(), absent_backends=ops.absent_backends())
    _write(out / "env.json", doc)
    print(json.dumps(doc, indent=1, default=str))
    return 0


def _build_commands(py: str, arch: str) -> dict[str, list[str]]:
    b = ROOT / "build" / "csrc_gpu_check"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    try:
        import pybind11
        pbinc = pybind11.get_include()
    except ImportError:
        import torch
        pbinc = str(Path(torch.__file__).parent / "include")
    return dict(
        cmake_configure=["cmake", "-S", str(ROOT), "-B", str(b), *gen, "-DCMAKE_BUILD_TYPE=Release",
                         f"-DPython3_EXECUTABLE={py}", f"-DNUWA_FAST_CUDA_ARCHS={arch}",
                         f"-DNUWA_FAST_OUTPUT_DIR={ROOT / 'nuwa_fast'}"],
        cmake_build=["cmake", "--build", str(b), "-j", str(os.cpu_count() or 1)],
        nvcc=["nvcc", "-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr",
              "-gencode", f"arch=compute_{arch},code=sm_{arch}", "-Xcompiler", "-fPIC,-fvisibility=hidden",
              "-shared", f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}", f"-I{pbinc}",
              f"-DNUWA_FAST_CUDA_ARCHS_STR=\"{arch}\"", *map(str, sorted((ROOT / "csrc").glob("*.cu"))),
              str(ROOT / "csrc" / "bindings.cpp"), "-ldl", "-o", str(ROOT / "nuwa_fast" / f"_C{ext}")])


def build(out: Path, dry_run: bool) -> int:
    """nuwa_fast._C for this GPU's architecture (90a on an H200) into nuwa_fast/: cmake, else nvcc."""
    arch = os.environ.get("NUWA_FAST_CUDA_ARCHS", "90a")
    if not dry_run:
        import torch
        if torch.cuda.is_available() and "NUWA_FAST_CUDA_ARCHS" not in os.environ:
            major, minor = torch.cuda.get_device_capability(0)
            arch = f"{major}{minor}" + ("a" if major >= 9 else "")
    cmds = _build_commands(sys.executable, arch)
    doc = dict(arch=arch, commands={k: " ".join(v) for k, v in cmds.items()}, dry_run=dry_run,
               cmake=shutil.which("cmake"), nvcc=shutil.which("nvcc"))
    _write(out / "build.json", doc)
    if dry_run:
        print(json.dumps(doc, indent=1))
        return 0
    t0 = time.time()
    for so in (ROOT / "nuwa_fast").glob("_C*.so"):
        so.unlink()
    with open(out / "build.log", "a") as log:
        def run(cmd):
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            return subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        how = "cmake"
        ok = bool(shutil.which("cmake")) and run(cmds["cmake_configure"]) == 0 and run(cmds["cmake_build"]) == 0
        if not ok:
            how = "nvcc"
            ok = run(cmds["nvcc"]) == 0
    doc.update(ok=ok, how=how, seconds=round(time.time() - t0, 1))
    if ok:
        try:
            from nuwa_fast import _C
            doc.update(module=_C.__file__, archs=getattr(_C, "CUDA_ARCHS", "?"))
        except ImportError as e:
            doc.update(ok=False, error=f"built but does not import: {e}")
    _write(out / "build.json", doc)
    print(json.dumps(doc, indent=1))
    return 0 if doc["ok"] else 1


def _smoke_cases(device, dtype):
    """(op, kwargs builder) pairs: small, odd shapes (P = 9, C = 25 with 13 empty, empty context)."""
    import torch
    g = torch.Generator().manual_seed(0)

    def attn(B, H, D, P, C, M, q_start, filled):
        pages = B * (C + 1) + 2
        pool = torch.randn(pages, 2, 2, H, P, D, generator=g)
        pt = torch.full((B, C), -1, dtype=torch.int32)
        pt[:, :filled] = torch.randperm(B * C, generator=g)[:B * filled].view(B, filled).to(torch.int32)
        own = torch.arange(B * C, B * C + B, dtype=torch.int32)
        t = lambda x: x.to(device=device, dtype=dtype)                       # noqa: E731
        return dict(q=t(torch.randn(B, H, M, D, generator=g)), k_cache=t(pool[:, 1, 0]), v_cache=t(pool[:, 1, 1]),
                    page_table=pt.to(device), own_page=own.to(device), q_start=q_start,
                    bias=torch.randn(C + 1, H, generator=g).to(device), own_rel=C,
                    null_k=t(torch.randn(H, D, generator=g)), null_v=t(torch.randn(H, D, generator=g)),
                    scale=D ** -0.5)
    cases = [("patch_attention", f"decode B=1 H=20 D=64 P=256 C=25 (12 filled)", attn(1, 20, 64, 256, 25, 1, 128, 12)),
             ("patch_attention", "decode B=3 H=2 D=48 P=9 C=25 (12 filled)", attn(3, 2, 48, 9, 25, 1, 4, 12)),
             ("patch_attention", "decode empty context B=2 H=2 D=32 P=9", attn(2, 2, 32, 9, 4, 1, 3, 0)),
             ("patch_attention", "prefill B=2 H=4 D=64 P=64 C=25", attn(2, 4, 64, 64, 25, 65, 0, 12)),
             ("patch_attention", "prefill B=1 H=2 D=128 P=16 C=3", attn(1, 2, 128, 16, 3, 17, 0, 3))]
    return cases


def _table_cases(device):
    """adc_gather and the NCP table ops: (op, what, run(fn) -> tensor), compared exactly."""
    import torch
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(25, 4, generator=g).to(device)
    pt = torch.randint(-1, 40, (3, 25), generator=g, dtype=torch.int32).to(device)
    grid, extent, n = (2, 4, 5), (1, 2, 2), 40
    page_index = torch.full((n + 1,), -1, dtype=torch.int32)
    page_index[torch.randperm(n, generator=g)[:15]] = torch.randperm(20, generator=g)[:15].to(torch.int32)
    free = torch.full((21,), -1, dtype=torch.int32)
    used = set(page_index[page_index >= 0].tolist())
    rest = [i for i in range(20) if i not in used]
    free[:len(rest)] = torch.tensor(rest, dtype=torch.int32)
    top = torch.tensor([len(rest)], dtype=torch.int32)
    unmapped = int((page_index[:n] < 0).nonzero()[0])
    mapped = (page_index[:n] >= 0).nonzero().flatten()[:4].to(torch.int32)

    def tables():
        return [t.clone().to(device) for t in (page_index, free, top)]

    def add(fn):
        t = tables()
        page = fn(*t, torch.tensor([unmapped], dtype=torch.int32, device=device))
        return torch.cat([page.flatten(), *t])

    def remove(fn):
        t = tables()
        fn(*t, torch.cat([mapped, torch.tensor([-1], dtype=torch.int32)]).to(device))
        return torch.cat(t)

    cur = torch.tensor([23], dtype=torch.int32, device=device)
    return [("adc_gather", "B=3 H=4 C=25", lambda fn: fn(bias, pt)),
            ("ncp_select", "grid 2x4x5 extent (1,2,2) batch 3", lambda fn: fn(tables()[0], cur, grid, extent, 3)),
            ("ncp_add", "pop a page, map patch", add),
            ("ncp_remove", "free 4 pages (+ padding)", remove)]


def smoke(out: Path, dry_run: bool) -> int:
    """Every backend on every op against the torch reference (patch attention: flash-attention rule)."""
    import torch
    from nuwa_fast import ops
    from nuwa_fast.ops import reference as ref
    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    backends = ops.available_backends()
    doc = dict(device=device, backends=backends, absent_backends=ops.absent_backends(), rows=[])
    def usable(op, be):
        return not dry_run and be in ops.available_backends(op) and (device == "cuda" or be == "torch")

    def record(row, t0):
        row["seconds"] = round(time.time() - t0, 3)
        doc["rows"].append(row)
        _write(out / "smoke.json", doc)
        print(row, flush=True)

    for dtype in (torch.bfloat16, torch.float32):
        for op, what, kw in _smoke_cases(device, dtype):
            for be in ("torch", "triton", "cuda"):
                row, t0 = dict(op=op, case=what, dtype=str(dtype)[6:], backend=be), time.time()
                if not usable(op, be):
                    row["status"] = "dry-run" if dry_run else f"absent: {doc['absent_backends'].get(be, 'cpu')}"
                    record(row, t0)
                    continue
                try:
                    got = ops.get(op, be)(**kw)
                    up = {n: (x.float() if torch.is_tensor(x) and x.is_floating_point() else x) for n, x in kw.items()}
                    want = ref.patch_attention(**up)
                    err = (got.float() - want).abs().nan_to_num(float("inf")).max().item()
                    base = (ref.patch_attention(**kw).float() - want).abs().max().item()
                    tol = 2 * base + (1e-5 if dtype == torch.float32 else 1e-3)
                    row.update(max_err=err, tol=tol, status="ok" if err <= tol else "MISMATCH")
                except Exception as e:                                   # noqa: BLE001 (recorded, next row)
                    row.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
                record(row, t0)
    for op, what, run in _table_cases(device):
        for be in ("torch", "triton", "cuda"):
            row, t0 = dict(op=op, case=what, backend=be), time.time()
            if not usable(op, be):
                row["status"] = "dry-run" if dry_run else f"absent: {doc['absent_backends'].get(be, 'cpu')}"
                record(row, t0)
                continue
            try:
                same = torch.equal(run(ops.get(op, be)).cpu(), run(getattr(ref, op)).cpu())
                row["status"] = "ok" if same else "MISMATCH"
            except Exception as e:                                       # noqa: BLE001
                row.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
            record(row, t0)
    _write(out / "smoke.json", doc)
    bad = [r for r in doc["rows"] if r["status"] in ("MISMATCH", "error")]
    print(f"smoke: {len(doc['rows'])} rows, {len(bad)} bad, backends {backends}")
    return 1 if bad else 0


STEPS = dict(env=env, build=build, smoke=smoke)
