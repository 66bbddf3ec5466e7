"""Fréchet distance between Gaussians fitted to features (Heusel et al. 2017, "FID", Eq. 6; Dowson and
Landau 1982): ``d^2 = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``.

``(S_1 S_2)^{1/2}`` is scipy's ``sqrtm`` with the guards of the reference implementations (TTUR, pytorch-fid):
a singular or non-finite product is retried with ``eps I`` added to both covariances; a tiny imaginary part
(round-off: the eigenvalues of ``S_1 S_2`` are real and non-negative in exact arithmetic) is dropped; a
large one is an error.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from ..errors import DiffpropError

IMAG_TOL = 1e-3  # largest |imaginary part| on the diagonal of the square root, relative to its largest real entry


def _sqrtm(a: np.ndarray) -> np.ndarray | None:
    """``sqrtm(a)``, or None when scipy finds ``a`` singular or the result is not finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            root = linalg.sqrtm(a)
        except linalg.LinAlgWarning:
            return None
    return root if np.isfinite(root).all() else None


def frechet_distance(mu1, cov1, mu2, cov2, eps: float = 1e-6) -> float:
    """Squared Fréchet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)`` (array-likes, float64)."""
    mu1, mu2 = (np.asarray(m, dtype=np.float64).reshape(-1) for m in (mu1, mu2))
    cov1, cov2 = (np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in (cov1, cov2))
    d = len(mu1)
    if len(mu2) != d or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise DiffpropError(f"Fréchet distance: shapes do not match (means {len(mu1)}, {len(mu2)}; "
                            f"covariances {cov1.shape}, {cov2.shape})")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, cov1, cov2)):
        raise DiffpropError("Fréchet distance: the features contain NaN or inf")
    covmean = _sqrtm(cov1 @ cov2)
    if covmean is None:  # singular product: regularize both covariances
        offset = eps * np.eye(d)
        covmean = _sqrtm((cov1 + offset) @ (cov2 + offset))
        if covmean is None:
            raise DiffpropError(f"Fréchet distance: sqrtm(S1 S2) failed even with {eps:g} I added to the covariances")
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > IMAG_TOL * max(1.0, np.abs(covmean.real).max()):
            raise DiffpropError(f"Fréchet distance: sqrtm(S1 S2) has an imaginary part of {imag:.3g} "
                                "(the covariances are not positive semi-definite?)")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


__all__ = ["frechet_distance"]
