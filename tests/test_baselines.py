"""Baseline regularizers (000 Table 1): CDM consistency (003 Sec. 4), ADM-IP, FP-Diffusion.

With the exact Gaussian-mixture denoiser each regularizer sits at its noise floor, and a denoiser with
a known defect (``eps_bias``) moves it clearly; gradients reach every parameter; each trains from the CLI.
"""
import json
import math

import pytest
import torch

from diffprop.cli import main
from diffprop.config import load_config
from diffprop.errors import DiffpropError
from diffprop.losses import DenoisingLoss, Objective
from diffprop.losses.consistency import Consistency, sub_chain
from diffprop.losses.fokker_planck import FokkerPlanck, divergence
from diffprop.losses.input_perturbation import InputPerturbation
from diffprop.mixtures import grid_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.runs import build_denoiser
from diffprop.schedules import NoiseSchedule

from .conftest import TINY

MIX = grid_mixture()
SCHEDULE = NoiseSchedule.from_config("linear", 1000)
SMALL_MLP = ["model.width=32", "model.depth=2", "model.time_dim=16", "diffusion.T=100"]


class OracleNet(torch.nn.Module):
    """The exact oracle seen as an eps-predicting network (``raw`` = its eps), for the denoising losses."""

    parameterization = "eps"

    def __init__(self, oracle):
        super().__init__()
        self.oracle, self.schedule, self.process = oracle, oracle.schedule, oracle.process

    def raw(self, x_t, t, generator=None):
        return self.oracle.predict(x_t, t).eps

    def target(self, x0, t, eps):
        return eps


def batch_means(reg, eps_bias=0.0, batches=100, seed=0, part=None):
    """Mean and standard error over ``batches`` batches of 256 of a term (or of one of its logs)."""
    oracle = OracleDenoiser(MIX, SCHEDULE, eps_bias=eps_bias)
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(batches):
        term = reg(oracle, MIX.sample(256, g), g)
        vals.append(float(term.value if part is None else term.logs[part]))
    v = torch.tensor(vals, dtype=torch.float64)
    return v.mean().item(), v.std().item() / math.sqrt(batches)


def z_score(a, b):
    return (b[0] - a[0]) / math.hypot(a[1], b[1])


