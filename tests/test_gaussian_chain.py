"""000 Thm 3.1 in closed form: on a linear-Gaussian chain its slack equals -R_t (the chain rule of KL), so the stated
inequality fails at every t, even for a model that meets its hypotheses; the closed forms agree with the library's
sampler and Monte-Carlo modular KL."""
import numpy as np
import pytest
import torch

from diffprop.diagnostics.exact import modular_kl
from diffprop.diagnostics.gaussian_chain import gaussian_chain
from diffprop.errors import DiffpropError
from diffprop.mixtures import GaussianMixture
from diffprop.oracle import OracleDenoiser
from diffprop.samplers import sample
from diffprop.schedules import NoiseSchedule

SCHED = NoiseSchedule.from_config("linear", 1000)


@pytest.mark.parametrize("model", [dict(), dict(eps_scale=1.1, eps_bias=0.1), dict(eps_scale=0.9),
                                   dict(standardized=True)])
def test_slack_is_minus_R_and_the_stated_inequality_fails(model):
    c = gaussian_chain(SCHED, **model)
    assert np.abs(c.slack + c.reverse).max() < 1e-12  # E_t = E_t+1 + E_t^mod - R_t, to rounding
    assert (c.reverse > 0).all() and (c.slack < 0).all()  # 000 Eq. 11 fails at every t
    assert (c.bound >= c.cumulative).all()  # what holds instead: E_t <= KL(p_T || q_T) + sum_u>=t E_u^mod
    assert c.cumulative_next[-1] == pytest.approx(0, abs=1e-8)  # abar_T ~ 4e-5: p_T = N(0, I) is nearly q_T


def test_a_model_meeting_the_hypotheses_still_fails():
    """eps output exactly N(0, I) on its own chain (000 Thm 3.1; App. D's E|eps|^2 = D) and entropy non-increasing
    as t falls: the inequality still fails, and by far more than rounding at small t."""
    c = gaussian_chain(SCHED, standardized=True)
    np.testing.assert_allclose(c.eps_moment, 1, atol=1e-9)
    assert (np.diff(c.chain_var) >= 0).all()  # P_0 <= P_1 <= ... <= P_T
    assert (c.slack < 0).all() and c.slack[:10].max() < -1e-3
    with pytest.raises(DiffpropError, match="standardized"):
        gaussian_chain(SCHED, standardized=True, eps_bias=0.1)
    with pytest.raises(DiffpropError, match="point mass"):
        gaussian_chain(SCHED, var_type="beta_tilde")  # beta_tilde_1 = 0


def test_closed_form_matches_the_sampler_and_modular_kl():
    """The recursion's m_t, P_t are the moments of the library's own chain, and E_t^mod is modular_kl (exact for a
    Gaussian posterior) averaged over that chain's states (000 Eq. 7)."""
    data = GaussianMixture(torch.zeros(1, 2), torch.tensor([0.5]), torch.ones(1))  # N(0, 0.25 I)
    model = OracleDenoiser(data, SCHED, eps_scale=1.1, eps_bias=0.1)
    c = gaussian_chain(SCHED, eps_scale=1.1, eps_bias=0.1)
    ts = [1, 10, 100, 500]
    states = sample(model.double(), 20000, (2,), seed=0, record=ts, progress=False).states
    for t in ts:
        x = states[t].double()
        se = (c.chain_var[t] / len(x)) ** 0.5
        assert abs(x.mean() - c.chain_mean[t]) < 4 * se, t
        assert x.var(0).mean() == pytest.approx(c.chain_var[t], rel=0.03), t
        kl = modular_kl(model, OracleDenoiser(data, SCHED), t, x[:4000], generator=torch.Generator().manual_seed(t))
        assert float(kl.mean()) == pytest.approx(c.modular[t - 1], rel=0.05), t
