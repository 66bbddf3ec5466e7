"""Diagnostics of error propagation (000 Sec. 3-4): MMD, kNN entropy, exact errors, propagation curves."""
from .entropy import knn_entropy
from .exact import KLEstimate, cumulative_kl, cumulative_kl_estimate, modular_error, modular_kl
from .gaussian_chain import GaussianChain, gaussian_chain
from .mmd import KERNELS, MMDTest, mmd, mmd_test

__all__ = ["KERNELS", "GaussianChain", "KLEstimate", "MMDTest", "cumulative_kl", "cumulative_kl_estimate",
           "gaussian_chain", "knn_entropy", "mmd", "mmd_test", "modular_error", "modular_kl"]