def noised(t, n=256, seed=0, schedule=SCHEDULE):
    g = torch.Generator().manual_seed(seed)
    x0 = MIX.sample(n, g)
    abar = schedule.gather("alpha_bars", t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(x0.shape, generator=g, dtype=x0.dtype)


# -- consistency (003 Sec. 4) -----------------------------------------------------------------------

def test_sub_chain_is_an_evenly_spaced_decreasing_path_from_t_to_t_prev():
    t, t_prev = torch.tensor([50, 10, 7, 3]), torch.tensor([30, 8, 6, 1])
    chain = sub_chain(t, t_prev, 5)
    assert chain.shape == (6, 4)
    assert torch.equal(chain[0], t) and torch.equal(chain[-1], t_prev)
    assert bool((chain[1:] <= chain[:-1]).all())
    assert chain[:, 0].tolist() == [50, 46, 42, 38, 34, 30]
    steps = (chain[1:] != chain[:-1]).sum(0)  # steps that move; the others are identities in p_step
    assert steps.tolist() == [5, 2, 1, 2]


@pytest.mark.parametrize("t_dist", ["uniform", "edm"])
def test_consistency_of_the_exact_oracle_is_at_its_noise_floor_and_a_bias_moves_it(t_dist):
    reg = Consistency(steps=5, window=20, t_dist=t_dist)
    # edm draws mostly small sigma_t, where an eps bias b moves the x0-prediction by only ~ sigma_t b: more batches
    batches = 100 if t_dist == "uniform" else 300
    exact = batch_means(reg, batches=batches)
    assert abs(exact[0]) < 3 * exact[1], exact  # the exact denoiser is a reverse martingale (003 Lemma 3.1)
    biased = batch_means(reg, eps_bias=0.5, seed=1, batches=batches)
    assert z_score(exact, biased) > 5, (exact, biased)
    if t_dist == "uniform":
        # detection sensitivity at batch 256 over 100 batches: eps_bias 0.02 is clear (z ~ 14; 0.01 gives z ~ 4);
        # it comes from t near T, where the x0-prediction magnifies an eps error ~158-fold
        assert z_score(exact, batch_means(reg, eps_bias=0.02, seed=1)) > 5


def test_consistency_edm_noise_levels():
    """``t_dist = "edm"``: sigma_t = sqrt((1 - abar_t) / abar_t) of the drawn t follows EDM's logN(-1.2, 1.2)
    (quartiles -1.2 -+ 0.809) up to one step of the chain; t stays in 2..T."""
    t = Consistency().draw_t(SCHEDULE, 20000, torch.Generator().manual_seed(0), "cpu")
    assert 2 <= int(t.min()) and int(t.max()) <= SCHEDULE.T
    abar = SCHEDULE.alpha_bars[t]
    log_sigma = ((1 - abar) / abar).sqrt().log()
    q = torch.quantile(log_sigma, torch.tensor([0.25, 0.5, 0.75], dtype=log_sigma.dtype))
    assert torch.allclose(q, torch.tensor([-1.2 - 0.809, -1.2, -1.2 + 0.809], dtype=q.dtype), atol=0.05), q
    uniform = Consistency(t_dist="uniform").draw_t(SCHEDULE, 20000, torch.Generator().manual_seed(0), "cpu")
    assert abs(uniform.double().mean() - 501) < 10  # U{2..T}
    with pytest.raises(DiffpropError, match="t_dist must be one of edm, uniform, got 'lognormal'"):
        Consistency(t_dist="lognormal")


def test_consistency_gradient_flows_into_both_predictions_but_not_the_trajectories():
    cfg = load_config(None, SMALL_MLP)
    torch.manual_seed(0)
    den = build_denoiser(cfg, (2,))
    x0 = MIX.sample(64, torch.Generator().manual_seed(0)).float()
    outputs = []
    predict = den.predict

    def recording_predict(x_t, t, generator=None):
        out = predict(x_t, t, generator)
        if out.x0.requires_grad:
            out.x0.retain_grad()
        outputs.append(out.x0)
        return out

    den.predict = recording_predict
    Consistency.from_config(cfg)(den, x0, torch.Generator().manual_seed(1)).value.backward()
    # 5 trajectory steps without a graph, then D(x_t, t) and D(x'_{1,2}, t') with one, both reached
    assert [o.requires_grad for o in outputs] == [False] * 5 + [True, True]
    assert all(o.grad is not None and bool(o.grad.abs().sum() > 0) for o in outputs[-2:])


@pytest.mark.parametrize("var_type", ["beta", "beta_tilde"])
def test_consistency_trajectories_are_ancestral_steps_of_the_denoiser(var_type):
    """One step from t = 50 to t' = 40: ``N(c0 x0_hat + ct x_t, sigma^2)`` of the respaced chain."""
    oracle, n = OracleDenoiser(MIX, SCHEDULE), 20000
    x_t = noised(torch.full((1,), 50), n=1).repeat(n, 1)
    chain = sub_chain(torch.full((n,), 50), torch.full((n,), 40), 1)
    x = Consistency(steps=1, var_type=var_type).reverse(oracle, x_t, chain, torch.Generator().manual_seed(0))
    a50, a40 = SCHEDULE.alpha_bars[50], SCHEDULE.alpha_bars[40]
    beta = 1 - a50 / a40
    var = beta if var_type == "beta" else (1 - a40) / (1 - a50) * beta
    mean = a40.sqrt() * beta / (1 - a50) * oracle.x0(x_t[:1], 50) + (1 - beta).sqrt() * (1 - a40) / (1 - a50) * x_t[:1]
    assert bool(((x.mean(0) - mean).abs() < 4 * (var / n).sqrt()).all())
    assert bool(((x.var(0) / var - 1).abs() < 0.05).all()), (x.var(0), var)


# -- FP-Diffusion (Lai et al. 2022) -----------------------------------------------------------------

@pytest.mark.parametrize("t0, tol", [(2, 1e-2), (10, 1e-3), (100, 1e-3), (500, 1e-4), (999, 1e-4)])
def test_score_fpe_holds_for_the_exact_score(t0, tol):
    """``d_tau s = (g^2/2) grad(div s + |s|^2 + x.s)`` for the exact VP marginals, up to the stencil's error."""
    oracle, reg = OracleDenoiser(MIX, SCHEDULE), FokkerPlanck(divergence="exact")
    t = torch.full((256,), t0)
    x = noised(t)
    res, _ = reg.residual(oracle, x, t)
    T = SCHEDULE.T  # every t0 has t0 - 1 >= 1: no clamping
    ds = (oracle.score(x, t + 1) - oracle.score(x, t - 1)) * T / 2
    g2 = -(SCHEDULE.alpha_bars[t0 + 1] / SCHEDULE.alpha_bars[t0 - 1]).log() * T / 2
    # res = g^2 |err|^2 / D^2: the residual's rms relative to |d_tau s| (measured 5e-3 at t = 2, 3e-6 at t = 500)
    rel = (res.mean() * 4 / g2).sqrt() / ds.pow(2).sum(1).mean().sqrt()
    assert rel < tol, rel
    res_biased, _ = reg.residual(OracleDenoiser(MIX, SCHEDULE, eps_bias=0.01), x, t)
    assert res_biased.mean() > 30 * res.mean()


def test_score_fpe_residual_of_the_exact_score_is_the_stencils_second_order_error():
    """Four times finer time steps (same continuous beta) shrink the residual 16-fold: it is O(dt^2)."""
    rel = []
    for T in (1000, 4000):
        schedule = NoiseSchedule.from_config("linear", T, 0.1 / T, 20 / T)
        t = torch.full((256,), T // 20)
        res, _ = FokkerPlanck().residual(OracleDenoiser(MIX, schedule), noised(t, schedule=schedule), t)
        rel.append(res.mean().item())
    assert 100 < rel[0] / rel[1] < 400, rel  # |err|^2 ~ dt^4: 256 expected


def test_fpe_scalar_part_of_the_exact_score_has_mean_minus_half_g2_D():
    """``E[div s + |s|^2] = 0`` and ``E[x . s] = -D`` under p_t, so ``E[rhs] = -(g^2/2) D`` (a check of div)."""
    t = torch.full((4096,), 300)
    _, rhs = FokkerPlanck().residual(OracleDenoiser(MIX, SCHEDULE), noised(t, n=4096), t)
    g2 = -(SCHEDULE.alpha_bars[301] / SCHEDULE.alpha_bars[299]).log() * SCHEDULE.T / 2
    se = rhs.std() / math.sqrt(len(rhs))
    assert abs(rhs.mean() + g2 / 2 * 2) < 4 * se, (rhs.mean(), -g2, se)


def test_hutchinson_divergence_is_unbiased():
    den = build_denoiser(load_config(None, SMALL_MLP), (2,)).double()
    t = torch.full((8,), 50)
    x = noised(t, n=8, schedule=den.schedule).requires_grad_(True)
    s = den.score(x, t)
    exact = divergence(s, x, "exact")
    g = torch.Generator().manual_seed(0)
    est = torch.stack([divergence(s, x, "hutchinson", g) for _ in range(2000)]).detach()
    assert not torch.allclose(est[0], exact)  # a random network's Jacobian is not diagonal
    se = est.std(0) / math.sqrt(len(est))
    assert bool(((est.mean(0) - exact).abs() < 4 * se).all())


def test_fp_term_of_the_exact_oracle_is_at_its_floor_and_a_bias_moves_it():
    reg = FokkerPlanck(dt=1)
    exact = batch_means(reg, part="residual")
    # the floor is the O(dt^2) stencil error, ~1e-2 (the defects below are 3e2..1e6 times larger)
    assert exact[0] < 2e-2, exact
    biased = batch_means(reg, eps_bias=0.5, seed=1, part="residual")
    assert z_score(exact, biased) > 5, (exact, biased)
    # detection sensitivity: the smallest bias tried, 0.01, already stands out (z ~ 7 at 100 batches)
    small = batch_means(reg, eps_bias=0.01, seed=1, part="residual")
    assert z_score(exact, small) > 3 and small[0] > 100 * exact[0], (exact, small)


# -- ADM-IP (Ning et al. 2023) ----------------------------------------------------------------------

@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_input_perturbation_with_gamma_0_is_the_denoising_loss_on_the_same_draws(parameterization):
    cfg = load_config(None, SMALL_MLP + [f"diffusion.parameterization={parameterization}"])
    den = build_denoiser(cfg, (2,))
    x0 = MIX.sample(64, torch.Generator().manual_seed(0)).float()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    plain = DenoisingLoss()(den, x0, g).mean()
    g.set_state(state)
    assert torch.equal(InputPerturbation(gamma=0.0)(den, x0, g).value, plain)
    g.set_state(state)
    assert not torch.equal(InputPerturbation(gamma=0.1)(den, x0, g).value, plain)


def test_input_perturbation_excess_of_the_oracle_is_gamma2_times_its_sensitivity():
    """For the exact eps, ``E|eps(x_t + gamma sigma xi) - eps|^2 - E|eps(x_t) - eps|^2
    = gamma^2 E||sigma d eps / dx||_F^2 / D + O(gamma^4)`` (the cross terms vanish: ``E[eps | x_t] = eps(x_t)``)."""
    oracle, gamma = OracleDenoiser(MIX, SCHEDULE), 0.1
    net = OracleNet(oracle)
    excess, predicted = [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        x0 = MIX.sample(256, g)
        state = g.get_state()
        ip = InputPerturbation(gamma)(net, x0, g).value
        g.set_state(state)
        plain = DenoisingLoss()(net, x0, g).mean()
        g.set_state(state)  # the same t and eps again, for the sensitivity at x_t
        t = torch.randint(1, SCHEDULE.T + 1, (256,), generator=g)
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        abar = SCHEDULE.gather("alpha_bars", t, x0)
        x = (abar.sqrt() * x0 + (1 - abar).sqrt() * eps).requires_grad_(True)
        e = oracle.eps(x, t)
        jac = torch.stack([torch.autograd.grad(e[:, i].sum(), x, retain_graph=True)[0] for i in range(2)], 1)
        predicted.append(gamma**2 * ((1 - abar)[:, :, None] * jac.pow(2)).sum((1, 2)).mean().item() / 2)
        excess.append((ip - plain).item())
    excess, predicted = torch.tensor(excess), torch.tensor(predicted)
    se = excess.std() / math.sqrt(len(excess))
    assert excess.mean() > 5 * se  # measured 0.0057 +- 0.0006
    assert abs(excess.mean() - predicted.mean()) < 3 * se, (excess.mean(), predicted.mean(), se)


# -- every term trains a real network ---------------------------------------------------------------

REGULARIZERS = [("consistency", Consistency, []), ("input_perturbation", InputPerturbation, []),
                ("fokker_planck", FokkerPlanck, ["fokker_planck.divergence=exact"]),
                ("fokker_planck", FokkerPlanck, ["fokker_planck.divergence=hutchinson"])]


@pytest.mark.parametrize("name, cls, extra", REGULARIZERS)
def test_gradients_reach_every_parameter(name, cls, extra):
    cfg = load_config(None, SMALL_MLP + extra)
    torch.manual_seed(0)
    den = build_denoiser(cfg, (2,))
    reg = cls.from_config(cfg)
    x0 = MIX.sample(256, torch.Generator().manual_seed(0)).float()
    term = reg(den, x0, torch.Generator().manual_seed(1))
    assert term.value.ndim == 0 and torch.isfinite(term.value)
    term.value.backward()
    nonzero = total = 0
    for pname, p in den.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
        assert bool((p.grad != 0).any()), pname
        nonzero, total = nonzero + int((p.grad != 0).sum()), total + p.numel()
    assert nonzero > 0.9 * total


def test_regularizers_are_built_from_the_config_by_the_objective():
    cfg = load_config(None, SMALL_MLP + ['objective.regularizers=["consistency", "input_perturbation", '
                                         '"fokker_planck"]', "consistency.weight=0.3", "fokker_planck.alpha=0.2"])
    obj = Objective.from_config(cfg)
    assert {k: w for k, (w, _) in obj.regularizers.items()} == {
        "consistency": 0.3, "input_perturbation": 1.0, "fokker_planck": 0.005}
    assert obj.regularizers["fokker_planck"][1].alpha == 0.2
    den = build_denoiser(cfg, (2,))
    out = obj(den, MIX.sample(32, torch.Generator().manual_seed(0)).float(), torch.Generator().manual_seed(0))
    assert {"denoising", "consistency", "input_perturbation", "fokker_planck", "fokker_planck.residual",
            "fokker_planck.rhs", "consistency.gap"} <= out.logs.keys()


@pytest.mark.parametrize("name", ["consistency", "input_perturbation", "fokker_planck"])
def test_train_with_each_baseline_from_the_cli(name, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    sets = TINY + ["train.steps=100", "train.log_every=25", "train.checkpoint_every=100",
                   f'objective.regularizers=["{name}"]']
    code = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet",
                 *[x for s in sets for x in ("--set", s)]])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [25, 50, 75, 100]
    assert all(math.isfinite(r[name]) and math.isfinite(r["loss"]) for r in rows)


def test_fokker_planck_differentiates_through_an_attention_unet():
    """The FP residual needs second derivatives; the U-Net's attention must use a kernel that has them."""
    cfg = load_config(None, ["data.name=digits", "model.kind=unet", "model.preset=tiny", "diffusion.T=50",
                             'objective.regularizers=["fokker_planck"]', "fokker_planck.divergence=hutchinson"])
    den = build_denoiser(cfg, (1, 8, 8))
    obj = Objective.from_config(cfg)
    out = obj(den, torch.rand(4, 1, 8, 8) * 2 - 1, torch.Generator().manual_seed(0))
    out.value.backward()
    assert torch.isfinite(out.value) and all(p.grad is not None for p in den.parameters())


def test_pure_adm_ip_does_not_compute_the_unused_denoising_loss():
    cfg = load_config(None, SMALL_MLP + ["objective.lambda_nl=0", 'objective.regularizers=["input_perturbation"]',
                                         "input_perturbation.gamma=0"])
    den = build_denoiser(cfg, (2,))
    x0 = MIX.sample(32, torch.Generator().manual_seed(0)).float()
    out = Objective.from_config(cfg)(den, x0, torch.Generator().manual_seed(1))
    assert "denoising" not in out.logs
    # with gamma = 0, ADM-IP on the same generator state is exactly the plain denoising loss
    plain = DenoisingLoss()(den, x0, torch.Generator().manual_seed(1)).mean()
    torch.testing.assert_close(out.value, plain)
