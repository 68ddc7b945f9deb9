#!/usr/bin/env bash
# One prepared GPU check for a lent machine (H200; torch + triton installed, no network).
#   bash benchmarks/gpu_check.sh            # writes logs and JSON into $OUT (default ./gpu_check_out)
# Steps, each under `timeout` and within one overall deadline (default 470 s, GPU_CHECK_BUDGET_S);
# a failing step is recorded in summary.txt and the script goes on:
#   1. environment (nvidia-smi, nvcc, versions)          -> summary.txt
#   2. build nuwa_fast._C in the tree (cmake, else nvcc)  -> build.log
#   3. pytest -m "not slow" cuda, then triton kernel tests -> pytest.log
#   4. cuda decode/prefill micro-benchmark vs copy BW    -> cuda_bench.json (table in summary.txt)
#   5. benchmarks/bench_patch_attention.py --out         -> bench_patch_attention.{log,json}
#   6. benchmarks/bench_engine.py (if present)           -> bench_engine.{log,json}
#   7. the other GPU-marked tests, with the time left    -> pytest.log (appended)
# At most 8 files, flat, in $OUT.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
START=$(date +%s)
DEADLINE=$(( START + ${GPU_CHECK_BUDGET_S:-470} ))
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if ! command -v nvcc >/dev/null 2>&1; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
    if [[ -n "$d" && -x "$d/bin/nvcc" ]]; then export PATH="$d/bin:$PATH"; export CUDA_HOME="$d"; break; fi
  done
fi

say() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME CAP_SECONDS LOGFILE CMD...: runs CMD with a timeout of min(CAP, time left), appends
# its output to LOGFILE and a status line to the summary. Never aborts the script.
run_step() {
  local name="$1" cap="$2" log="$3"; shift 3
  local left=$(( DEADLINE - $(date +%s) ))
  if (( left < 15 )); then say "[$name] SKIPPED: out of time"; return 0; fi
  local t=$(( cap < left ? cap : left )) s=$(date +%s)
  echo "===== $name (timeout ${t}s) =====" >> "$log"
  timeout --kill-after=10 "$t" "$@" >> "$log" 2>&1
  local rc=$?
  local status="ok"
  if (( rc == 124 || rc == 137 )); then status="TIMEOUT"
  elif (( rc == 5 )) && [[ "$name" == pytest* ]]; then status="no tests collected"
  elif (( rc != 0 )); then status="FAILED rc=$rc"; fi
  say "[$name] $status in $(( $(date +%s) - s ))s (log: $(basename "$log"))"
  return 0
}

# ---- 1. environment ---------------------------------------------------------------------------------
{
  echo "gpu_check $(date -u +%FT%TZ) git $(git rev-parse --short HEAD 2>/dev/null || echo n/a)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -n 2
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1 || echo 'not found')"
  echo "cmake: $(cmake --version 2>/dev/null | head -n 1 || echo 'not found')"
  "$PY" - <<'EOF' 2>&1
import importlib, sys
print("python", sys.version.split()[0])
for m in ("torch", "triton", "pybind11", "pytest"):
    try:
        mod = importlib.import_module(m)
        extra = f" (cuda {mod.version.cuda})" if m == "torch" else ""
        print(f"{m} {mod.__version__}{extra}")
    except Exception as e:  # noqa: BLE001
        print(f"{m}: {type(e).__name__}: {e}")
EOF
} >> "$SUMMARY"

