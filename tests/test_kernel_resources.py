"""Ahead-of-time compile of every kernel for sm_80 and sm_90, no GPU needed (compile results, not runs).

benchmarks/kernel_resources.py compiles every Triton config the patch-attention autotuner can choose
(`_configs` after `_prune`) and the fixed-config kernels with Triton's compiler for GPUTarget sm_80 and
sm_90, takes the csrc kernels' `nvcc -Xptxas -v` output (the log .ci/compile_csrc.sh leaves in
build/, else nvcc itself, else the committed rows), and writes the table to a temporary file (the
committed benchmarks/results/kernel_resources.json changes only when that script is run on it).
Rows whose key (Triton version, kernel source, specialization, target, options) matches the committed
file are reused, so only changed kernels recompile; a cold run compiles ~200 configs in parallel.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "kernel_resources.json"
PTXAS_LOG = ROOT / "build" / "csrc_ptxas.log"


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    out = tmp_path_factory.mktemp("resources") / "kernel_resources.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "benchmarks/kernel_resources.py", "--out", str(out), "--reuse", str(OUT),
           "--jobs", str(min(os.cpu_count() or 1, 4))]
    newest = max(f.stat().st_mtime for f in (ROOT / "csrc").iterdir())
    if PTXAS_LOG.exists() and PTXAS_LOG.stat().st_mtime >= newest:
        cmd += ["--ptxas-log", str(PTXAS_LOG)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    print(p.stdout[-4000:], p.stderr[-4000:])
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(out.read_text())


def test_every_autotune_config_is_compiled_for_sm80_and_sm90(resources):
    from nuwa_fast.kernels import patch_attention as pa
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kernel_resources as kr
    have = {(r["arch"], r["mode"], r["dtype"], r["head_dim"], r["BLOCK_M"], r["BLOCK_N"], r["num_warps"],
             r["num_stages"]) for r in resources["triton_kernels"] if r.get("autotune")}
    want = set()
    for arch in ("sm_80", "sm_90"):
        for dt in kr.DTYPES:
            for D in kr.HEAD_DIMS:
                block_d = max(16, 1 << (D - 1).bit_length())
                for mode, M in (("decode", 1), ("prefill", kr.P_PAPER + 1)):
                    for c in pa._prune(pa._configs(mode == "decode"), dict(P=kr.P_PAPER, M=M), BLOCK_D=block_d,
                                       IEEE=dt == "fp32"):
                        want.add((arch, mode, dt, D, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                  c.num_stages))
    print(f"\n{len(want)} autotune configs x arch; {len(resources['triton_kernels'])} Triton rows")
    assert want and want == have
    kernels = {(r["kernel"], r["arch"]) for r in resources["triton_kernels"]}
    for k in ("_patch_attn_kernel", "_reduce_kernel", "_adc_gather_kernel", "_select_kernel", "_add_kernel",
              "_remove_kernel"):
        assert {(k, "sm_80"), (k, "sm_90")} <= kernels, k


def test_no_autotune_config_spills(resources):
    rows = [r for r in resources["triton_kernels"] if r.get("autotune") or r["kernel"] != "_patch_attn_kernel"]
    worst = max(rows, key=lambda r: r["registers"])
    print(f"\nmost registers: {worst['registers']} ({worst})")
    spilling = [r for r in rows if r["spill_stores"] or r["spill_loads"] or r["stack_bytes"]]
    assert not spilling, f"{len(spilling)} choosable configs spill: {spilling[:5]}"
    assert all(r["registers"] <= 255 for r in rows)


def test_the_spill_table_is_measured(resources):
    """Every config kernels/triton/patch_attention.py's SPILLS prunes was measured to spill (on sm_80 or sm_90)."""
    from nuwa_fast.kernels import patch_attention as pa
    spilled = {(r["mode"], r["dtype"] == "fp32", max(16, 1 << (r["head_dim"] - 1).bit_length()), r["BLOCK_M"],
                r["BLOCK_N"], r["num_warps"], r["num_stages"])
               for r in resources["triton_kernels"]
               if r["kernel"] == "_patch_attn_kernel" and (r["spill_stores"] or r["spill_loads"])}
    for (mode, fp32, block_d), cfgs in pa.SPILLS.items():
        for c in cfgs:
            assert (mode, fp32, block_d, *c) in spilled, (mode, fp32, block_d, c)


def test_csrc_kernels_compile_for_sm80_and_sm90a_without_spills(resources):
    rows = resources["csrc_kernels"]
    if not rows:
        pytest.skip("no nvcc, no ptxas log and no committed csrc rows")
    archs = {r["arch"] for r in rows}
    assert {"sm_80", "sm_90a"} <= archs, archs
    names = {(re.search(r"(\w+)\s*[<(]", r["kernel"]).group(1), r["arch"]) for r in rows}
    print(f"\n{len(rows)} csrc entries: {sorted(names)}; max registers {max(r['registers'] for r in rows)}")
    for k in ("decode_kernel", "decode_reduce_kernel", "prefill_simt_kernel", "prefill_wmma_kernel",
              "ncp_select_kernel", "ncp_add_kernel", "ncp_remove_kernel", "adc_gather_kernel"):
        assert {(k, "sm_80"), (k, "sm_90a")} <= names, k
    spilling = [r for r in rows if r.get("spill_stores") or r.get("spill_loads")]
    assert not spilling, spilling[:5]
