"""Triton kernels (populated by the kernel modules)."""
