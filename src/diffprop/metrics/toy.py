"""Metrics of samples against a dataset; exact ones for Gaussian-mixture data.

A sample is *high quality* when it lies within 4 std of its nearest component mean (002 Sec. 5.1);
a mode is *covered* when it holds at least 10 % of its expected share of high-quality samples.
"""
from __future__ import annotations

import math

import torch
from scipy import stats

from ..diagnostics import mmd
from ..mixtures import GaussianMixture

MMD_POINTS = 2000  # samples and data points used for mmd_rbf


def mixture_metrics(x: torch.Tensor, mixture: GaussianMixture) -> dict:
    """Mode coverage, high-quality fraction, per-mode weights, within-mode spread, exact log-likelihood."""
    x = x.reshape(len(x), -1).double()
    z = torch.cdist(x, mixture.means) / mixture.stds  # distance in units of each component's std
    zmin, k = z.min(1)
    hq = zmin <= 4.0
    K, N = mixture.num_components, len(x)
    counts = torch.bincount(k[hq], minlength=K).double()
    expected = mixture.weights * N
    n_hq = int(hq.sum())
    out = {
        "num_samples": N,
        "high_quality_fraction": n_hq / N,
        "mode_coverage": float((counts >= 0.1 * expected).double().mean()),
        "log_likelihood": float(mixture.log_prob(x).mean()),
        "mode_weights": (counts / max(n_hq, 1)).tolist(),
        "mode_weight_tv": float(0.5 * (counts / max(n_hq, 1) - mixture.weights).abs().sum()),
    }
    if n_hq > 0:
        resid = (x[hq] - mixture.means[k[hq]]) / mixture.stds[k[hq], None]
        out["within_mode_std_ratio"] = float(resid.pow(2).mean().sqrt())  # 1.0 when spreads match
        f_exp = mixture.weights.numpy() * counts.sum().item()
        out["mode_weights_pvalue"] = float(stats.chisquare(counts.numpy(), f_exp * (counts.sum().item() / f_exp.sum())).pvalue)
    return out


def sample_metrics(samples: torch.Tensor, data: torch.Tensor, mixture: GaussianMixture | None = None,
                   seed: int = 0) -> dict:
    """``mmd_rbf`` (median bandwidth, unbiased) against the data, plus the mixture metrics when known."""
    g = torch.Generator().manual_seed(seed)
    xs = samples[torch.randperm(len(samples), generator=g)[:MMD_POINTS]].double()
    ys = data[torch.randperm(len(data), generator=g)[:MMD_POINTS]].double()
    out = {"mmd_rbf": float(mmd(xs, ys, "rbf"))}
    if mixture is not None:
        out.update(mixture_metrics(samples, mixture))
    if not all(math.isfinite(v) for v in out.values() if isinstance(v, float)):
        out["warning"] = "non-finite metric: the samples contain NaN or inf"
    return out


__all__ = ["mixture_metrics", "sample_metrics"]
