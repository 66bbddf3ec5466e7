"""Kernel inception distance (Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 3): the unbiased ``MMD^2``
U-statistic with the polynomial kernel ``k(x, y) = (x . y / d + 1)^3`` on d-dimensional features.

As in the reference code (and torch-fidelity), ``kid`` is the mean of the estimate over ``num_subsets`` random
subsets of ``subset_size = min(1000, N, M)`` points per side and ``kid_std`` its standard deviation over the
subsets (the number papers print after the ±). ``kid_se`` is a standard error: the two-sample jackknife of the
estimate on all points (Arvesen 1969; conservative, as every jackknife variance is by the Efron-Stein
inequality), at most ``JACKKNIFE_POINTS`` per side, a random subset beyond.
"""
from __future__ import annotations

import math

import torch

from ..errors import DiffpropError

JACKKNIFE_POINTS = 10000


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3


def _row_sums(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """``sum_j k(a_i, b_j)`` for every ``i``, in row blocks of ``a``."""
    return torch.cat([polynomial_kernel(a[i:i + chunk], b).sum(1) for i in range(0, len(a), chunk)])


def _mmd2(sxx, syy, sxy, n: int, m: int):
    """Unbiased ``MMD^2`` from the off-diagonal sums ``sxx``, ``syy`` and the cross sum ``sxy``."""
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


def _subset_estimate(x: torch.Tensor, y: torch.Tensor) -> float:
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    return float(_mmd2(kxx.sum() - kxx.trace(), kyy.sum() - kyy.trace(), polynomial_kernel(x, y).sum(), len(x), len(y)))


def jackknife_se(x: torch.Tensor, y: torch.Tensor) -> float:
    """Two-sample jackknife standard error of the unbiased ``MMD^2`` of all of ``x`` and ``y`` (each >= 3 points).

    Leaving out ``x_i`` removes its row and column from the x-x sum and its row from the cross sum, so every
    leave-one-out estimate follows from the row sums in O(N + M):
    ``var = (n-1)/n sum_i (U_{-i} - mean)^2 + (m-1)/m sum_j (U_{-j} - mean)^2``.
    """
    n, m = len(x), len(y)
    diag_x, diag_y = (x.pow(2).sum(1) / x.shape[1] + 1) ** 3, (y.pow(2).sum(1) / y.shape[1] + 1) ** 3
    rxx, ryy = _row_sums(x, x) - diag_x, _row_sums(y, y) - diag_y  # off-diagonal row sums
    rxy, ryx = _row_sums(x, y), _row_sums(y, x)
    sxx, syy, sxy = rxx.sum(), ryy.sum(), rxy.sum()
    u_x = _mmd2(sxx - 2 * rxx, syy, sxy - rxy, n - 1, m)  # x_i left out
    u_y = _mmd2(sxx, syy - 2 * ryy, sxy - ryx, n, m - 1)  # y_j left out
    var = (n - 1) / n * (u_x - u_x.mean()).pow(2).sum() + (m - 1) / m * (u_y - u_y.mean()).pow(2).sum()
    return math.sqrt(float(var))


def kid(x: torch.Tensor, y: torch.Tensor, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """KID of features ``x`` (N, d) against ``y`` (M, d): ``kid``, ``kid_std``, ``kid_se``, ``kid_subsets``,
    ``kid_subset_size``."""
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    n, m = len(x), len(y)
    if min(n, m) < 3:
        raise DiffpropError(f"KID needs at least 3 feature vectors on each side, got {n} and {m}")
    s = min(subset_size, n, m)
    g = torch.Generator().manual_seed(seed)
    if s == n == m:  # every subset is the whole of both sets
        values = torch.tensor([_subset_estimate(x, y)], dtype=torch.float64)
    else:
        values = torch.tensor([_subset_estimate(x[torch.randperm(n, generator=g)[:s]],
                                                y[torch.randperm(m, generator=g)[:s]])
                               for _ in range(num_subsets)], dtype=torch.float64)
    jx = x[torch.randperm(n, generator=g)[:JACKKNIFE_POINTS]] if n > JACKKNIFE_POINTS else x
    jy = y[torch.randperm(m, generator=g)[:JACKKNIFE_POINTS]] if m > JACKKNIFE_POINTS else y
    return {"kid": float(values.mean()), "kid_std": float(values.std(unbiased=False)), "kid_se": jackknife_se(jx, jy),
            "kid_subsets": len(values), "kid_subset_size": s}


__all__ = ["jackknife_se", "kid", "polynomial_kernel"]
