"""Image metrics on 2048-d features (Inception's pool3 width) against torch-fidelity, timed side by side: the
Fréchet distance from the two Gaussians, KID (Bińkowski et al. 2018) over subsets, improved precision and recall
(Kynkäänniemi et al. 2019). The reference is torch-fidelity's own functions (``fid_statistics_to_metric``,
``kid_features_to_metric``, ``calculate_precision_recall_full``) where they import; they import torchvision, so
where it is missing (``pip install --no-deps torch-fidelity``) the reference is a line-for-line transcription of
them (torch-fidelity 0.4.0), and ``reference`` says which. torch-fidelity computes KID and the distances in the
features' dtype (float32 from a network); diffprop in float64, its distances float32 where that is exact
(:mod:`diffprop.metrics.precision_recall`). Each round times every alternative once, in turn; times are medians.

The features are synthetic, shaped like Inception's: ``relu`` of a random linear map of 512 Gaussian factors plus a
little noise (non-negative, correlated, full rank), the second set shifted. FD is timed at N = 5000 features per
side (positive-definite covariances) and N = 1000 (fewer features than dimensions: singular covariances).
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..metrics.frechet import frechet_distance
from ..metrics.kid import kid
from ..metrics.precision_recall import precision_recall

D, FACTORS, ROUNDS = 2048, 512, 3
FD_N, KID_N, KID_SUBSETS, KID_SUBSET_SIZE, PR_N = (5000, 1000), 2000, 20, 1000, 4000


# -- the reference: torch-fidelity, or its functions transcribed -------------------------------------------------
def _fid_transcribed(stat_1, stat_2, verbose=False):
    """torch_fidelity.metric_fid.fid_statistics_to_metric (0.4.0): eigenvalues of the non-symmetric S1 S2."""
    mu1, sigma1, mu2, sigma2 = stat_1["mu"], stat_1["sigma"], stat_2["mu"], stat_2["sigma"]
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sigma1.dot(sigma2)).astype("complex128")).real)
    return {"frechet_inception_distance": float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)}


def _mmd2_poly(f1, f2):
    """torch_fidelity.metric_kid.kernel_poly (degree 3, gamma 1 / d, coef0 1) and mmd2 (unbiased), in f1's dtype."""
    k = lambda a, b: (np.matmul(a, b.T) / a.shape[1] + 1) ** 3  # noqa: E731
    k11, k22, k12 = k(f1, f1), k(f2, f2), k(f1, f2)
    m = k11.shape[0]
    s11, s22 = k11.sum() - np.diagonal(k11).sum(), k22.sum() - np.diagonal(k22).sum()
    return (s11 + s22) / (m * (m - 1)) - 2 * k12.sum() / (m * m)


def _kid_transcribed(features_1, features_2, kid_subsets=100, kid_subset_size=1000, rng_seed=2020, **_):
    """torch_fidelity.metric_kid.kid_features_to_metric (0.4.0): the mean and std over random subsets."""
    f1, f2 = features_1.numpy(), features_2.numpy()
    rng = np.random.RandomState(rng_seed)
    mmds = np.array([_mmd2_poly(f1[rng.choice(len(f1), kid_subset_size, replace=False)],
                                f2[rng.choice(len(f2), kid_subset_size, replace=False)]) for _ in range(kid_subsets)])
    return {"kernel_inception_distance_mean": float(np.mean(mmds)), "kernel_inception_distance_std": float(np.std(mmds))}


def _prc_transcribed(features_1, features_2, neighborhood=3, batch_size=10000):
    """torch_fidelity.metric_prc.calculate_precision_recall_full (0.4.0): full distance matrices, features' dtype."""
    d11, d22 = torch.cdist(features_1, features_1), torch.cdist(features_2, features_2)
    r1, r2 = d11.kthvalue(neighborhood + 1).values, d22.kthvalue(neighborhood + 1).values
    d21 = torch.cdist(features_2, features_1)
    recall = (d21 <= r1).any(dim=1).float().mean().item()
    precision = (d21.T <= r2).any(dim=1).float().mean().item()
    return precision, recall


def reference() -> tuple[dict, str]:
    """torch-fidelity's metric functions, or their transcriptions, and which."""
    try:
        from torch_fidelity.metric_fid import fid_statistics_to_metric
        from torch_fidelity.metric_kid import kid_features_to_metric
        from torch_fidelity.metric_prc import calculate_precision_recall_full
        from torch_fidelity.version import __version__
    except ImportError as e:  # its package imports torchvision
        return ({"fd": _fid_transcribed, "kid": _kid_transcribed, "pr": _prc_transcribed},
                f"transcriptions of torch-fidelity 0.4.0's functions (torch-fidelity does not import here: {e})")
    return ({"fd": fid_statistics_to_metric, "kid": kid_features_to_metric, "pr": calculate_precision_recall_full},
            f"torch-fidelity {__version__}")


