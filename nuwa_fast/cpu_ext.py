"""The CPU row step (csrc/cpu/row_step.cpp): built with the host's C++ compiler on first use, cached.

`load()` returns the pybind11 module `_nuwa_cpu`, or None when it cannot be had (no compiler, a failed
build, NUWA_FAST_CPU_EXT=0); then the engine runs the torch step ("gathered") instead. The build takes
pybind11's headers from the pybind11 package or, else, from the copy inside the torch wheel, and needs
no torch headers. It is compiled for the machine it runs on (-march=native): the cache key holds the
source's hash, the compiler flags, the Python version and the CPU's flags, so a changed source, a
different Python or a different CPU gets its own build.

    NUWA_FAST_CPU_EXT=0      never build or use it
    NUWA_FAST_CACHE=DIR      where builds are kept (default: ~/.cache/nuwa_fast)
    CXX=...                  the compiler (default: c++, g++ or clang++, the first on PATH)
"""
from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

NAME = "_nuwa_cpu"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread")
_lock = threading.Lock()
_state: dict = {}


def source() -> Path | None:
    """The C++ source: the installed package's copy (setup.py ships csrc/cpu as nuwa_fast.csrc_cpu), else
    the source tree's csrc/cpu/ beside nuwa_fast/."""
    here = Path(__file__).resolve().parent
    for p in (here / "csrc_cpu" / "row_step.cpp", here.parent / "csrc" / "cpu" / "row_step.cpp"):
        if p.is_file():
            return p
    return None


def _compiler() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx:
        return cxx
    for c in ("c++", "g++", "clang++"):
        if shutil.which(c):
            return c
    return None


def _pybind11_include() -> str | None:
    try:
        import pybind11
        return pybind11.get_include()
    except ImportError:
        pass
    import torch
    inc = Path(torch.__file__).resolve().parent / "include"
    return str(inc) if (inc / "pybind11" / "pybind11.h").is_file() else None


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> str:
    """The CPU's flags line of /proc/cpuinfo (read once), else the processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("NUWA_FAST_CACHE") or Path.home() / ".cache" / "nuwa_fast") / "cpu"


def build(verbose: bool = False) -> Path:
    """Compile the module (or find it in the cache); returns the path of the shared object. Raises
    RuntimeError saying what is missing when it cannot be built."""
    src = source()
    if src is None:
        raise RuntimeError("csrc/cpu/row_step.cpp is not in this installation")
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    inc = _pybind11_include()
    if inc is None:
        raise RuntimeError("pybind11 headers not found (pip install pybind11)")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    key = hashlib.sha256("\0".join([src.read_text(), cxx, " ".join(FLAGS), sys.version, _cpu_flags()])
                         .encode()).hexdigest()[:16]
    out = cache_dir() / key / (NAME + suffix)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cxx, *FLAGS, f"-I{inc}", f"-I{sysconfig.get_paths()['include']}", str(src)]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        r = subprocess.run(cmd + ["-o", str(tmp_out)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building {src.name} failed ({' '.join(cmd[:3])} ...):\n{r.stderr[-4000:]}")
        if verbose and r.stderr:
            print(r.stderr, file=sys.stderr)
        os.replace(tmp_out, out)                   # atomic: a concurrent build never sees half a file
    return out


def load():
    """The `_nuwa_cpu` module, built on first use; None if disabled or it cannot be built (warns once)."""
    if os.environ.get("NUWA_FAST_CPU_EXT", "1").strip() == "0":
        return None
    with _lock:
        if "module" in _state:
            return _state["module"]
        mod = None
        try:
            path = build()
            loader = importlib.machinery.ExtensionFileLoader(NAME, str(path))
            spec = importlib.util.spec_from_file_location(NAME, path, loader=loader)
            mod = importlib.util.module_from_spec(spec)
            loader.exec_module(mod)
        except (RuntimeError, OSError, ImportError) as e:
            warnings.warn(f"nuwa-fast: the CPU row step is unavailable, the torch step runs instead: {e}",
                          RuntimeWarning, stacklevel=2)
            mod = None
        _state["module"] = mod
        return mod


def available() -> bool:
    return load() is not None
