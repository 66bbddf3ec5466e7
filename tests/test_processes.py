"""The continuous-time core: processes in closed form, the oracle under every process, the EDM preconditioning,
the step samplers behind one driver, and per-sample noise."""
import math

import pytest
import torch

from diffprop.denoisers import ProcessDenoiser
from diffprop.errors import DiffpropError
from diffprop.metrics.toy import mixture_metrics
from diffprop.mixtures import GaussianMixture, grid_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.processes import EDM, VESDE, VPSDE, DiscreteVP, SubVPSDE, build_process
from diffprop.samplers import GENERAL, SAMPLERS, ddim_step, sample, sample_from, sampler_times
from diffprop.samplers.ddpm import ddpm_step
from diffprop.schedules import NoiseSchedule

F64 = torch.float64
GRID = grid_mixture()
DATA = GRID.sample(2000, torch.Generator().manual_seed(0))
LIN = NoiseSchedule.from_config("linear", 1000)
PROCESSES = {"discrete": DiscreteVP(LIN), "vp-sde": VPSDE(), "subvp-sde": SubVPSDE(),
             "ve-sde": build_process("ve-sde", data=DATA), "edm": build_process("edm", data=DATA)}


def _inner_times(p, n=9):
    """Times strictly inside (t_min, t_max), away from the discrete chain's integer kinks."""
    return torch.linspace(p.t_min, p.t_max, n + 2, dtype=F64)[1:-1] + (0.37 if isinstance(p, DiscreteVP) else 0)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_sde_moves_the_marginal_variance(name):
    """For data N(0, s^2) the forward SDE's variance v(t) = alpha^2 s^2 + sigma^2 obeys dv/dt = 2 f' v + g^2
    (f = f' x): dlog_alpha and dsigma2 agree with alpha2 and sigma2 (finite differences)."""
    p = PROCESSES[name]
    t = _inner_times(p)
    h = 1e-6 * (p.t_max - p.t_min)
    for s2 in (0.05**2, 1.0, 4.0):
        v = lambda u: p.alpha2(u) * s2 + p.sigma2(u)  # noqa: E731
        dv = (v(t + h) - v(t - h)) / (2 * h)
        f, g2 = p.sde(torch.ones(len(t), 1, dtype=F64), t)  # f at x = 1 is f'
        torch.testing.assert_close(dv, 2 * f[:, 0] * v(t) + g2[:, 0], rtol=1e-5, atol=1e-9)


def test_known_diffusion_coefficients():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    x = torch.ones(3, 1, dtype=F64)
    vp, sub = VPSDE(), SubVPSDE()
    B = 0.1 * t + 0.5 * 19.9 * t**2
    torch.testing.assert_close(vp.sde(x, t)[1][:, 0], vp.beta(t))  # g^2 = beta(t) (004 Eq. 11)
    torch.testing.assert_close(sub.sde(x, t)[1][:, 0], vp.beta(t) * (1 - torch.exp(-2 * B)))  # 004 Eq. 12
    torch.testing.assert_close(EDM().sde(x, t)[1][:, 0], 2 * t)  # sigma = t
    ve = VESDE(0.01, 50.0)
    torch.testing.assert_close(ve.sigma(t), 0.01 * 5000**t)
    torch.testing.assert_close(vp.sde(x, t)[0][:, 0], -vp.beta(t) / 2)


