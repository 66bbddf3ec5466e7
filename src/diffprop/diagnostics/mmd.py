"""Maximum mean discrepancy (000 Eq. 12-13), chunked, differentiable, accumulated in float64.

Kernels with bandwidth ``h`` and ``d = ||x - y||_2``: ``rbf = exp(-d^2 / (2 h^2))``,
``laplace = exp(-d / h)``, ``imq = (1 + d^2 / h^2)^(-1/2)``; each has ``k(x, x) = 1``.
"""
from __future__ import annotations

import torch

from ..errors import DiffpropError

KERNELS = {
    "rbf": lambda d2, h: torch.exp(-d2 / (2 * h**2)),
    "laplace": lambda d2, h: torch.exp(-d2.clamp(min=0).sqrt() / h),
    "imq": lambda d2, h: (1 + d2 / h**2).rsqrt(),
}
ESTIMATORS = ("unbiased", "biased")


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b).pow(2)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 1000) -> torch.Tensor:
    """Median pairwise distance of the pooled samples (on an evenly strided subset of at most ``max_points``)."""
    z = torch.cat([x, y]).detach()
    z = z[:: max(1, len(z) // max_points)]
    d = torch.cdist(z, z)
    return d[torch.triu_indices(len(z), len(z), 1, device=z.device).unbind()].median().double()


def _kernel_sum(a, b, kernel, h, chunk: int) -> torch.Tensor:
    """``sum_ij k(a_i, b_j)`` over row blocks of ``a``, in float64."""
    total = a.new_zeros((), dtype=torch.float64)
    for i in range(0, len(a), chunk):
        total = total + kernel(_sq_dists(a[i:i + chunk], b), h).double().sum()
    return total


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "rbf", bandwidth="median",
        estimator: str = "unbiased", chunk: int = 1024) -> torch.Tensor:
    """``MMD^2`` between samples ``x`` (N, ...) and ``y`` (M, ...), flattened per sample: a float64 scalar.

    ``estimator="unbiased"`` is the U-statistic (``i != j`` terms only); ``"biased"`` is 000 Eq. 13 as
    printed (diagonal terms included, a V-statistic). ``bandwidth`` is ``"median"`` or a number.
    """
    if kernel not in KERNELS:
        raise DiffpropError(f"unknown MMD kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
    if estimator not in ESTIMATORS:
        raise DiffpropError(f"unknown MMD estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1).to(x.dtype)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise DiffpropError(f"MMD needs at least 2 samples on each side, got {n} and {m}")
    h = median_bandwidth(x, y) if bandwidth == "median" else torch.tensor(float(bandwidth), dtype=torch.float64)
    h = h.to(x.device, x.dtype)
    k = KERNELS[kernel]
    kxx, kyy, kxy = _kernel_sum(x, x, k, h, chunk), _kernel_sum(y, y, k, h, chunk), _kernel_sum(x, y, k, h, chunk)
    if estimator == "biased":
        return kxx / n**2 + kyy / m**2 - 2 * kxy / (n * m)
    return (kxx - n) / (n * (n - 1)) + (kyy - m) / (m * (m - 1)) - 2 * kxy / (n * m)  # k(x, x) = 1
