"""MMD (000 Eq. 13) against a direct O(N^2) computation, its estimators, gradients and permutation test;
sliced Wasserstein against exact 1-D distances."""
import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import cdist, pdist

from diffprop.diagnostics.mmd import mmd, mmd_test
from diffprop.errors import DiffpropError
from diffprop.metrics.toy import sliced_wasserstein

NP_KERNELS = {  # written from the formulas in mmd.py's docstring, d2 = squared distance
    "rbf": lambda d2, h: np.exp(-d2 / (2 * h**2)),
    "rbf-mix": lambda d2, h: sum(np.exp(-d2 / (2 * (c * h) ** 2)) for c in (0.25, 0.5, 1, 2, 4)),
    "laplace": lambda d2, h: np.exp(-np.sqrt(d2) / h),
    "imq": lambda d2, h: 1 / np.sqrt(1 + d2 / h**2),
}


def _direct(x, y, kernel, bandwidth, estimator):
    z = np.concatenate([x, y])
    h = {"median": np.median, "mean": np.mean}[bandwidth](pdist(z)) if isinstance(bandwidth, str) else bandwidth
    k = lambda a, b: NP_KERNELS[kernel](cdist(a, b, "sqeuclidean"), h)  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    if estimator == "biased":
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    off = lambda a: (a.sum() - np.trace(a)) / (len(a) * (len(a) - 1))  # noqa: E731  i != j terms only
    return off(kxx) + off(kyy) - 2 * kxy.mean()


@pytest.mark.parametrize("kernel", list(NP_KERNELS))
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("bandwidth", ["median", "mean", 0.7])
def test_mmd_matches_direct_computation(kernel, estimator, bandwidth):
    g = np.random.default_rng(0)
    x, y = g.normal(size=(13, 3)), g.normal(0.3, 1.2, size=(17, 3))
    got = mmd(torch.from_numpy(x), torch.from_numpy(y), kernel, bandwidth, estimator)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_direct(x, y, kernel, bandwidth, estimator), rel=1e-10, abs=1e-13)


def test_unbiased_estimator_centred_on_zero_biased_positive():
    g = torch.Generator().manual_seed(0)
    vals = {"unbiased": [], "biased": []}
    for _ in range(200):
        x, y = torch.randn(2, 20, 2, generator=g, dtype=torch.float64)
        for est in vals:
            vals[est].append(mmd(x, y, "rbf-mix", 1.0, est).item())
    u, b = torch.tensor(vals["unbiased"]), torch.tensor(vals["biased"])
    se = u.std() / len(u) ** 0.5
    assert u.mean().abs() < 4 * se
    assert b.mean() > 20 * b.std() / len(b) ** 0.5


@pytest.mark.parametrize("kernel", list(NP_KERNELS))
def test_gradients_flow_to_x(kernel):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, requires_grad=True)
    y = torch.cat([x.detach()[:5], torch.randn(25, 4, generator=g)])  # exact zero distances included
    mmd(x, y, kernel).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 6, generator=g), torch.randn(33, 6, generator=g) + 0.2
    for kernel in NP_KERNELS:
        torch.testing.assert_close(mmd(x, y, kernel, chunk=7), mmd(x, y, kernel, chunk=4096), rtol=1e-9, atol=1e-12)


def test_mmd_test_null_calibrated_and_shift_detected():
    g = torch.Generator().manual_seed(3)
    p = []
    for _ in range(40):
        x, y = torch.randn(2, 40, 2, generator=g, dtype=torch.float64)
        p.append(mmd_test(x, y, num_permutations=100, generator=g).p_value)
    p = torch.tensor(p)
    assert (p < 0.05).sum() <= 6 and 0.3 < p.mean() < 0.7  # Binomial(40, 0.05): P(>= 7) ~ 1 %
    x, y = torch.randn(2, 100, 2, generator=g, dtype=torch.float64)
    res = mmd_test(x, y + torch.tensor([0.8, 0.0], dtype=torch.float64), generator=g)
    assert res.p_value < 0.01 and res.value > res.null_q95 > res.null_mean
    assert abs(res.null_mean) < 3 * res.null_std
    assert res.value == pytest.approx(mmd(x, y + torch.tensor([0.8, 0.0], dtype=torch.float64)).item(), rel=1e-9)


@pytest.mark.parametrize("args, kwargs, msg", [
    ((), {"kernel": "cosine"}, "unknown MMD kernel 'cosine'"),
    ((), {"estimator": "linear"}, "unknown MMD estimator 'linear'"),
    ((), {"bandwidth": "silverman"}, "unknown MMD bandwidth 'silverman'"),
    ((), {"bandwidth": -1.0}, "positive number"),
    ((1,), {}, "at least 2 samples"),
])
def test_mmd_errors(args, kwargs, msg):
    x, y = torch.randn(5, 2), torch.randn(6, 2)
    if args:
        x = x[:1]
    for fn in (mmd, mmd_test):
        with pytest.raises(DiffpropError, match=msg):
            fn(x, y, **kwargs)


def test_mmd_test_errors():
    with pytest.raises(DiffpropError, match="N \\+ M must be <= 6000"):
        mmd_test(torch.randn(3000, 1), torch.randn(3001, 1))
    with pytest.raises(DiffpropError, match="num_permutations >= 2"):
        mmd_test(torch.randn(5, 1), torch.randn(5, 1), num_permutations=1)


def test_sliced_wasserstein():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(2, 5000, 2, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(x, y, generator=g) < 0.03
    assert sliced_wasserstein(x, y + torch.tensor([1.0, 0.0], dtype=torch.float64), generator=g) > 0.5
    # 1-D: every direction is +-1, so sliced W1 is W1; a shift moves every quantile by |shift|
    x1 = x[:, :1]
    assert sliced_wasserstein(x1, x1 - 0.3, generator=g) == pytest.approx(0.3, rel=1e-9)
    y1 = torch.randn(777, 1, generator=g, dtype=torch.float64) * 1.5 + 0.2  # N != M
    assert sliced_wasserstein(x1, y1, generator=g) == pytest.approx(
        stats.wasserstein_distance(x1[:, 0].numpy(), y1[:, 0].numpy()), rel=1e-9)
