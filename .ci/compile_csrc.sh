#!/usr/bin/env bash
# Compile csrc/ (the nuwa_fast._C module) with nvcc for sm_80 and sm_90a, no GPU needed.
# Configures and builds the root CMakeLists.txt in a temporary directory; exits nonzero on any
# configure/compile/link error and prints the wall time. Needs nvcc (PATH or $CUDA_HOME/bin), cmake,
# a C++ compiler, Python headers and pybind11 (or torch's bundled copy).
#   NUWA_FAST_CUDA_ARCHS  architectures (default "80;90a")
#   JOBS                  parallel jobs (default 2: CI machines are shared)
#   PYTHON                interpreter whose headers/ABI the module targets (default .venv/bin/python
#                         if present, else python3)
#   KEEP_BUILD=1          keep the build directory (printed) instead of deleting it
#   PTXAS_LOG             where the ptxas -v output goes (default build/csrc_ptxas.log; the resources
#                         test in tests/test_kernel_resources.py reads it instead of compiling again)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHS="${NUWA_FAST_CUDA_ARCHS:-80;90a}"
JOBS="${JOBS:-2}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then  # the Makefile's virtualenv (torch there carries pybind11 headers), else python3
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi

NVCC="$(command -v nvcc || true)"
if [[ -z "$NVCC" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then NVCC="$CUDA_HOME/bin/nvcc"; fi
if [[ -z "$NVCC" ]]; then
  echo "compile_csrc: nvcc not found (PATH or CUDA_HOME)" >&2
  exit 2
fi

BUILD="$(mktemp -d "${TMPDIR:-/tmp}/nuwa_csrc.XXXXXX")"
cleanup() { if [[ "${KEEP_BUILD:-0}" == "1" ]]; then echo "compile_csrc: build kept in $BUILD"; else rm -rf "$BUILD"; fi; }
trap cleanup EXIT

GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi

start=$(date +%s)
echo "compile_csrc: $("$NVCC" --version | tail -n 1), archs $ARCHS, $JOBS jobs"
cmake -S "$ROOT" -B "$BUILD" ${GEN[@]+"${GEN[@]}"} -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DPython3_EXECUTABLE="$PY" \
  -DNUWA_FAST_CUDA_ARCHS="$ARCHS" -DNUWA_FAST_PTXAS_VERBOSE=ON --log-level=WARNING
PTXAS_LOG="${PTXAS_LOG:-$ROOT/build/csrc_ptxas.log}"
mkdir -p "$(dirname "$PTXAS_LOG")"
# ptxas -v prints to the compiler's stderr: keep it in the log, show only the other lines
set +e
cmake --build "$BUILD" -j "$JOBS" 2>&1 | tee "$PTXAS_LOG.part" | grep -v -E "^ptxas info|bytes stack frame|^$"
rc=${PIPESTATUS[0]}
set -e
if [[ "$rc" != 0 ]]; then echo "compile_csrc: build failed (rc $rc)" >&2; exit 1; fi
mv "$PTXAS_LOG.part" "$PTXAS_LOG"
echo "compile_csrc: ptxas -v log in $PTXAS_LOG ($(grep -c "Compiling entry function" "$PTXAS_LOG") entries)"

so="$(ls "$BUILD"/_C*.so 2>/dev/null | head -n 1 || true)"
if [[ -z "$so" ]]; then
  echo "compile_csrc: no _C module was produced" >&2
  exit 1
fi
# Every requested architecture must be in the fatbinary (SASS for each, e.g. sm_80 and sm_90a).
if command -v cuobjdump >/dev/null 2>&1; then
  have="$(cuobjdump --list-elf "$so" 2>/dev/null || true)"
  IFS=';' read -ra want <<< "$ARCHS"
  for a in "${want[@]}"; do
    a="${a%-real}"; a="${a%-virtual}"
    if ! grep -q "sm_${a}\b" <<< "$have"; then
      echo "compile_csrc: sm_${a} code missing from $(basename "$so")" >&2
      exit 1
    fi
  done
fi
# The module must load without a GPU (static CUDA runtime, no torch symbols).
"$PY" -c "import sys; sys.path.insert(0, '$BUILD'); import _C; print('compile_csrc: _C loads, archs', _C.CUDA_ARCHS)"
echo "compile_csrc: OK in $(( $(date +%s) - start )) s"
