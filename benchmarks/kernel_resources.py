"""Ahead-of-time compile of every kernel for sm_80 and sm_90, no GPU needed: registers, shared memory
and spills per kernel and config, as JSON.

    python benchmarks/kernel_resources.py --out benchmarks/results/kernel_resources.json
    python benchmarks/kernel_resources.py --all     # also the configs the pruning removes (why they go)
    python benchmarks/kernel_resources.py --no-csrc # Triton only

Triton: each `triton.Config` the patch-attention autotuner can choose (`_configs` after `_prune` at the
paper's P = 256) for decode and prefill (split or not: a runtime flag, one binary), fp32, bf16 and
fp16, head_dim 32, 64 and 128, the configs `SPILLS` prunes (the rows that justify it), plus the
fixed-config kernels (split reduce, ADC gather, NCP tables), compiled with `triton.compile(ASTSource, GPUTarget("cuda", arch, 32))`
the way the JIT specializes a launch (pointers 16-byte aligned, unit strides constant). ptxas prints
registers and spill bytes (TRITON_DUMP_PTXAS_LOG); shared memory is the kernel's metadata.
csrc: every .cu under csrc/ with `nvcc -Xptxas -v` for sm_80 and sm_90a; or, with --ptxas-log, the
log that .ci/compile_csrc.sh wrote while building the module (same flags, no second compile).

Compiles run in parallel (--jobs) and results are cached by source hash, target and options under
--cache; with --reuse, rows of a previous file whose key matches are taken as they are (the test does
this with the committed file: only changed kernels recompile). TRITON_INTERPRET must
be unset: interpreted kernels cannot be compiled.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHS = (80, 90)
HEAD_DIMS = (32, 64, 128)
DTYPES = ("fp32", "bf16", "fp16")
P_PAPER = 256

# pointer element types per kernel argument; other non-constexpr arguments are i32 unless listed in FLOATS
_PTRS = {
    "_patch_attn_kernel": dict(Q="q", K="q", V="q", NK="q", NV="q", OUT="q", PT="i32", OWN="i32", BIAS="fp32",
                               M_PART="fp32", L_PART="fp32", ACC_PART="fp32"),
    "_reduce_kernel": dict(M_PART="fp32", L_PART="fp32", ACC_PART="fp32", OUT="q"),
    "_adc_gather_kernel": dict(BIAS="fp32", PT="i32", OUT="fp32"),
    "_select_kernel": dict(PI="i32", CUR="i32", OUT="i32"),
    "_add_kernel": dict(PI="i32", FREE_STACK="i32", FREE_TOP="i32", CUR="i32", OUT="i32"),
    "_remove_kernel": dict(PI="i32", FREE_STACK="i32", FREE_TOP="i32", PATCHES="i32"),
}
FLOATS = {"qk_scale"}
# strides the engine's tensors always have as 1 (the JIT turns an int argument equal to 1 into a constant)
_UNIT = {"stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_nkd", "stride_nvd", "stride_bh", "stride_ptc",
         "stride_oc"}


def _load_kernels():
    """kernels/triton/*.py as `nuwa_fast.kernels.*` modules, from the source tree (no install needed)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_resources: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
    sys.path.insert(0, str(ROOT))
    from nuwa_fast.ops import import_kernels
    import_kernels()
    import importlib
    return {name: importlib.import_module(f"nuwa_fast.kernels.{name}")
            for name in ("patch_attention", "adc_gather", "ncp")}


def _jobs(mods, include_pruned: bool) -> list[dict]:
    """One dict per compile: kernel, arch, constexprs, options and what the row reports."""
    pa = mods["patch_attention"]
    jobs = []
    for arch in ARCHS:
        for dt in DTYPES:
            for D in HEAD_DIMS:
                block_d = max(16, 1 << (D - 1).bit_length())
                base = dict(HEAD_DIM=D, BLOCK_D=block_d, BLOCK_C=32, UPCAST=False, IEEE=dt == "fp32")
                for mode, M in (("decode", 1), ("prefill", P_PAPER + 1)):
                    configs = pa._configs(mode == "decode")
                    kept = pa._prune(configs, dict(P=P_PAPER, M=M), BLOCK_D=block_d, IEEE=dt == "fp32")
                    spills = pa.SPILLS.get((mode, dt == "fp32", block_d), ())
                    for cfg in configs:
                        chosen = any(cfg is k for k in kept)
                        if not chosen and not include_pruned and pa.config_key(cfg) not in spills:
                            continue                     # the rows that justify SPILLS stay in the file
                        jobs.append(dict(
                            kernel="_patch_attn_kernel", module="patch_attention", arch=arch, dtype=dt,
                            consts=dict(base, **cfg.kwargs),
                            options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                            row=dict(mode=mode, dtype=dt, head_dim=D, **cfg.kwargs, num_warps=cfg.num_warps,
                                     num_stages=cfg.num_stages, autotune=chosen)))
                jobs.append(dict(kernel="_reduce_kernel", module="patch_attention", arch=arch, dtype=dt,
                                 consts=dict(HEAD_DIM=D, BLOCK_D=block_d, BLOCK_S=32), options=dict(num_warps=4),
                                 row=dict(dtype=dt, head_dim=D, BLOCK_S=32, num_warps=4, autotune=False)))
        for kernel, module, consts in (("_adc_gather_kernel", "adc_gather", dict(BLOCK_H=32, BLOCK_C=128)),
                                       ("_select_kernel", "ncp", dict(BLOCK_B=32, BLOCK_C=128)),
                                       ("_add_kernel", "ncp", {}), ("_remove_kernel", "ncp", dict(BLOCK_K=256))):
            jobs.append(dict(kernel=kernel, module=module, arch=arch, dtype="fp32", consts=consts,
                             options=dict(num_warps=4), row=dict(**consts, num_warps=4, autotune=False)))
    return jobs


_MODS = None
_PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def _source(job: dict, mods):
    """The ASTSource and target of a job, specialized as the JIT would specialize the launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    fn = getattr(mods[job["module"]], job["kernel"])
    names = fn.arg_names
    ptrs = _PTRS[job["kernel"]]
    qty = job["dtype"]
    sig, consts = {}, dict(job["consts"])
    for i, n in enumerate(names):
        if i in fn.constexprs:
            sig[n] = "constexpr"
        elif n in ptrs:
            sig[n] = "*" + (qty if ptrs[n] == "q" else ptrs[n])
        elif n in _UNIT:
            sig[n] = "constexpr"
            consts[n] = 1
        else:
            sig[n] = "fp32" if n in FLOATS else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n].startswith("*")}
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return src, GPUTarget("cuda", job["arch"], 32)


def job_key(job: dict, mods) -> str:
    """Triton version + the source of every jit function of the kernel's module + specialization + target
    + options: a row whose key matches was measured on exactly this code. (Triton's own source hash
    also covers line numbers, so a docstring edit would force every config to recompile.)"""
    import triton
    from triton.runtime.jit import JITFunction
    mod = mods[job["module"]]
    jit_src = "\n".join(v.src for _, v in sorted(vars(mod).items()) if isinstance(v, JITFunction))
    src, target = _source(job, mods)
    spec = f"{job['kernel']}|{sorted(src.signature.items())}|{sorted(src.constants.items())}|{sorted(src.attrs)}"
    return hashlib.sha256(f"{triton.__version__}|{jit_src}|{spec}|{target.arch}|{sorted(job['options'].items())}"
                          .encode()).hexdigest()[:24]


def _compile(job: dict, cache: str | None) -> dict:
    """Compile one job (in a worker process); returns registers, shared bytes, stack and spills."""
    global _MODS
    import triton
    if _MODS is None:
        _MODS = _load_kernels()
    src, target = _source(job, _MODS)
    key = job_key(job, _MODS)
    hit = Path(cache) / f"{key}.json" if cache else None
    if hit is not None and hit.exists():
        return json.loads(hit.read_text())
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):              # ptxas -v log (TRITON_DUMP_PTXAS_LOG, _init_worker)
        k = triton.compile(src, target=target, options=job["options"])
    log = buf.getvalue()
    regs, spills = _REGS.findall(log), _PTXAS.findall(log)
    res = dict(shared_bytes=int(k.metadata.shared), compile_s=round(time.perf_counter() - t0, 2))
    if regs and spills:
        stack, st, ld = (int(x) for x in spills[-1])
        res.update(registers=int(regs[-1]), stack_bytes=stack, spill_stores=st, spill_loads=ld)
    else:                                              # a Triton without the log knob: read the cubin
        res.update(_cuobjdump(k.asm["cubin"]))
    if hit is not None:
        hit.parent.mkdir(parents=True, exist_ok=True)
        hit.write_text(json.dumps(res))
    return res


def _init_worker(tmp: str) -> None:
    # every compile fresh (so ptxas runs and logs) into a throwaway cache
    os.environ.update(TRITON_CACHE_DIR=tmp, TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1",
                      TRITON_DEFAULT_FP_FUSION=os.environ.get("TRITON_DEFAULT_FP_FUSION", "1"))


def _cuobjdump(cubin: bytes) -> dict:
    """REG and STACK from `cuobjdump --dump-resource-usage` (spill bytes are not listed there: a nonzero
    stack frame is counted as spilling)."""
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool if tool.exists() else "cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if not m:
        raise RuntimeError(f"no resource usage in cuobjdump output:\n{out[-1000:]}")
    stack = int(m.group(2))
    return dict(registers=int(m.group(1)), stack_bytes=stack, spill_stores=stack, spill_loads=stack,
                source="cuobjdump")


# ---- csrc: nvcc -Xptxas -v ---------------------------------------------------------------------------
_ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '(\S+)' for '(sm_\w+)'")
_PROPS = re.compile(r"ptxas info\s*: Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str) -> list[dict]:
    """Rows from `ptxas -v` output: one per (entry function, arch), demangled with cu++filt/c++filt."""
    rows, cur = [], None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            cur = dict(kernel=m.group(1), arch=m.group(2))
        elif cur is not None and (m := _PTXAS.search(line)):
            cur.update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif cur is not None and (m := _PROPS.search(line)):
            cur.update(registers=int(m.group(1)), shared_bytes=int(m.group(2) or 0))
            rows.append(cur)
            cur = None
    filt = shutil.which("cu++filt") or shutil.which("c++filt")
    if filt and rows:
        out = subprocess.run([filt], input="\n".join(r["kernel"] for r in rows), capture_output=True, text=True)
        names = out.stdout.splitlines()
        if len(names) == len(rows):
            for r, n in zip(rows, names):
                r["mangled"], r["kernel"] = r["kernel"], n
    seen, uniq = set(), []
    for r in rows:                                               # the same entry can be logged twice
        k = (r.get("mangled", r["kernel"]), r["arch"])
        if k not in seen:
            seen.add(k)
            uniq.append(r)
    return sorted(uniq, key=lambda r: (r["arch"], r["kernel"]))      # build order varies with -j


def _nvcc_one(nvcc: str, cu: Path) -> str:
    cmd = [nvcc, "-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas", "-v",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90a,code=sm_90a",
           f"-I{ROOT / 'csrc'}", "-c", str(cu), "-o", os.devnull]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"nvcc failed on {cu.name}:\n{p.stderr[-3000:]}")
    return p.stderr


def _nvcc() -> str | None:
    nvcc = shutil.which("nvcc")
    if not nvcc and os.environ.get("CUDA_HOME"):
        nvcc = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    return nvcc if nvcc and os.path.exists(nvcc) else None


def csrc_rows(jobs: int, ptxas_log: str | None) -> tuple[list[dict], str | None]:
    """(rows, nvcc version); (None, None) when there is neither a log nor nvcc."""
    nvcc = _nvcc()
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1] \
        if nvcc else "unknown nvcc"
    if ptxas_log:
        return parse_ptxas(Path(ptxas_log).read_text()), version
    if not nvcc:
        return None, None
    with cf.ThreadPoolExecutor(jobs) as ex:
        logs = list(ex.map(lambda cu: _nvcc_one(nvcc, cu), sorted((ROOT / "csrc").glob("*.cu"))))
    return parse_ptxas("\n".join(logs)), version


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernel_resources.json"))
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 16))
    ap.add_argument("--cache", default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                    "nuwa_fast", "kernel_resources"),
                    help="result cache ('' = none)")
    ap.add_argument("--all", action="store_true", help="also the configs the pruning removes")
    ap.add_argument("--reuse", default=None, help="a previous JSON: rows whose key matches are not recompiled")
    ap.add_argument("--no-csrc", action="store_true")
    ap.add_argument("--only", default="", help="e.g. arch=90,dtype=fp32,mode=prefill: compile a subset")
    ap.add_argument("--ptxas-log", default=None, help="parse this nvcc -Xptxas -v log instead of compiling csrc")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    import triton
    mods = _load_kernels()
    jobs = _jobs(mods, a.all)
    for cond in filter(None, a.only.split(",")):
        k, v = cond.split("=")
        jobs = [j for j in jobs if str(j["arch"] if k == "arch" else j["row"].get(k, j.get(k))) == v]
    keys = [job_key(j, mods) for j in jobs]
    known, old = {}, {}
    if a.reuse and Path(a.reuse).exists():
        old = json.loads(Path(a.reuse).read_text())
        known = {r["key"]: r for r in old.get("triton_kernels", []) if "key" in r}
    todo = [j for j, k in zip(jobs, keys) if k not in known]
    with tempfile.TemporaryDirectory() as tmp, \
            cf.ProcessPoolExecutor(max(1, a.jobs), initializer=_init_worker, initargs=(tmp,)) as ex:
        fresh = dict(zip([job_key(j, mods) for j in todo],
                         ex.map(_compile, todo, [a.cache or None] * len(todo), chunksize=2)))
    rows = []
    for j, k in zip(jobs, keys):
        measured = known[k] if k in known else fresh[k]          # labels (autotune=...) always from this run
        res = {n: measured[n] for n in ("registers", "shared_bytes", "stack_bytes", "spill_stores", "spill_loads",
                                        "source") if n in measured}
        r = dict(kernel=j["kernel"], arch=f"sm_{j['arch']}", **j["row"], **res, key=k)
        rows.append(r)
    t_triton = time.perf_counter() - t0
    csrc, nvcc = (None, None) if a.no_csrc else csrc_rows(a.jobs, a.ptxas_log)
    if csrc is None:                       # not measured here: keep the previous file's rows, if any
        csrc, nvcc = old.get("csrc_kernels", []), old.get("nvcc", "not measured")
    doc = dict(
        triton=triton.__version__, nvcc=nvcc, p=P_PAPER,
        note="registers, shared memory (bytes) and spills per kernel and config from ptxas -v; autotune=true "
             "rows are the configs the patch-attention autotuner can choose",
        triton_kernels=rows, csrc_kernels=csrc)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    spill = [r for r in rows + csrc if (r.get("spill_stores", 0) or r.get("spill_loads", 0))
             and r.get("autotune", True)]                 # choosable configs, fixed kernels and csrc
    print(f"kernel_resources: {len(rows)} Triton rows ({len(todo)} compiled, {len(rows) - len(todo)} reused) in "
          f"{t_triton:.0f} s ({a.jobs} jobs), {len(csrc)} csrc "
          f"entries ({nvcc}); {len(spill)} choosable spill; wrote {a.out} in {time.perf_counter() - t0:.0f} s")
    for r in spill:
        print("  spills:", {k: r[k] for k in r if k not in ("mangled", "note")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
