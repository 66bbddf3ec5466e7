"""Diagnostics of error propagation (000 Sec. 3-4): MMD, kNN entropy, exact errors, propagation curves."""
from .entropy import knn_entropy
from .exact import cumulative_kl, modular_error, modular_kl
from .mmd import KERNELS, MMDTest, mmd, mmd_test

__all__ = ["KERNELS", "MMDTest", "cumulative_kl", "knn_entropy", "mmd", "mmd_test", "modular_error", "modular_kl"]
