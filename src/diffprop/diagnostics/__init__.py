"""Diagnostics of error propagation (000 Sec. 3-4)."""
from .mmd import KERNELS, mmd

__all__ = ["KERNELS", "mmd"]
