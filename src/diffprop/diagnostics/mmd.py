"""Maximum mean discrepancy (000 Eq. 12-13), chunked, differentiable, accumulated in float64.

Kernels with bandwidth ``h`` and ``d = ||x - y||_2``: ``rbf = exp(-d^2 / (2 h^2))``,
``laplace = exp(-d / h)``, ``imq = (1 + d^2 / h^2)^(-1/2)``, each with ``k(x, x) = 1``; and
``rbf-mix = sum_c exp(-d^2 / (2 (c h)^2))`` over ``c in RBF_MIX_MULTIPLIERS`` (the EPDM official code's sum
of five RBFs), with ``k(x, x) = 5``. The official code puts its multipliers on the squared-distance scale
``b`` of ``exp(-d^2 / (c b))`` with ``b`` the mean squared distance; here they multiply ``h`` itself.

Bandwidth rules, on the pooled sample (detached; at most ``max_points`` evenly strided points):
``"median"`` and ``"mean"`` pairwise distance, or a positive number.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..errors import DiffpropError

RBF_MIX_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
KERNELS = {
    "rbf": lambda d2, h: torch.exp(-d2 / (2 * h**2)),
    "rbf-mix": lambda d2, h: sum(torch.exp(-d2 / (2 * (c * h) ** 2)) for c in RBF_MIX_MULTIPLIERS),
    "laplace": lambda d2, h: torch.exp(-d2.clamp(min=0).sqrt() / h),
    "imq": lambda d2, h: (1 + d2 / h**2).rsqrt(),
}
ESTIMATORS = ("unbiased", "biased")
BANDWIDTH_RULES = ("median", "mean")
MAX_TEST_POINTS = 6000  # mmd_test holds the pooled (N + M)^2 float64 kernel matrix: 288 MB at this size


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b).pow(2)


def _pooled_distances(x: torch.Tensor, y: torch.Tensor, max_points: int) -> torch.Tensor:
    """Distances ``||z_i - z_j||``, ``i < j``, of the pooled samples (an evenly strided subset), detached."""
    z = torch.cat([x, y]).detach()
    z = z[:: max(1, len(z) // max_points)]
    return torch.cdist(z, z)[torch.triu_indices(len(z), len(z), 1, device=z.device).unbind()].double()


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 1000) -> torch.Tensor:
    """Median pairwise distance of the pooled samples (on an evenly strided subset of at most ``max_points``)."""
    return _pooled_distances(x, y, max_points).median()


def mean_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 1000) -> torch.Tensor:
    """Mean pairwise distance of the pooled samples (on an evenly strided subset of at most ``max_points``)."""
    return _pooled_distances(x, y, max_points).mean()


def _check(kernel: str, estimator: str, bandwidth) -> None:
    if kernel not in KERNELS:
        raise DiffpropError(f"unknown MMD kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
    if estimator not in ESTIMATORS:
        raise DiffpropError(f"unknown MMD estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    if isinstance(bandwidth, str):
        if bandwidth not in BANDWIDTH_RULES:
            raise DiffpropError(f"unknown MMD bandwidth {bandwidth!r}; allowed: median, mean, or a positive number")
    elif not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
        raise DiffpropError(f"MMD bandwidth must be 'median', 'mean' or a positive number, got {bandwidth!r}")


def _prepare(x, y, kernel, bandwidth, estimator):
    """Validated, flattened ``x, y`` and the bandwidth ``h`` (detached, in ``x``'s dtype)."""
    _check(kernel, estimator, bandwidth)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1).to(x.dtype)
    if len(x) < 2 or len(y) < 2:
        raise DiffpropError(f"MMD needs at least 2 samples on each side, got {len(x)} and {len(y)}")
    if bandwidth == "median":
        h = median_bandwidth(x, y)
    elif bandwidth == "mean":
        h = mean_bandwidth(x, y)
    else:
        h = torch.tensor(float(bandwidth), dtype=torch.float64)
    return x, y, h.to(x.device, x.dtype)


def _kernel_sum(a, b, kernel, h, chunk: int) -> torch.Tensor:
    """``sum_ij k(a_i, b_j)`` over row blocks of ``a``, in float64."""
    total = a.new_zeros((), dtype=torch.float64)
    for i in range(0, len(a), chunk):
        total = total + kernel(_sq_dists(a[i:i + chunk], b), h).double().sum()
    return total


