"""`nuwa-fast bench` and `nuwa-fast profile`: thin entry points into the repository's benchmarks/.

The harnesses are tools, not what a user imports, so they live in benchmarks/ (bench_engine.py,
profile_engine.py) and write where their --out / --out-dir say. A source checkout and an editable
install (`pip install -e .`) have that folder beside the package, at nuwa_fast/../benchmarks; these
commands load the script from there by path, so they run the same file as
`python3 benchmarks/bench_engine.py`. A wheel ships the package alone: the commands then say where
to get the benchmarks instead of failing on an import.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = {"bench": "bench_engine", "profile": "profile_engine"}


class ToolMissing(ImportError):
    """The benchmarks/ folder is not beside this installation of the package."""


def load(command: str):
    """The module of benchmarks/<script>.py behind `nuwa-fast <command>`."""
    path = BENCHMARKS / f"{SCRIPTS[command]}.py"
    if not path.is_file():
        raise ToolMissing(f"it runs benchmarks/{path.name} of a source checkout, and this installation has no "
                          f"{BENCHMARKS}; clone the repository (or pip install -e it) to benchmark")
    spec = importlib.util.spec_from_file_location(f"nuwa_fast_{SCRIPTS[command]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(argv=None) -> int:
    return load("bench").main(argv)


def profile(argv=None) -> int:
    return load("profile").main(argv)
