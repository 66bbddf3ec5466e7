"""SMD's mixture objective (``[smd] loss = "mixture"``, diffprop.losses.smd_mixture): closed forms, the
importance-weighted bound, a bimodal posterior where only a model that uses eta wins, and training from the CLI."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from diffprop.cli import main
from diffprop.denoisers import Denoiser, SMDDenoiser
from diffprop.losses.denoising import regression_loss
from diffprop.losses.smd_mixture import mixture_loss, mixture_nll
from diffprop.nets import build_smd_net
from diffprop.nets.mlp import TimeMLP
from diffprop.process import q_sample
from diffprop.schedules import NoiseSchedule

from .conftest import TINY

SCHED = NoiseSchedule.from_config("linear", 100, 1e-4, 0.02)
COARSE = NoiseSchedule(np.array([0.05, 0.9]))  # at t = 2: c0^2 / beta~ = 18.9


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_mixture_nll_is_minus_the_log_of_the_equal_weight_gaussian_mixture():
    g = _gen(0)
    x, means, var = torch.randn(5, 3, generator=g), torch.randn(4, 5, 3, generator=g), torch.rand(5, generator=g) + .1
    ours = mixture_nll(x.double(), means.double(), var.double()).numpy()
    logs = np.array([[stats.multivariate_normal(means[k, b], float(var[b]) * np.eye(3)).logpdf(x[b])
                      for b in range(5)] for k in range(4)])
    np.testing.assert_allclose(ours, -(logsumexp(logs, 0) - math.log(4)), rtol=1e-10)


def _smd(parameterization="eps", seed=0, schedule=SCHED):
    torch.manual_seed(seed)
    net = build_smd_net("mlp", (2,), "official", latent_dim=8, g_width=32, width=32, depth=2, time_dim=16)
    return SMDDenoiser(net, schedule, parameterization, loss="mixture").double()


def _batch(den, n=64, seed=1):
    g = _gen(seed)
    x0, eps = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.randint(1, den.schedule.T + 1, (n,), generator=g)
    t[:4] = torch.tensor([1, 2, den.schedule.T - 1, den.schedule.T])  # both ends, t = 1 with its clipped variance
    return q_sample(den.schedule, x0, t, eps), t, den.target(x0, t, eps)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_one_draw_is_exactly_the_squared_error_of_the_gaussian_step(parameterization):
    """K = 1: the mixture is one Gaussian N(mu_theta, beta_tilde); the antithetic pair and the control variate
    leave exactly ``KL(N(mu~, beta~) || N(mu_theta, beta~)) = |mu~ - mu_theta|^2 / (2 beta~)``, and dividing by
    its weight ``c_t`` gives 002's Eq. 14 term ``|target - raw|^2 / D`` on the same eta."""
    den = _smd(parameterization)
    x_t, t, target = _batch(den)
    ours = mixture_loss(den, x_t, t, target, 1, _gen(5))
    g = _gen(5)
    eta = den.draw_eta(x_t, g)
    mse = (den.raw(x_t, t, eta=eta) - target).pow(2).mean(1)
    torch.testing.assert_close(ours, mse, rtol=1e-9, atol=1e-12)
    # and it is what regression_loss computes for loss = "mixture", n_eta = 1
    torch.testing.assert_close(regression_loss(den, x_t, t, target, _gen(5)), mse, rtol=1e-9, atol=1e-12)


def test_one_draw_before_reweighting_is_the_gaussian_nll_less_the_posteriors():
    """The same K = 1 case from the densities: ``E_q[-log N(x; mu_theta, v)] - E_q[-log N(x; mu~, v)]`` by scipy's
    logpdf on the same antithetic draws, times ``2 v / (D a_t^2)``, ``a_t = c0 sqrt(1 - abar) / sqrt(abar)``."""
    den = _smd("eps")
    x_t, t, target = _batch(den, n=6)
    t[:] = 30
    ours = mixture_loss(den, x_t, t, target, 1, _gen(5)).detach().numpy()
    g = _gen(5)
    raw = den.raw(x_t, t, eta=den.draw_eta(x_t, g)).detach()
    xi = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
    s = den.schedule
    ab, ap, b = s.alpha_bars[30], s.alpha_bars[29], s.betas[30]
    c0, ct, v = ap.sqrt() * b / (1 - ab), (1 - b).sqrt() * (1 - ap) / (1 - ab), (1 - ap) / (1 - ab) * b
    x0 = (x_t - (1 - ab).sqrt() * target) / ab.sqrt()
    x0_hat = (x_t - (1 - ab).sqrt() * raw) / ab.sqrt()
    mu_q, mu_th = c0 * x0 + ct * x_t, c0 * x0_hat + ct * x_t
    nll = lambda x, m: -stats.multivariate_normal(m, float(v) * np.eye(2)).logpdf(x)  # noqa: E731
    kl = np.array([np.mean([nll(mu_q[i] + sg * v.sqrt() * xi[i], mu_th[i]) - nll(mu_q[i] + sg * v.sqrt() * xi[i],
                                                                                 mu_q[i]) for sg in (1, -1)])
                   for i in range(6)])
    a = c0 * (1 - ab).sqrt() / ab.sqrt()
    np.testing.assert_allclose(ours, kl * 2 * float(v) / (2 * float(a) ** 2), rtol=1e-8)


def test_a_network_that_ignores_eta_has_the_same_loss_for_every_k():
    """Equal components: ``-log (1/K) sum_k N = -log N`` for any K (a wrong ``log K`` would show here)."""
    torch.manual_seed(0)
    den = Denoiser(TimeMLP(2, width=32, depth=2, time_dim=16), SCHED).double()
    den.loss = "mixture"
    x_t, t, target = _batch(den)
    one = mixture_loss(den, x_t, t, target, 1, _gen(3))
    for k in (2, 7):
        torch.testing.assert_close(mixture_loss(den, x_t, t, target, k, _gen(3)), one, rtol=1e-9, atol=1e-12)