def test_discrete_vp_is_the_schedule_exactly():
    p = DiscreteVP(LIN)
    ts = torch.arange(0, 1001)
    assert torch.equal(p.alpha2(ts.double()), LIN.alpha_bars)
    x = torch.zeros(5, 2)
    for t in (1, 17, 1000):
        a2, s2 = p.coefficients(torch.tensor(t), x)
        assert torch.equal(a2, LIN.gather("alpha_bars", torch.tensor(t), x)) and torch.equal(s2, 1 - a2)
    # between integers log abar is linear; the diffusion coefficient on (k-1, k] is -log(1 - beta_k) ~ beta_k
    mid = torch.tensor(10.5, dtype=F64)
    torch.testing.assert_close(p.alpha2(mid), (LIN.alpha_bars[10] * LIN.alpha_bars[11]).sqrt())
    torch.testing.assert_close(p.sde(torch.ones(1, 1, dtype=F64), mid)[1], -torch.log(1 - LIN.betas[11]))
    assert torch.allclose(p.transition_var(torch.tensor(7.0), torch.tensor(6.0)), LIN.betas[7])
    even = p.grid(10)
    assert even.tolist() == [*reversed(LIN.spaced(10, "even")), 0]


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("kind", ["uniform", "quadratic", "edm"])
def test_grids_run_from_t_max_to_t_min_then_zero(name, kind):
    p = PROCESSES[name]
    g = p.grid(12, kind)
    assert len(g) == 13 and g[-1] == 0 and (g.diff() < 0).all()
    assert math.isclose(g[0], p.t_max) and math.isclose(g[-2], p.t_min, rel_tol=1e-9)
    if kind == "edm":  # sigma / alpha uniform in its 1/7th power (Karras et al. 2022 Eq. 5)
        r = torch.exp(-p.log_snr(g[:-1]) / 2) ** (1 / 7)
        torch.testing.assert_close(r.diff(), r.diff().mean().expand(11), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_log_snr_inverts(name):
    p = PROCESSES[name]
    t = _inner_times(p)
    torch.testing.assert_close(p.time_at_log_snr(p.log_snr(t)), t, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_oracle_score_is_the_gradient_of_its_log_density(name):
    """Under every process the oracle's score -eps / sigma equals grad log q_t of its own mixture density, and
    x0 = E[x_0|x_t] by Tweedie's formula (x_t + sigma^2 score) / alpha."""
    p = PROCESSES[name]
    o = OracleDenoiser(GRID, p)
    for t in _inner_times(p, 3):
        x = (p.alpha(t) * DATA[:32] + p.sigma(t) * torch.randn(32, 2, dtype=F64)).requires_grad_(True)
        grad, = torch.autograd.grad(o.log_prob(x, t).sum(), x)
        torch.testing.assert_close(o.score(x.detach(), t), grad, rtol=1e-6, atol=1e-8)
        x0 = (x.detach() + p.sigma2(t) * grad) / p.alpha(t)
        torch.testing.assert_close(o.x0(x.detach(), t), x0, rtol=1e-6, atol=1e-8)


class _Echo(torch.nn.Module):
    """A 'backbone' that returns a fixed output and remembers its input."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, c):
        self.seen = (x, c)
        return self.out


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("param", ["eps", "x0", "v", "edm"])
def test_a_net_that_outputs_the_target_predicts_exactly(name, param):
    """``predict`` inverts ``target``: a backbone returning target(x0, t, eps) yields (eps, x0) exactly, and for
    data of std sigma_data the backbone's input has unit variance (c_in, Karras et al. Tab. 1)."""
    p = PROCESSES[name]
    if param == "v" and not p.vp:
        with pytest.raises(DiffpropError, match="variance-preserving"):
            ProcessDenoiser(_Echo(None), p, param)
        return
    g = torch.Generator().manual_seed(1)
    x0, eps = 1.7 * torch.randn(4000, 2, generator=g, dtype=F64), torch.randn(4000, 2, generator=g, dtype=F64)
    t = _inner_times(p, 4)[torch.randint(0, 4, (4000,), generator=g)]
    den = ProcessDenoiser(_Echo(None), p, param, sigma_data=1.7)
    x_t = p.marginal(x0, t, eps)
    den.net.out = den.target(x0, t, eps)
    pred = den.predict(x_t, t)
    torch.testing.assert_close(pred.x0, x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(pred.eps, eps, rtol=1e-8, atol=1e-7)
    assert abs(float(den.net.seen[0].std()) - 1) < 0.05
    torch.testing.assert_close(den.net.seen[1], p.net_time(t))


def test_ddim_on_a_variance_exploding_process_is_x0_plus_sigma_eps():
    p = PROCESSES["ve-sde"]
    o = OracleDenoiser(GRID, p)
    x = p.sigma(torch.tensor(0.5)) * torch.randn(16, 2, dtype=F64)
    eps, x0 = o.predict(x, torch.tensor(0.5, dtype=F64))
    out = ddim_step(o, x, 0.5, 0.25)
    torch.testing.assert_close(out, x0 + p.sigma(torch.tensor(0.25)) * eps)


def _quality(den, sampler, n=1000):
    out = sample(den, n, (2,), sampler=sampler, seed=1, progress=False)
    return mixture_metrics(out.x.float(), GRID), out.nfe


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("sampler", GENERAL)
def test_every_sampler_reproduces_gmm_grid_with_the_oracle(name, sampler):
    """Acceptance: at its default steps every sampler draws gmm-grid from the exact oracle under every process:
    >= 97 % of samples within 4 std of a mean, all 49 modes, equal weights (chi-square p > 1e-3), within-mode
    spread within 15 % of 0.05."""
    m, _ = _quality(OracleDenoiser(GRID, PROCESSES[name]), sampler)
    assert m["high_quality_fraction"] >= 0.97 and m["mode_coverage"] == 1.0, m
    assert m["mode_weights_pvalue"] > 1e-3, m
    assert 0.85 <= m["within_mode_std_ratio"] <= 1.15, m


def test_a_biased_oracle_fails_the_acceptance():
    """The acceptance checks can fail: a noise prediction off by 0.1 skews the mode weights (chi-square p ~ 1e-70
    for heun and pc on VP-SDE, while samples stay on the modes)."""
    for sampler in ("heun", "pc"):
        m, _ = _quality(OracleDenoiser(GRID, PROCESSES["vp-sde"], eps_bias=0.1), sampler)
        assert m["mode_weights_pvalue"] < 1e-6, m


def test_heun_at_49_evaluations_matches_ddpm_at_1000():
    o = OracleDenoiser(GRID, PROCESSES["discrete"])
    heun, nfe_h = _quality(o, "heun", 2000)
    ddpm, nfe_d = _quality(o, "ddpm", 2000)
    assert nfe_h == 49 and nfe_d == 1000
    assert abs(heun["high_quality_fraction"] - ddpm["high_quality_fraction"]) < 0.01
    assert abs(heun["within_mode_std_ratio"] - ddpm["within_mode_std_ratio"]) < 0.05
    assert heun["mode_weights_pvalue"] > 1e-3


@pytest.mark.parametrize("sampler", ["ddpm", "pc", "heun"])
def test_samples_depend_on_seed_and_index_not_on_batch_size(sampler):
    o = OracleDenoiser(GRID, NoiseSchedule.from_config("linear", 50))
    one = sample(o, 200, (2,), sampler=sampler, steps=20, seed=5, progress=False).x
    for bs in (64, 100, 128):  # 100 is rounded up to 128
        assert torch.equal(sample(o, 200, (2,), sampler=sampler, steps=20, seed=5, progress=False,
                                  batch_size=bs).x, one)
    # fewer samples: the same first ones (pc's Langevin step sizes average over blocks of 64, so whole blocks)
    n = 128 if sampler == "pc" else 70
    assert torch.equal(sample(o, n, (2,), sampler=sampler, steps=20, seed=5, progress=False).x, one[:n])
    assert not torch.equal(sample(o, 200, (2,), sampler=sampler, steps=20, seed=6, progress=False).x, one)
    a = sample(o, 200, (2,), steps=20, seed=5, progress=False, noise="stream", batch_size=64).x
    b = sample(o, 200, (2,), steps=20, seed=5, progress=False, noise="stream", batch_size=100).x
    assert not torch.equal(a, b)  # one stream: what a sample gets depends on the batches


def test_driver_records_counts_and_calls_back():
    o = OracleDenoiser(GRID, VPSDE())
    times = sampler_times(o, "heun", 5)
    seen = []
    out = sample_from(o, torch.randn(8, 2, dtype=F64), times, SAMPLERS["heun"].step, record=times[[0, 2, -1]],
                      callback=lambda i, t, x: seen.append((i, t)))
    assert out.nfe == 9 and len(seen) == 5 and seen[-1] == (4, 0)
    assert sorted(out.states) == sorted([0, float(times[2]), 1])
    assert "predict" not in o.__dict__  # the counter is gone


def test_ddpm_step_on_per_sample_times_equals_one_time_at_a_time():
    o = OracleDenoiser(GRID, LIN)
    x = torch.randn(6, 2, dtype=F64)
    t, s = torch.tensor([5, 5, 9, 9, 300, 300]), torch.tensor([4, 4, 2, 2, 299, 299])
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 2, generator=g, dtype=F64)
    batched = ddpm_step(o, x, t, s, torch.Generator().manual_seed(0))
    for i in range(0, 6, 2):
        mean = ddpm_step(o, x[i:i + 2], int(t[i]), 0 * int(s[i]))  # x0_hat: the posterior mean's anchor
        assert torch.isfinite(mean).all()
        ab_t, ab_s = LIN.alpha_bars[t[i]], LIN.alpha_bars[s[i]]
        beta = 1 - ab_t / ab_s
        x0 = o.x0(x[i:i + 2], t[i])
        mu = ab_s.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t) * x[i:i + 2]
        torch.testing.assert_close(batched[i:i + 2], mu + beta.sqrt() * z[i:i + 2])


def test_bad_process_and_grid_inputs():
    with pytest.raises(DiffpropError, match="unknown process 'vpsde'; allowed: discrete, vp-sde"):
        build_process("vpsde")
    with pytest.raises(DiffpropError, match="0 < sigma_min < sigma_max"):
        VESDE(1.0, 0.5)
    with pytest.raises(DiffpropError, match="unknown time grid 'cosine'"):
        VPSDE().grid(10, "cosine")
    with pytest.raises(DiffpropError, match="steps offset applies to the discrete chain"):
        VPSDE().grid(10, "uniform", 2)
    with pytest.raises(DiffpropError, match="time grid 'leading' does not apply to the vp-sde process"):
        sample(OracleDenoiser(GRID, VPSDE()), 4, (2,), sampler="ddim", spacing="leading", progress=False)
    with pytest.raises(DiffpropError, match="sampler heun: unknown option"):
        sample(OracleDenoiser(GRID, VPSDE()), 4, (2,), sampler="heun", eta=0.5, progress=False)
    with pytest.raises(DiffpropError, match="defined on the discrete chain"):
        OracleDenoiser(GRID, VPSDE()).posterior(torch.zeros(2, 2), 0.5)


def test_one_component_mixture_is_gaussian_under_every_process():
    """Closed form: a single N(m, s^2 I) stays Gaussian, q_t = N(alpha m, (alpha^2 s^2 + sigma^2) I)."""
    g = GaussianMixture(torch.tensor([[0.5, -1.0]]), torch.tensor([0.3]), torch.tensor([1.0]))
    for p in PROCESSES.values():
        t = _inner_times(p, 3)[1]
        o = OracleDenoiser(g, p)
        x = torch.randn(10, 2, dtype=F64)
        v = p.alpha2(t) * 0.09 + p.sigma2(t)
        d2 = (x - p.alpha(t) * g.means).pow(2).sum(1)
        torch.testing.assert_close(o.log_prob(x, t), -0.5 * d2 / v - math.log(2 * math.pi * v))


@pytest.mark.parametrize("name", list(PROCESSES))
def test_a_one_step_grid_starts_at_t_max(name):
    p = PROCESSES[name]
    for kind in ("uniform", "quadratic", "edm"):
        assert p.grid(1, kind).tolist() == pytest.approx([p.t_max, 0.0], rel=1e-12)


def test_ddim_step_on_per_sample_times_adds_no_noise_where_the_chain_ends():
    o = OracleDenoiser(GRID, LIN)
    x = torch.randn(4, 2, dtype=F64)
    t, s = torch.tensor([5, 5, 9, 9]), torch.tensor([0, 3, 0, 3])
    out = ddim_step(o, x, t, s, torch.Generator().manual_seed(0), eta=1.0)
    torch.testing.assert_close(out[[0, 2]], o.x0(x, t)[[0, 2]])  # to t = 0: the denoised sample
    mean = ddim_step(o, x, t, s, eta=0.0)
    assert not torch.allclose(out[[1, 3]], mean[[1, 3]])  # elsewhere eta = 1 adds noise
