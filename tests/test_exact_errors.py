"""Exact errors on Gaussian-mixture data (000 Def. 3.1-3.2): k-NN entropy, cumulative and modular KL."""
import math

import numpy as np
import pytest
import torch

from diffprop.diagnostics.entropy import knn_entropy
from diffprop.diagnostics.exact import cumulative_kl, cumulative_kl_estimate, forward_samples, modular_error, modular_kl
from diffprop.errors import DiffpropError
from diffprop.metrics.toy import sample_metrics
from diffprop.mixtures import GaussianMixture, grid_mixture, ring_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.process import q_sample
from diffprop.samplers import sample
from diffprop.schedules import NoiseSchedule

SCHED = NoiseSchedule.from_config("linear", 1000)
MIX = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]]), torch.tensor([0.3, 0.5, 0.2]),
                      torch.tensor([0.5, 0.3, 0.2]))
GRID = grid_mixture()  # gmm-grid: 49 modes, std 0.05


def _forward(mix, t, n, g):
    """Exact draws from q(x_t) (000 Eq. 1)."""
    x0 = mix.sample(n, g)
    return q_sample(SCHED, x0, torch.tensor(t), torch.randn(x0.shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("D", [1, 2, 5])
def test_knn_entropy_of_gaussian(D):
    s = 0.7
    x = s * torch.randn(5000, D, generator=torch.Generator().manual_seed(D), dtype=torch.float64)
    assert knn_entropy(x) == pytest.approx(0.5 * D * math.log(2 * math.pi * math.e * s**2), abs=0.1)


def test_knn_entropy_duplicates_and_errors():
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = knn_entropy(torch.cat([x, x[:100], x[:100]]))  # 100 points with two exact copies
    assert math.isfinite(h) and h < knn_entropy(x)
    with pytest.raises(DiffpropError, match="entropy is -inf"):
        knn_entropy(torch.zeros(10, 2))
    with pytest.raises(DiffpropError, match="1 <= k < N"):
        knn_entropy(x[:3], k=3)
    with pytest.raises(DiffpropError, match="NaN"):
        knn_entropy(torch.full((10, 2), math.nan))


@pytest.mark.parametrize("mix, n, ts", [(MIX, 5000, [0, 10, 100, 500]), (GRID, 20000, [1, 100, 500])])
def test_cumulative_kl_of_exact_samples_is_zero(mix, n, ts):
    """Samples of q(x_t) itself: KL = 0 up to the k-NN estimator's bias (~0.03 on gmm-grid at 20000 samples)."""
    g = torch.Generator().manual_seed(0)
    oracle = OracleDenoiser(mix, SCHED)
    for t in ts:
        assert abs(cumulative_kl(_forward(mix, t, n, g), oracle, t)) < 0.05, t


def test_floor_corrected_kl_reads_zero_on_the_exact_oracle():
    """The exact oracle's chain (gmm-ring, N = 2000) reads E_t^cumu ~ 0 once the floor on fresh exact samples is
    removed (with duplicates in the floor's sample it read 0.02-0.06 too low); an eps-bias of 0.1 reads >= 5x the
    tolerance at t = 1. At t = 1 the chain's x_0 gets its sigma_1 noise back, as propagation does (000 Eq. 2)."""
    ring = ring_mixture()
    oracle = OracleDenoiser(ring, SCHED)
    ts, g = [1, 10, 100], torch.Generator().manual_seed(0)

    def readings(model):
        states = sample(model, 2000, (2,), seed=1, record=[t - 1 for t in ts], progress=False).states
        states[0] = states[0] + SCHED.betas[1].sqrt() * torch.randn(states[0].shape, generator=g)
        return [cumulative_kl_estimate(states[t - 1], oracle, t - 1, generator=g) for t in ts]

    exact = readings(oracle)
    assert sum(abs(e.value) for e in exact) / len(ts) <= 0.02
    assert all(0.002 < e.se < 0.03 for e in exact)
    assert readings(OracleDenoiser(ring, SCHED, eps_bias=0.1))[0].value >= 5 * 0.02


def test_floor_corrected_kl_noise_matches_its_spread():
    """``se`` (the floors' spread) is the spread of the estimate over fresh exact samples, within a factor 1.6."""
    ring, g = ring_mixture(), torch.Generator().manual_seed(4)
    oracle = OracleDenoiser(ring, SCHED)
    x = forward_samples(oracle, 10, 500, g)
    assert len(torch.unique(x, dim=0)) == 500  # fresh: no duplicates
    est = [cumulative_kl_estimate(forward_samples(oracle, 10, 500, g), oracle, 10, generator=g) for _ in range(24)]
    spread, se = np.std([e.value for e in est], ddof=1), np.mean([e.se for e in est])
    assert spread / 1.6 < se < spread * 1.6, (spread, se)
    with pytest.raises(DiffpropError, match="floors >= 2"):
        cumulative_kl_estimate(x, oracle, 10, floors=1)


def test_cumulative_kl_detects_shift():
    g = torch.Generator().manual_seed(1)
    oracle = OracleDenoiser(GRID, SCHED)
    assert cumulative_kl(_forward(GRID, 1, 5000, g) + 0.2, oracle, 1) > 5  # modes are 0.05 wide
    shifted = cumulative_kl(_forward(GRID, 500, 5000, g) + 0.2, oracle, 500)  # x_t has unit-scale noise
    assert 0.01 < shifted < 0.1  # ~ |shift|^2 / 2 per unit variance, minus estimator noise


@pytest.mark.parametrize("t", [1, 10, 100, 500])
@pytest.mark.parametrize("var_type", ["beta", "beta_tilde"])
@pytest.mark.parametrize("eps_bias", [0.0, 0.1])
def test_modular_kl_single_gaussian_closed_form(t, var_type, eps_bias):
    """q(x_{t-1}|x_t) of a one-component mixture is Gaussian, derived here by Gaussian conditioning
    (x_{t-1} ~ N(sqrt(abar_{t-1}) m, v_{t-1} I), x_t|x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t I)); p_theta's
    mean from 000 Eq. 4. KL between two isotropic Gaussians is analytic. A two-component mixture with both
    components equal is the same distribution."""
    m, s = torch.tensor([[0.5, -1.0, 2.0]]), 0.3
    if t == 1 and var_type == "beta_tilde":  # beta_tilde_1 = 0: p_theta is a point mass, the KL is undefined
        oracle = OracleDenoiser(GaussianMixture(m, torch.tensor([s]), torch.tensor([1.0])), SCHED)
        with pytest.raises(DiffpropError, match="beta_tilde"):
            modular_kl(oracle, oracle, 1, torch.zeros(2, 3, dtype=torch.float64), "beta_tilde")
        return
    single = GaussianMixture(m, torch.tensor([s]), torch.tensor([1.0]))
    double = GaussianMixture(m.repeat(2, 1), torch.tensor([s, s]), torch.tensor([0.3, 0.7]))
    den = OracleDenoiser(single, SCHED, eps_bias=eps_bias)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    a, ap, al, b = SCHED.alpha_bars[t], SCHED.alpha_bars_prev[t], SCHED.alphas[t], SCHED.betas[t]
    v_prev = ap * s**2 + 1 - ap
    q_var = 1 / (1 / v_prev + al / b)
    q_mean = q_var * (ap.sqrt() * m / v_prev + al.sqrt() * x / b)
    p_mean = (x - b / (1 - a).sqrt() * den.eps(x, torch.tensor(t))) / al.sqrt()  # 000 Eq. 4
    r = (b if var_type == "beta" else SCHED.betas_tilde[t]) / q_var
    exact = 0.5 * (3 * (r - 1 - torch.log(r)) + (p_mean - q_mean).pow(2).sum(1) / q_var)
    for mix in (single, double):
        kl = modular_kl(den, OracleDenoiser(mix, SCHED), t, x, var_type, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(kl, exact, rtol=1e-6, atol=1e-10)


def test_modular_error_on_grid():
    """The exact oracle's step differs from q(x_{t-1}|x_t) only in its (Gaussian, beta_t) variance: KL ~ 0 at
    large t; an eps-bias of 0.1 shifts the mean by beta_t / sqrt(1 - abar_t) * 0.1 and the KL grows."""
    g = torch.Generator().manual_seed(2)
    exact, biased = OracleDenoiser(GRID, SCHED), OracleDenoiser(GRID, SCHED, eps_bias=0.1)
    for t in (1, 10, 100, 500):
        x_t = _forward(GRID, t, 400, g)
        kl, kl_biased = (modular_kl(d, exact, t, x_t, num_mc=256, generator=torch.Generator().manual_seed(t))
                         for d in (exact, biased))  # common random numbers
        assert kl.min() > -0.01 and kl.mean() > -1e-4, t  # KL >= 0 up to Monte-Carlo noise
        assert kl_biased.mean() > kl.mean() + 5e-5, t
    assert abs(modular_error(exact, exact, 500, num=500, generator=g)) < 2e-5
    assert modular_error(biased, exact, 1, num=500, generator=g) > 10 * modular_error(exact, exact, 1, num=500,
                                                                                         generator=g)


def test_modular_kl_errors():
    oracle = OracleDenoiser(MIX, SCHED)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(DiffpropError, match="point mass"):
        modular_kl(oracle, oracle, 1, x, "beta_tilde")
    with pytest.raises(DiffpropError, match="unknown backward variance"):
        modular_kl(oracle, oracle, 5, x, "fixed")
    with pytest.raises(DiffpropError, match="num_mc >= 4"):
        modular_kl(oracle, oracle, 5, x, num_mc=2)


def test_sample_metrics_new_keys():
    g = torch.Generator().manual_seed(3)
    data = GRID.sample(3000, g).float()
    good = sample_metrics(GRID.sample(3000, g).float(), data, GRID)
    bad = sample_metrics(GRID.sample(3000, g).float() * 1.2, data, GRID)
    assert {"mmd_rbf", "mode_coverage", "sliced_wasserstein", "kl_estimate"} <= good.keys()
    assert abs(good["kl_estimate"]) < 0.1 and bad["kl_estimate"] > 1
    assert bad["sliced_wasserstein"] > 2 * good["sliced_wasserstein"]  # good: ~0.08, mode-count noise
    plain = sample_metrics(data, data)
    assert "sliced_wasserstein" in plain and "kl_estimate" not in plain
    nan = sample_metrics(torch.full((10, 2), math.nan), data, GRID)
    assert math.isnan(nan["kl_estimate"]) and "warning" in nan