def test_more_draws_give_a_lower_bound_on_average():
    """IWAE (Burda et al. 2016, Thm 1): ``E[L_K]`` does not increase with K, and decreases for a network whose
    mean depends on eta. Per draw, K draws are also below the mean of their K single-draw losses (Jensen)."""
    den = _smd("eps", seed=2, schedule=COARSE)  # big steps: the mixture's components are far apart against beta~
    x_t, t, target = _batch(den, n=256, seed=4)
    t[:] = 2
    with torch.no_grad():
        means = {k: torch.stack([mixture_loss(den, x_t, t, target, k, _gen(100 + r)).mean() for r in range(40)])
                 for k in (1, 2, 8)}
    m = {k: (float(v.mean()), float(v.std() / math.sqrt(len(v)))) for k, v in means.items()}
    assert m[1][0] - m[2][0] > 3 * math.hypot(m[1][1], m[2][1]), m
    assert m[2][0] - m[8][0] > 3 * math.hypot(m[2][1], m[8][1]), m
    # Jensen on the same draws: -log mean_k N(x; mu_k) <= mean_k -log N(x; mu_k) at every x, so per example the
    # K-draw loss is below the mean of the K single-draw losses (each exactly its squared error)
    with torch.no_grad():
        k4 = mixture_loss(den, x_t, t, target, 4, _gen(11))
        raws = den.raw(x_t.repeat(4, 1), t.repeat(4), eta=den.draw_eta(x_t.repeat(4, 1), _gen(11)))
    single = (raws - target.repeat(4, 1)).pow(2).mean(1).view(4, -1).mean(0)
    assert bool((k4 <= single + 1e-9).all()) and float((single - k4).mean()) > 1e-5, (k4 - single)


class _Modes(torch.nn.Module):
    """An SMD net on 1-D data predicting ``x0 = sign(eta)`` (``spread=True``) or the posterior mean 0."""

    eta_shape = (1,)

    def __init__(self, spread: bool):
        super().__init__()
        self.spread = spread

    def forward(self, x, t, eta):
        return torch.sign(eta) if self.spread else torch.zeros_like(x)


def test_on_a_bimodal_posterior_a_model_that_uses_eta_beats_every_model_that_ignores_it():
    """Data ``x0 = +-1`` with probability 1/2, ``x_t = 0``: ``q(x_0|x_t)`` is the two points. Among eta-ignoring
    models the best prediction is the posterior mean 0 (squared error 1 in x0 units for either x0); its mixture loss
    is 1 for every K. ``x0_hat = sign(eta)`` has squared error 2 at K = 1 (it loses under 002's Eq. 14), but its
    mixture over eta is the exact ``q(x_{t-1}|x_t)``: as K grows its loss falls to
    ``E[-log(1/2 + 1/2 exp(-2 c0^2 / beta~ - 2 c0 sqrt(beta~) xi / beta~))] / c`` with ``c = c0^2 / (2 beta~)``."""
    sched = COARSE
    t, n = torch.full((4000,), 2), 4000
    x_t = torch.zeros(n, 1, dtype=torch.float64)
    x0 = torch.where(torch.rand(n, 1, generator=_gen(0), dtype=torch.float64) < 0.5, -1.0, 1.0)
    loss = {}
    for spread in (False, True):
        den = SMDDenoiser(_Modes(spread), sched, "x0").double()
        for k in (1, 4, 64):
            loss[spread, k] = float(mixture_loss(den, x_t, t, x0, k, _gen(k)).mean())
    for k in (1, 4, 64):
        assert loss[False, k] == pytest.approx(1.0, abs=1e-9)
    assert loss[True, 1] == pytest.approx(2.0, abs=0.15)  # |x0 - sign(eta)|^2 is 0 or 4
    ab, ap, b = sched.alpha_bars[2], sched.alpha_bars[1], sched.betas[2]
    c0, v = float(ap.sqrt() * b / (1 - ab)), float((1 - ap) / (1 - ab) * b)
    xi = torch.randn(200000, generator=_gen(1), dtype=torch.float64)
    limit = float(-torch.log(0.5 + 0.5 * torch.exp(-2 * c0**2 / v - 2 * c0 * xi / v ** 0.5)).mean()) / (c0**2 / (2 * v))
    assert limit < 0.2
    assert loss[True, 4] < loss[True, 1] and loss[True, 64] < 0.9 * loss[False, 64], loss
    assert loss[True, 64] == pytest.approx(limit, rel=0.1), (loss, limit)


def test_train_with_the_mixture_loss_from_the_cli(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("")
    sets = TINY + ["model.smd=true", "smd.latent_dim=8", "smd.n_eta=3", "smd.loss=mixture", "train.steps=20",
                   "diffusion.beta_start=1e-4", "diffusion.beta_end=0.02", "diffusion.var_type=beta_tilde"]
    argv = ["train", "configs/smd-grid.toml", "--out", str(tmp_path / "run"), "--quiet"]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0, capsys.readouterr()
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["denoising"] for r in logs if "denoising" in r]
    assert losses and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert 'loss = "mixture"' in (tmp_path / "run" / "config.toml").read_text()
    out = tmp_path / "s.npz"
    assert main(["sample", str(tmp_path / "run"), "--num", "16", "--steps", "5", "--out", str(out)]) == 0
    assert np.isfinite(np.load(out)["samples"]).all()
