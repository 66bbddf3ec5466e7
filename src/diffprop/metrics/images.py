"""Image metrics of samples against reference images in one feature space: ``fd`` (Fréchet distance, "FID" when
the features are Inception's), ``kid`` with ``kid_std`` and ``kid_se`` (unscaled, as torch-fidelity reports it:
``kid_scale`` says so), and ``mmd_rbf`` (unbiased, median
bandwidth, on at most ``MMD_POINTS`` features per side), ``precision``, ``recall`` and their harmonic mean ``f1``
(:mod:`.precision_recall`, k = 3). The result records both N, the extractor, its weights
hash and its preprocessing, so two numbers are comparable only when those agree.
"""
from __future__ import annotations

import torch

from ..diagnostics import mmd
from ..errors import DiffpropError
from .features import FeatureExtractor
from .frechet import frechet_distance
from .kid import kid
from .precision_recall import precision_recall
from .stats import StreamingMoments
from .toy import MMD_POINTS

KID_SCALE = "x1: the unbiased MMD^2 itself, as torch-fidelity reports it; tables printed x10^3 multiply by 1000"


def features_and_moments(extractor: FeatureExtractor, images: torch.Tensor) -> tuple[torch.Tensor, StreamingMoments]:
    """All features of ``images`` and their mean and covariance, accumulated batch by batch."""
    moments, feats = StreamingMoments(), []
    for f in extractor.batches(images):
        moments.update(f)
        feats.append(f)
    return (torch.cat(feats) if feats else torch.zeros(0, extractor.dim, dtype=torch.float64)), moments


def image_metrics(samples: torch.Tensor, reference: torch.Tensor, extractor: FeatureExtractor, *,
                  num_reference: int | None = None, seed: int = 0, kid_subsets: int = 100,
                  kid_subset_size: int = 1000) -> dict:
    """Metrics of ``samples`` against ``reference`` (both (N, C, H, W) in [-1, 1]) in ``extractor``'s features;
    ``num_reference`` draws that many reference images at random (``seed``) instead of using all."""
    if not torch.isfinite(samples).all():
        raise DiffpropError("the samples contain NaN or inf")
    g = torch.Generator().manual_seed(seed)
    if num_reference is not None and num_reference < len(reference):
        reference = reference[torch.randperm(len(reference), generator=g)[:num_reference]]
    fx, mx = features_and_moments(extractor, samples)
    fy, my = features_and_moments(extractor, reference)
    if mx.n < 3 or my.n < 3:
        raise DiffpropError(f"image metrics need at least 3 images on each side, got {mx.n} samples and "
                            f"{my.n} reference images")
    px = fx[torch.randperm(len(fx), generator=g)[:MMD_POINTS]]
    py = fy[torch.randperm(len(fy), generator=g)[:MMD_POINTS]]
    out = {"fd": frechet_distance(mx.mean.numpy(), mx.cov.numpy(), my.mean.numpy(), my.cov.numpy()),
           **kid(fx, fy, kid_subsets, kid_subset_size, seed), "kid_scale": KID_SCALE,
           "mmd_rbf": float(mmd(px, py, "rbf")), **precision_recall(fx, fy, seed=seed),
           "num_samples": mx.n, "num_reference": my.n, **extractor.describe()}
    if min(mx.n, my.n) <= extractor.dim:
        out["warning"] = (f"N = {min(mx.n, my.n)} <= feature dim {extractor.dim}: the covariances are singular and fd "
                          "is biased upward; compare fd only at equal N")
    return out


__all__ = ["features_and_moments", "image_metrics"]
