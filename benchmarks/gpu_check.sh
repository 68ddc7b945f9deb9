#!/usr/bin/env bash
# One prepared GPU check for a lent machine: see benchmarks/gpu_check.py for the steps and files.
#   bash benchmarks/gpu_check.sh [--no-flex] [--dry-run] [--out DIR] [--budget-s 330] [--cap step=s,...]
# PYTHON picks the interpreter (default python3). nuwa_fast and its kernels/ import from this tree.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