def _combine(kxx, kyy, kxy, n: int, m: int, k0: float, estimator: str):
    """000 Eq. 13 from the kernel sums; the unbiased U-statistic drops the ``i = j`` terms, each ``k0 = k(x, x)``."""
    if estimator == "biased":
        return kxx / n**2 + kyy / m**2 - 2 * kxy / (n * m)
    return (kxx - n * k0) / (n * (n - 1)) + (kyy - m * k0) / (m * (m - 1)) - 2 * kxy / (n * m)


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "rbf", bandwidth="median",
        estimator: str = "unbiased", chunk: int = 1024) -> torch.Tensor:
    """``MMD^2`` between samples ``x`` (N, ...) and ``y`` (M, ...), flattened per sample: a float64 scalar.

    ``estimator="unbiased"`` is the U-statistic (``i != j`` terms only); ``"biased"`` is 000 Eq. 13 as
    printed (diagonal terms included, a V-statistic). Differentiable in ``x`` and ``y`` (not through ``h``);
    memory is ``chunk x max(N, M)`` distances at a time.
    """
    x, y, h = _prepare(x, y, kernel, bandwidth, estimator)
    k = KERNELS[kernel]
    k0 = float(k(torch.zeros((), dtype=torch.float64), h.double()))
    kxx, kyy, kxy = _kernel_sum(x, x, k, h, chunk), _kernel_sum(y, y, k, h, chunk), _kernel_sum(x, y, k, h, chunk)
    return _combine(kxx, kyy, kxy, len(x), len(y), k0, estimator)


class MMDTest(NamedTuple):
    """A permutation two-sample test: the statistic, its p-value, and the permutation null's summary."""
    value: float
    p_value: float
    null_mean: float
    null_std: float
    null_q95: float


@torch.no_grad()
def mmd_test(x: torch.Tensor, y: torch.Tensor, kernel: str = "rbf", bandwidth="median",
             estimator: str = "unbiased", num_permutations: int = 200, generator: torch.Generator | None = None,
             chunk: int = 1024) -> MMDTest:
    """Permutation test of ``p = q`` with :func:`mmd` as the statistic (Gretton et al. 2012, Sec. 5).

    The bandwidth is fixed once on the pooled sample and the pooled ``(N + M)^2`` kernel matrix is built once
    (``N + M <= MAX_TEST_POINTS``); each permutation relabels the pooled points, so its statistic is a pair of
    quadratic forms ``a^T K a`` of that matrix. ``p = (1 + #{null >= value}) / (1 + num_permutations)``.
    """
    x, y, h = _prepare(x, y, kernel, bandwidth, estimator)
    n, m = len(x), len(y)
    if n + m > MAX_TEST_POINTS:
        raise DiffpropError(f"mmd_test holds the pooled kernel matrix: N + M must be <= {MAX_TEST_POINTS}, "
                            f"got {n + m}; subsample first")
    if num_permutations < 2:
        raise DiffpropError(f"mmd_test needs num_permutations >= 2, got {num_permutations}")
    z = torch.cat([x, y])
    k = KERNELS[kernel]
    K = torch.cat([k(_sq_dists(z[i:i + chunk], z), h).double() for i in range(0, n + m, chunk)])
    k0 = float(k(torch.zeros((), dtype=torch.float64), h.double()))
    # labels: row 0 the observed split, rows 1.. random relabelings; a = indicator of "x", b = 1 - a
    perms = torch.argsort(torch.rand(num_permutations, n + m, generator=generator), dim=1).to(z.device)
    a = torch.zeros(num_permutations + 1, n + m, dtype=torch.float64, device=z.device)
    a[0, :n] = 1
    a[1:].scatter_(1, perms[:, :n], 1.0)
    Ka = a @ K  # K is symmetric
    kxx, kxy = (Ka * a).sum(1), (Ka * (1 - a)).sum(1)
    kyy = K.sum() - kxx - 2 * kxy
    stats = _combine(kxx, kyy, kxy, n, m, k0, estimator)
    value, null = stats[0], stats[1:]
    return MMDTest(float(value), float((1 + (null >= value).sum()) / (1 + num_permutations)),
                   float(null.mean()), float(null.std()), float(null.quantile(0.95)))
