"""The exact Gaussian-mixture oracle against Monte Carlo, and its perturbation knobs."""
import math

import pytest
import torch

from diffprop.mixtures import GaussianMixture
from diffprop.oracle import OracleDenoiser
from diffprop.process import q_posterior
from diffprop.schedules import NoiseSchedule

SCHED = NoiseSchedule.from_config("linear", 1000)
# A small, asymmetric mixture with unequal weights and stds, so no formula is right by symmetry.
MIX = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]]), torch.tensor([0.3, 0.5, 0.2]),
                      torch.tensor([0.5, 0.3, 0.2]))
ORACLE = OracleDenoiser(MIX, SCHED)


def _likelihood_weights(x0_or_prev, y, loc_scale, var):
    """N(y; loc_scale * x, var I) for each Monte-Carlo draw x, normalised: importance weights for p(x | y)."""
    logw = -0.5 * (y - loc_scale * x0_or_prev).pow(2).sum(1) / var
    return torch.softmax(logw, 0)


@pytest.mark.parametrize("t", [20, 200, 600])
def test_posterior_mean_x0_matches_monte_carlo(t):
    g = torch.Generator().manual_seed(t)
    x0 = MIX.sample(400_000, g)
    abar = SCHED.alpha_bars[t]
    for y in torch.tensor([[0.2, 0.4], [-1.1, 0.3], [1.0, 1.0]], dtype=torch.float64):
        y = y * abar.sqrt()
        w = _likelihood_weights(x0, y, abar.sqrt(), 1 - abar)
        mc = (w[:, None] * x0).sum(0)
        se = ((w[:, None] * (x0 - mc).pow(2)).sum(0) * w.pow(2).sum()).sqrt()  # importance-sampling std error
        exact = ORACLE.posterior_mean_x0(y[None], torch.tensor(t))[0]
        assert ((exact - mc).abs() < 5 * se + 1e-3).all(), (t, y, exact, mc, se)


@pytest.mark.parametrize("t", [10, 50, 400])
def test_posterior_mixture_matches_monte_carlo(t):
    """q(x_{t-1}|x_t) in closed form vs E_{x0|x_t}[q(x_{t-1}|x_t, x0)] by importance-weighted draws of x0,
    a different route (process.q_posterior, Ho et al. Eq. 7) to the same distribution."""
    g = torch.Generator().manual_seed(100 + t)
    x0 = MIX.sample(400_000, g)
    abar = SCHED.alpha_bars[t]
    # a typical x_t (at small t a point between the modes has almost no Monte-Carlo support)
    y = abar.sqrt() * MIX.sample(1, g) + (1 - abar).sqrt() * torch.randn(1, 2, generator=g, dtype=torch.float64)
    w = _likelihood_weights(x0, y, abar.sqrt(), 1 - abar)
    assert 1 / w.pow(2).sum() > 500  # effective sample size
    mu_tilde, var_tilde = q_posterior(SCHED, x0, y.expand_as(x0), torch.full((len(x0),), t))
    mc_mean = (w[:, None] * mu_tilde).sum(0)
    mc_var = (w[:, None] * (var_tilde + mu_tilde.pow(2))).sum(0) - mc_mean.pow(2)
    post = ORACLE.posterior(y, torch.tensor(t))
    mean = (post.weights[0, :, None] * post.means[0]).sum(0)
    var = (post.weights[0, :, None] * (post.variances[0, :, None] + post.means[0].pow(2))).sum(0) - mean.pow(2)
    torch.testing.assert_close(mean, mc_mean, atol=0.1 * var.sqrt().max().item(), rtol=0)
    torch.testing.assert_close(var, mc_var, rtol=0.1, atol=0)
    # exact draws from the mixture have the same moments
    draws = ORACLE.sample_posterior(y.expand(200_000, 2), torch.tensor(t), torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws.mean(0), mean, atol=5 * (var / 200_000).sqrt().max().item(), rtol=0)
    torch.testing.assert_close(draws.var(0), var, rtol=0.03, atol=0)


def test_log_prob_matches_monte_carlo_and_data_density():
    g = torch.Generator().manual_seed(0)
    x0 = MIX.sample(400_000, g)
    t = 300
    abar = SCHED.alpha_bars[t]
    y = torch.tensor([[0.1, 0.9]], dtype=torch.float64)
    dens = torch.exp(-0.5 * (y - abar.sqrt() * x0).pow(2).sum(1) / (1 - abar)) / (2 * math.pi * (1 - abar))
    assert ORACLE.log_prob(y, torch.tensor(t)).item() == pytest.approx(dens.mean().log().item(), abs=0.01)
    x = MIX.sample(10, g)
    torch.testing.assert_close(ORACLE.log_prob(x, torch.tensor(0)), MIX.log_prob(x))


def test_eps_knobs_perturb_the_noise_prediction_as_documented():
    x = torch.randn(16, 2, dtype=torch.float64)
    t = torch.full((16,), 250)
    exact = ORACLE.predict(x, t)
    bent = OracleDenoiser(MIX, SCHED, eps_scale=1.2, eps_bias=0.1).predict(x, t)
    torch.testing.assert_close(bent.eps, 1.2 * exact.eps + 0.1)
    abar = SCHED.alpha_bars[250]
    torch.testing.assert_close(bent.x0, (x - (1 - abar).sqrt() * bent.eps) / abar.sqrt())  # stays consistent
    torch.testing.assert_close(ORACLE.score(x, t), -exact.eps / (1 - abar).sqrt())


def test_per_sample_and_scalar_timesteps_agree():
    x = torch.randn(5, 2, dtype=torch.float64)
    a = ORACLE.predict(x, torch.tensor(77)).eps
    b = ORACLE.predict(x, torch.full((5,), 77)).eps
    torch.testing.assert_close(a, b)
