"""diffprop's FD, KID and precision/recall give torch-fidelity's values: against its functions as ``diffprop bench
metrics`` runs them (torch-fidelity's own where they import, else their transcriptions), on the bench's
Inception-like features, small enough for a test. Times are the bench's business, not this file's."""
from __future__ import annotations

import numpy as np
import pytest

from diffprop.bench.metrics_bench import features, reference
from diffprop.metrics.frechet import frechet_distance
from diffprop.metrics.kid import kid
from diffprop.metrics.precision_recall import precision_recall

REF, WHICH = reference()
DIM = 256  # the bench's 2048 makes torch-fidelity's eig take seconds


@pytest.mark.parametrize("n", [1000, 100])  # positive-definite covariances (Cholesky), singular ones (n < d)
def test_frechet_distance_is_torch_fidelitys(n):
    x, y = features(n, 0.0, 1, DIM).double().numpy(), features(n, 0.05, 2, DIM).double().numpy()
    s1, s2 = ({"mu": a.mean(0), "sigma": np.cov(a, rowvar=False)} for a in (x, y))
    ours = frechet_distance(s1["mu"], s1["sigma"], s2["mu"], s2["sigma"])
    theirs = REF["fd"](s1, s2, verbose=False)["frechet_inception_distance"]
    assert ours == pytest.approx(theirs, rel=1e-12 if n > DIM else 1e-6)
    assert ours > 1  # the sets differ: the value is not round-off
    if n < DIM:  # S1 = A A^T with A the centred features: tr (S1 S2)^(1/2) from the n x n matrix A^T S2 A, which has
        a = (x - x.mean(0)).T / np.sqrt(n - 1)  # no null space whose round-off torch-fidelity's eig turns into sqrt noise
        tr = np.sqrt(np.clip(np.linalg.eigvalsh(a.T @ s2["sigma"] @ a), 0, None)).sum()
        d = s1["mu"] - s2["mu"]
        clean = d @ d + np.trace(s1["sigma"]) + np.trace(s2["sigma"]) - 2 * tr
        assert ours == pytest.approx(clean, rel=1e-9) and abs(theirs - clean) > 10 * abs(ours - clean)


def test_kid_is_torch_fidelitys_on_the_same_points():
    x, y = features(300, 0.0, 3, DIM).double(), features(300, 0.05, 4, DIM).double()  # float64 on both sides
    theirs = REF["kid"](x, y, kid_subsets=1, kid_subset_size=300, verbose=False, rng_seed=0)
    assert kid(x, y, 1, 300)["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-10)


def test_precision_recall_is_torch_fidelitys():
    x, y = features(600, 0.0, 5, DIM).double(), features(500, 0.05, 6, DIM).double()
    ours = precision_recall(x, y, k=3)
    theirs = REF["pr"](x, y, neighborhood=3, batch_size=10000)  # fractions of 600 and 500, as float32
    assert (ours["precision"], ours["recall"]) == pytest.approx(theirs, abs=1e-6)
    assert 0.05 < ours["precision"] < 0.95 and 0.05 < ours["recall"] < 0.95