# -- the data and the timing ------------------------------------------------------------------------------------
def features(n: int, shift: float, seed: int, dim: int = D) -> torch.Tensor:
    """``n`` synthetic Inception-like float32 features of ``dim`` dimensions (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    factors = min(FACTORS, dim // 4)
    w = torch.randn(factors, dim, generator=torch.Generator().manual_seed(12345)) / factors ** 0.5
    z = torch.randn(n, factors, generator=g)
    return ((z @ w + shift).relu() + 0.01 * torch.randn(n, dim, generator=g)).float()


def _side_by_side(fns: dict, bar) -> tuple[dict, dict]:
    """Each of ``fns`` run ``ROUNDS`` times, in turn within a round: median seconds and the last result."""
    times, results = {k: [] for k in fns}, {}
    for _ in range(ROUNDS):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t0)
            bar.update()
    return {k: statistics.median(v) for k, v in times.items()}, results


def _case(name: str, t: dict, values: dict, **extra) -> dict:
    return {"metric": name, **extra, "ms": round(t["ours"] * 1e3, 1), "reference_ms": round(t["reference"] * 1e3, 1),
            "ratio": round(t["ours"] / t["reference"], 3), **values}


def metrics_bench() -> dict:
    ref, which = reference()
    bar = tqdm(total=ROUNDS * 2 * (len(FD_N) + 2), desc="metrics rounds", unit="call")
    cases = []
    for n in FD_N:
        x, y = features(n, 0.0, 1).double().numpy(), features(n, 0.05, 2).double().numpy()
        s1, s2 = ({"mu": a.mean(0), "sigma": np.cov(a, rowvar=False)} for a in (x, y))
        t, r = _side_by_side({"ours": lambda: frechet_distance(s1["mu"], s1["sigma"], s2["mu"], s2["sigma"]),
                              "reference": lambda: ref["fd"](s1, s2, verbose=False)["frechet_inception_distance"]}, bar)
        cases.append(_case("fd", t, {"value": r["ours"], "reference_value": r["reference"],
                                     "rel_diff": abs(r["ours"] - r["reference"]) / abs(r["reference"])},
                           n=n, dim=D, covariances="positive definite" if n > D else "singular (n < dim)"))
    x, y = features(KID_N, 0.0, 3), features(KID_N, 0.05, 4)
    t, r = _side_by_side({"ours": lambda: kid(x, y, KID_SUBSETS, KID_SUBSET_SIZE),
                          "reference": lambda: ref["kid"](x, y, kid_subsets=KID_SUBSETS, kid_subset_size=KID_SUBSET_SIZE,
                                                          verbose=False, rng_seed=2020)}, bar)
    # values on the same points: one subset of all of them (both estimators are then deterministic)
    ours_all = kid(x, y, 1, KID_N)["kid"]
    ref_all = ref["kid"](x, y, kid_subsets=1, kid_subset_size=KID_N, verbose=False,
                         rng_seed=2020)["kernel_inception_distance_mean"]
    cases.append(_case("kid", t, {"value_all_points": ours_all, "reference_value_all_points": ref_all,
                                  "rel_diff": abs(ours_all - ref_all) / abs(ref_all),
                                  "note": "ours: float64 and the jackknife SE over all points besides; reference: "
                                          "the features' float32"},
                       n=KID_N, dim=D, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE))
    x, y = features(PR_N, 0.0, 5), features(PR_N, 0.05, 6)
    t, r = _side_by_side({"ours": lambda: precision_recall(x, y, k=3),
                          "reference": lambda: ref["pr"](x, y, neighborhood=3, batch_size=10000)}, bar)
    ours, theirs = (r["ours"]["precision"], r["ours"]["recall"]), tuple(r["reference"])
    cases.append(_case("precision_recall", t, {"value": list(ours), "reference_value": list(theirs),
                                               # the same counts: the reference's fractions are float32
                                               "equal": all(abs(a - b) < 0.5 / PR_N for a, b in zip(ours, theirs))},
                       n=PR_N, dim=D, k=3))
    bar.close()
    return {"reference": which, "target_fd_ratio_max": 1.10, "rounds": ROUNDS, "cases": cases}
