"""Fréchet distance between Gaussians fitted to features (Heusel et al. 2017, "FID", Eq. 6; Dowson and
Landau 1982): ``d^2 = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``.

``tr (S_1 S_2)^{1/2}`` is the sum of the square roots of the eigenvalues of ``S_1 S_2``. For any ``A`` with
``A A^T = S_1``, ``S_1 S_2 = A (A^T S_2)`` has the non-zero eigenvalues of ``M = A^T S_2 A`` (``XY`` and ``YX`` share
them), and ``M`` is symmetric positive semi-definite, so a symmetric eigensolver (LAPACK's divide and conquer) gives
them. ``A`` is ``S_1``'s pivoted Cholesky factor (LAPACK ``dpstrf``; Higham 2002, Sec. 10.3), d x r for a
covariance of rank r, which stops at round-off: a singular ``S_1`` (fewer feature vectors than dimensions) gives a
smaller ``M`` and no null space whose round-off would add square roots of noise. TTUR and pytorch-fid take scipy's
``sqrtm`` of the non-symmetric ``S_1 S_2`` (with ``eps I`` retries and a dropped imaginary part), torch-fidelity
the general ``eig`` of it: the values agree to rounding with positive-definite covariances; with singular ones
theirs carry that noise (1e-7 relative in tests/test_metrics_reference.py). ``diffprop bench metrics`` gives the times at d = 2048.
What is not a covariance is an error: ``S_1`` not reproduced by its factor (a negative eigenvalue), or an
eigenvalue of ``M`` below ``-NEG_TOL`` times the largest (``S_2``'s).
"""
from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.linalg import lapack

from ..errors import DiffpropError

NEG_TOL = 1e-6  # what is put down to round-off: relative to the largest eigenvalue, or to S_1's largest variance


def _factor(cov: np.ndarray) -> np.ndarray:
    """``A`` (d x r) with ``A A^T = cov``: the pivoted Cholesky factor, stopped at LAPACK's round-off tolerance."""
    c, piv, rank, _ = lapack.dpstrf(cov, lower=1)
    a = np.empty((len(cov), rank))
    a[piv - 1] = np.tril(c)[:, :rank]  # P^T cov P = L L^T, so A = P L
    if rank < len(cov):  # what was left must be round-off: else cov has a negative eigenvalue
        worst = np.abs(cov - a @ a.T).max()
        if worst > NEG_TOL * max(np.diagonal(cov).max(), 0.0):
            raise DiffpropError(f"Fréchet distance: S1 is not positive semi-definite (its pivoted Cholesky factor "
                                f"misses it by {worst:.3g}), so not a covariance")
    return a


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr (S_1 S_2)^{1/2}`` for covariances ``S_1``, ``S_2`` (float64), from the eigenvalues of ``A^T S_2 A``."""
    a = _factor(cov1)
    if a.shape[1] == 0:  # S_1 = 0
        return 0.0
    w = linalg.eigh(a.T @ cov2 @ a, eigvals_only=True, driver="evd", check_finite=False)
    if w[0] < -NEG_TOL * max(w[-1], 0.0):
        raise DiffpropError(f"Fréchet distance: S1 S2 has an eigenvalue of {w[0]:.3g} (largest {w[-1]:.3g}): S2 is "
                            f"not positive semi-definite, so not a covariance")
    return float(np.sqrt(np.where(w > len(w) * np.finfo(np.float64).eps * max(w[-1], 0.0), w, 0.0)).sum())


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Squared Fréchet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)`` (array-likes, float64)."""
    mu1, mu2 = (np.asarray(m, dtype=np.float64).reshape(-1) for m in (mu1, mu2))
    cov1, cov2 = (np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in (cov1, cov2))
    d = len(mu1)
    if len(mu2) != d or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise DiffpropError(f"Fréchet distance: shapes do not match (means {len(mu1)}, {len(mu2)}; "
                            f"covariances {cov1.shape}, {cov2.shape})")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, cov1, cov2)):
        raise DiffpropError("Fréchet distance: the features contain NaN or inf")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2))


__all__ = ["frechet_distance", "trace_sqrt_product"]