# ---- 2. build nuwa_fast._C into the tree ---------------------------------------------------------------
build_cmake() {
  local b="$ROOT/build/csrc_gpu_check"
  local gen=()
  if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
  cmake -S "$ROOT" -B "$b" ${gen[@]+"${gen[@]}"} -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$(command -v "$PY")" \
    -DNUWA_FAST_CUDA_ARCHS="${NUWA_FAST_CUDA_ARCHS:-90a}" -DNUWA_FAST_OUTPUT_DIR="$ROOT/nuwa_fast" &&
    cmake --build "$b" -j "$(nproc)"
}
build_nvcc() {  # no cmake: one nvcc line (static CUDA runtime, as the CMake build)
  local pyinc pbinc ext arch="${NUWA_FAST_CUDA_ARCHS:-90a}"
  pyinc="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
  pbinc="$("$PY" -c "import pybind11; print(pybind11.get_include())" 2>/dev/null ||
           "$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")"
  ext="$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")"
  nvcc -O3 -std=c++17 -lineinfo --expt-relaxed-constexpr -gencode "arch=compute_${arch%%;*},code=sm_${arch%%;*}" \
    -Xcompiler -fPIC,-fvisibility=hidden -shared -Icsrc -I"$pyinc" -I"$pbinc" -DNUWA_FAST_HAVE_NVTX \
    -DNUWA_FAST_CUDA_ARCHS_STR="\"${arch%%;*}\"" csrc/*.cu csrc/bindings.cpp -ldl -o "nuwa_fast/_C$ext"
}
build() {
  rm -f "$ROOT"/nuwa_fast/_C*.so
  if command -v cmake >/dev/null 2>&1; then build_cmake || { echo "cmake build failed, trying nvcc"; build_nvcc; }
  else build_nvcc; fi
  "$PY" -c "from nuwa_fast import _C, ops; print('built', _C.__file__, 'archs', getattr(_C, 'CUDA_ARCHS', '?'), 'backends', ops.available_backends())"
}
export ROOT OUT PY
export -f build build_cmake build_nvcc   # `timeout` runs commands, not shell functions
run_step build 240 "$OUT/build.log" bash -c build
tail -n 1 "$OUT/build.log" >> "$SUMMARY"

# ---- 3. kernel tests (cuda first: the Triton JIT compiles can take a while) -------------------------------
tests=()
for f in tests/test_cuda_kernels.py tests/test_triton_kernels.py; do
  [[ -f "$f" ]] || continue
  tests+=("$f")
  name="pytest-$(basename "$f" .py)"
  n0=$(cat "$OUT/pytest.log" 2>/dev/null | wc -l)
  run_step "$name" 180 "$OUT/pytest.log" "$PY" -m pytest -q -m "not slow" -rfEs -p no:cacheprovider "$f"
  tail -n +"$(( n0 + 1 ))" "$OUT/pytest.log" | grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed|skipped)" |
    tail -n 8 >> "$SUMMARY"
done

# ---- 4. cuda micro-benchmark -----------------------------------------------------------------------------
cuda_bench() {
  "$PY" - "$OUT/cuda_bench.json" <<'EOF'
"""cuda backend decode/prefill at the paper preset (P=256, H=20, D=64, C=25 with 12 filled), bf16.
bytes = K/V pages read + q/out; GB/s against the device copy bandwidth measured here; L2 flushed."""
import json, statistics, sys, torch
from nuwa_fast import ops
from nuwa_fast.ops import reference as ref
out_path = sys.argv[1]
dev, dt = "cuda", torch.bfloat16
fns = {"cuda": ops.get("patch_attention", "cuda")}
try:
    fns["triton"] = ops.get("patch_attention", "triton")
except Exception as e:  # noqa: BLE001
    print("triton absent:", e)
flush = torch.empty(512 * 2 ** 20, dtype=torch.uint8, device=dev)
def timeit(fn, reps=30):
    for _ in range(3): fn()
    ts = []
    for _ in range(reps):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)
big = torch.empty(2 ** 30, dtype=torch.uint8, device=dev)
copy_gbps = 2 * big.numel() / timeit(lambda: big.clone(), 10) / 1e9
del big
print(f"{torch.cuda.get_device_name()} copy {copy_gbps:.0f} GB/s")
H, P, D, C, filled, layers = 20, 256, 64, 25, 12, 2
rows = []
for mode, B, M, q_start in [("decode", 1, 1, 128), ("decode", 4, 1, 128), ("decode", 16, 1, 128),
                            ("decode", 64, 1, 128), ("prefill", 2, P + 1, 0)]:
    g = torch.Generator(device=dev).manual_seed(0)
    pages = B * (filled + 1)
    pool = torch.randn(pages, layers, 2, H, P, D, device=dev, dtype=dt, generator=g)
    pt = torch.full((B, C), -1, dtype=torch.int32, device=dev)
    pt[:, :filled] = torch.arange(B * filled, device=dev, dtype=torch.int32).view(B, filled)
    case = dict(q=torch.randn(B, H, M, D, device=dev, dtype=dt), k_cache=pool[:, 1, 0], v_cache=pool[:, 1, 1],
                page_table=pt, own_page=torch.arange(B * filled, B * (filled + 1), device=dev, dtype=torch.int32),
                q_start=q_start, bias=torch.randn(C, H, device=dev), own_rel=C - 1,
                null_k=torch.randn(H, D, device=dev, dtype=dt), null_v=torch.randn(H, D, device=dev, dtype=dt),
                scale=D ** -0.5)
    nbytes = 2 * H * D * 2 * B * (filled * P + q_start + M - 1) + 2 * B * H * M * D * 2
    expect = ref.patch_attention(**dict(case, q=case["q"].float()))
    variants = [("cuda", {}), ("cuda-nosplit", {"num_splits": 1}),
                ("cuda-s8kernel", {"num_splits": 8, "split_reduce": "kernel"}),
                ("cuda-s8cluster", {"num_splits": 8, "split_reduce": "cluster"})] if M == 1 else \
               [("cuda", {}), ("cuda-simt", {"prefill_impl": "simt"})]
    if "triton" in fns: variants.append(("triton", {}))
    for name, kw in variants:
        fn = fns[name.split("-")[0]]
        try:
            err = (fn(**case, **kw).float() - expect).abs().max().item()
            t = timeit(lambda: fn(**case, **kw))
            row = dict(mode=mode, B=B, H=H, M=M, P=P, D=D, impl=name, median_s=t, max_err=err,
                       gbps=nbytes / t / 1e9, pct_copy=100 * nbytes / t / 1e9 / copy_gbps)
        except Exception as e:  # noqa: BLE001
            row = dict(mode=mode, B=B, impl=name, error=f"{type(e).__name__}: {e}"[:300])
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, copy_gbps=copy_gbps, rows=rows),
          open(out_path, "w"), indent=1)
EOF
}
export -f cuda_bench
run_step cuda-bench 75 "$SUMMARY" bash -c cuda_bench

# ---- 5./6. benchmarks ------------------------------------------------------------------------------------
run_step bench-patch-attention 150 "$OUT/bench_patch_attention.log" \
  "$PY" benchmarks/bench_patch_attention.py --out "$OUT/bench_patch_attention.json"
if [[ -f benchmarks/bench_engine.py ]]; then
  run_step bench-engine 75 "$OUT/bench_engine.log" "$PY" benchmarks/bench_engine.py --out "$OUT/bench_engine.json"
fi

# ---- 7. other GPU tests with the time left ---------------------------------------------------------------
ignore=()
for f in ${tests[@]+"${tests[@]}"}; do ignore+=(--ignore "$f"); done
run_step pytest-gpu-other 120 "$OUT/pytest.log" "$PY" -m pytest -q -m "gpu and not slow" -rfEs tests ${ignore[@]+"${ignore[@]}"} \
  -p no:cacheprovider
tail -n 3 "$OUT/pytest.log" >> "$SUMMARY"

say "gpu_check done in $(( $(date +%s) - START ))s; files: $(ls "$OUT" | tr '\n' ' ')"
exit 0
