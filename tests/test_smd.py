"""Soft mixture denoising (002 Sec. 4): eta plumbing, expressiveness, training with n_eta draws, the CLI, resume,
measure, the bench and config errors."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffprop.checkpoint import list_checkpoints
from diffprop.cli import main
from diffprop.config import load_config
from diffprop.denoisers import Denoiser, SMDDenoiser
from diffprop.errors import DiffpropError
from diffprop.losses import DenoisingLoss, Objective
from diffprop.losses.fokker_planck import FokkerPlanck
from diffprop.mixtures import GaussianMixture
from diffprop.nets import build_smd_net
from diffprop.process import q_sample
from diffprop.runs import build_denoiser, load_run
from diffprop.samplers import sample
from diffprop.schedules import NoiseSchedule

from . import test_training
from .conftest import TINY

# the raw 1e-4..0.02 betas: a 30-step SMD model's chains diverge on the full-range T = 100 schedule (smd_grid.TINY_BETAS)
SMD_MLP = TINY + ["model.smd=true", "smd.latent_dim=8", "smd.eta_dim=4", "diffusion.beta_start=1e-4",
                  "diffusion.beta_end=0.02"]
DIGITS = ["data.name=digits", "model.kind=unet", "train.batch_size=16", "train.steps=4", "train.checkpoint_every=2",
          "train.log_every=2", "diffusion.T=50", "model.smd=true", "smd.latent_dim=4"]
KINDS = {"mlp": ((2,), []), "unet": ((1, 8, 8), ["model.kind=unet"])}
VARIANTS = ("official", "embedding")


def _smd(kind: str, variant: str, extra=()) -> SMDDenoiser:
    shape, ov = KINDS[kind]
    torch.manual_seed(0)
    den = build_denoiser(load_config(None, SMD_MLP + ov + [f"smd.variant={variant}", *extra]), shape)
    if variant == "embedding":  # f_phi starts at zero (the plain backbone): give it weights
        torch.nn.init.normal_(den.net.f[-1].weight, std=0.3)
    return den.eval()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# -- the eta plumbing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fixed_eta_is_deterministic_and_eta_matters(kind, variant):
    den = _smd(kind, variant)
    x, t = torch.randn(6, *KINDS[kind][0], generator=_gen(0)), torch.tensor(30)
    eta, eta2 = den.draw_eta(x, _gen(1)), den.draw_eta(x, _gen(2))
    assert eta.shape == ((6, *KINDS[kind][0]) if variant == "official" else (6, 4))
    with torch.no_grad():
        a, b = den.predict(x, t, eta=eta), den.predict(x, t, eta=eta)
        c = den.predict(x, t, eta=eta2)
        assert torch.equal(a.eps, b.eps) and torch.equal(a.x0, b.x0)
        assert (a.eps - c.eps).abs().amax(dim=tuple(range(1, x.ndim))).min() > 1e-5  # every sample moves
        # without eta: a fresh draw from the generator, reproducible from its seed
        g = _gen(1)
        assert torch.equal(den.predict(x, t, g).eps, a.eps)
        assert not torch.equal(den.predict(x, t, g).eps, a.eps)  # the generator moved on: a new eta


def test_deterministic_denoisers_ignore_the_generator():
    den = build_denoiser(load_config(None, TINY), (2,))
    assert type(den) is Denoiser and not den.stochastic
    g = _gen(0)
    state = g.get_state()
    den.predict(torch.randn(4, 2), torch.tensor(5), g)
    assert torch.equal(g.get_state(), state)


class _EtaSpy(torch.nn.Module):
    """Wraps an SMD net and records the eta of every call."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.eta_shape, self.etas = net, net.eta_shape, []

    def forward(self, x, t, eta):
        self.etas.append(eta.clone())
        return self.inner(x, t, eta)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_draw_a_fresh_eta_every_step_and_are_reproducible(sampler):
    den = _smd("mlp", "official")
    spy = SMDDenoiser(_EtaSpy(den.net), den.schedule)
    a = sample(spy, 32, (2,), sampler=sampler, steps=7, seed=3, progress=False).x
    etas = spy.net.etas
    assert len(etas) == 7  # 002 Alg. 2 line 4: one eta per step
    assert all(not torch.equal(e, f) for i, e in enumerate(etas) for f in etas[i + 1:])
    assert torch.equal(sample(spy, 32, (2,), sampler=sampler, steps=7, seed=3, progress=False).x, a)
    assert not torch.equal(sample(spy, 32, (2,), sampler=sampler, steps=7, seed=4, progress=False).x, a)


# -- expressiveness: one step is a mixture over eta (002 Thm 4.1) -------------------------------------------
TWO_MODES = GaussianMixture(torch.tensor([[-1.0], [1.0]]), torch.tensor([0.05, 0.05]), torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_across_eta_the_one_step_prediction_is_bimodal(variant):
    """At x_t = 0, t = 50 of 100, the posterior of x0 is +-1 with probability 1/2 each. An SMD MLP fitted to it
    puts its x0-predictions over eta near both modes, with a gap between them that a single Gaussian of the
    same mean and spread cannot have.

    The fit uses the energy score of ``k`` draws (a strictly proper scoring rule for the distribution over eta),
    not 002 Eq. 14: the minimiser of ``E || eps - eps_theta(x_t, t, eta) ||^2`` over functions of ``(x_t, eta)``
    is ``E[eps | x_t]`` for every eta (eta is independent of ``(x_0, eps)``), so Eq. 14 gives no reason to use
    eta at all; this test checks what the architecture and the eta plumbing can express.
    """
    torch.manual_seed(0)
    sched, t_fix, B, k = NoiseSchedule.from_config("linear", 100, 1e-4, 0.02), 50, 128, 6  # abar_50 = 0.77
    net = build_smd_net("mlp", (1,), variant, latent_dim=8, eta_dim=4, g_width=32, width=64, depth=2, time_dim=16)
    den = SMDDenoiser(net, sched)
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    g = _gen(1)
    t = torch.full((B * k,), t_fix)
    for _ in range(250):
        x0 = TWO_MODES.sample(B, g).float()
        x_t = q_sample(sched, x0, t[:B], torch.randn(x0.shape, generator=g)).repeat(k, 1)
        f = den.predict(x_t, t, g).x0.view(k, B)  # k draws of eta per example
        pair = (f[:, None] - f[None]).abs().sum((0, 1)) / (k * (k - 1))
        loss = ((f - x0[:, 0]).abs().mean(0) - pair / 2).mean()  # energy score
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x0_hat = den.predict(torch.zeros(4000, 1), torch.tensor(t_fix), _gen(2)).x0[:, 0]
    near = lambda c: float(((x0_hat - c).abs() < 0.5).float().mean())  # noqa: E731
    gauss = torch.distributions.Normal(x0_hat.mean(), x0_hat.std())
    gauss_middle = float(gauss.cdf(torch.tensor(0.5)) - gauss.cdf(torch.tensor(-0.5)))
    assert near(-1) > 0.15 and near(1) > 0.15, (near(-1), near(1))  # mass at both modes
    assert near(0) < 0.5 * gauss_middle, (near(0), gauss_middle)  # and a gap a Gaussian does not have


# -- training: n_eta draws, regularizers --------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_n_eta_loss_is_the_mean_of_single_eta_losses(kind):
    k = 3
    den = _smd(kind, "official", [f"smd.n_eta={k}"])
    x0 = torch.randn(5, *KINDS[kind][0], generator=_gen(0))
    loss = DenoisingLoss()(den, x0, _gen(7))
    assert loss.shape == (5,)
    # the same draws by hand: t and eps as for one draw, then one eta per repeated example
    g = _gen(7)
    t = torch.randint(1, den.schedule.T + 1, (5,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    eta = den.draw_eta(x0.repeat(k, *[1] * (x0.ndim - 1)), g).chunk(k)
    x_t = q_sample(den.schedule, x0, t, eps)
    single = [(den.raw(x_t, t, eta=e) - eps).pow(2).flatten(1).mean(1) for e in eta]
    torch.testing.assert_close(loss, torch.stack(single).mean(0), rtol=1e-6, atol=1e-7)
    loss.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in den.net.g.parameters())


def test_every_regularizer_runs_on_smd():
    regs = ["epdm", "consistency", "input_perturbation", "fokker_planck"]
    cfg = load_config(None, SMD_MLP + ["smd.n_eta=2", f"objective.regularizers={json.dumps(regs)}"])
    den = build_denoiser(cfg, (2,))
    out = Objective.from_config(cfg)(den, torch.randn(32, 2, generator=_gen(0)), _gen(1))
    assert torch.isfinite(out.value) and set(regs) <= out.logs.keys()
    out.value.backward()
    assert all(p.grad is not None for p in den.net.g.parameters())


def test_fokker_planck_reads_its_three_scores_at_one_eta(monkeypatch):
    den = _smd("mlp", "official")
    etas = []
    draw = den.draw_eta
    monkeypatch.setattr(den, "draw_eta", lambda x, g=None: etas.append(draw(x, g)) or etas[-1])
    FokkerPlanck()(den, torch.randn(16, 2, generator=_gen(0)), _gen(1))
    assert len(etas) == 3 and all(torch.equal(e, etas[0]) for e in etas)


# -- runs: CLI, resume, EMA, measure ------------------------------------------------------------------------
def cli(*argv, sets=()) -> int:
    """``diffprop ARGV --set S ...`` in this process; the exit status."""
    return main([*map(str, argv), *[x for s in sets for x in ("--set", s)]])


@pytest.fixture(scope="module")
def smd_run(tmp_path_factory):
    """A trained gmm-grid SMD (official) run."""
    tmp = tmp_path_factory.mktemp("smd")
    (tmp / "c.toml").write_text("")
    assert cli("train", tmp / "c.toml", "--out", tmp / "run", "--quiet", sets=SMD_MLP + ["smd.n_eta=2"]) == 0
    return tmp / "run"


@pytest.mark.parametrize("data, variant", [("gmm-grid", "embedding"), ("digits", "official"),
                                           ("digits", "embedding")])
def test_cli_trains_and_samples_each_variant(data, variant, tmp_path, capsys):
    ov = (SMD_MLP if data == "gmm-grid" else DIGITS) + [f"smd.variant={variant}"]
    (tmp_path / "c.toml").write_text("")
    assert cli("train", tmp_path / "c.toml", "--out", tmp_path / "run", "--quiet", sets=ov) == 0, capsys.readouterr()
    for sampler in ("ddpm", "ddim"):
        out = tmp_path / f"{sampler}.npz"
        assert cli("sample", tmp_path / "run", "--num", 9, "--sampler", sampler, "--steps", 5, "--out", out) == 0
        x = np.load(out)["samples"]
        assert x.shape == ((9, 2) if data == "gmm-grid" else (9, 1, 8, 8)) and np.isfinite(x).all()


def test_cli_sample_and_measure_an_smd_run(smd_run, capsys):
    for name in ("s.npz", "s2.npz"):  # the same seed: the same eta draws, the same samples
        assert cli("sample", smd_run, "--num", 64, "--steps", 10, "--out", smd_run / name) == 0, capsys.readouterr()
    assert np.array_equal(np.load(smd_run / "s.npz")["samples"], np.load(smd_run / "s2.npz")["samples"])
    assert cli("measure", smd_run, "--num", 64, "--grid", "1,50,100", "--kernels", "rbf", "--permutations", 10,
               "--quiet") == 0, capsys.readouterr()
    rows = (smd_run / "measure" / "propagation.csv").read_text().splitlines()
    assert "cumulative_kl" in rows[0] and len(rows) == 1 + 3


def test_checkpoint_holds_every_smd_parameter_and_ema_covers_them(smd_run):
    ck = list_checkpoints(smd_run)[-1]
    model, ema = load_file(ck / "model.safetensors"), load_file(ck / "ema.safetensors")
    run_ = load_run(smd_run)
    names = set(run_.denoiser.net.state_dict())
    assert model.keys() == ema.keys() == names
    assert any(k.startswith("g.") for k in names) and any(k.startswith("f_in.") for k in names)
    assert isinstance(run_.denoiser, SMDDenoiser) and run_.denoiser.n_eta == 2
    assert not torch.equal(model["g.net.0.weight"], ema["g.net.0.weight"])  # the EMA tracks g_xi too


@pytest.mark.parametrize("extra", [["smd.n_eta=2"], DIGITS + ["smd.variant=embedding"]])
def test_resume_is_bit_exact(tmp_path, extra):
    """The trainer's own resume check (weights, EMA, optimizer, RNG states and logs) on SMD runs."""
    test_training.test_resume_is_bit_exact(tmp_path, SMD_MLP, extra)


def test_smd_bench_runs_side_by_side(monkeypatch):
    from diffprop.bench import smd as bench

    monkeypatch.setattr(bench, "ROUNDS", 1)
    monkeypatch.setattr(bench, "STEPS", 1)
    monkeypatch.setattr(bench, "CASES", {"mlp/gmm-grid": bench.CASES["mlp/gmm-grid"] + ["model.width=32"]})
    out = bench.smd_bench(memory=False)
    (case,) = out["cases"]
    assert set(case["ms_per_step"]) == set(bench.VARIANTS) and case["relative"]["plain"] == 1.0
    act = case["activations_mb"]
    assert 0 < act["plain"] < act["official"] and act["official n_eta=2"] > 1.5 * act["official"]
    json.dumps(out)


# -- config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    (["smd.variant=mixture"], "smd.variant = 'mixture' is not allowed; allowed: official, embedding"),
    (["smd.n_eta=0"], "smd.n_eta must be >= 1, got 0"),
    (["smd.latent_dim=0"], "smd.latent_dim must be >= 1, got 0"),
    (["smd.eta_dim=2.5"], "smd.eta_dim must be an integer, got 2.5"),
    (["smd.etadim=3"], "unknown key 'smd.etadim' in section [smd]; allowed: variant, latent_dim"),
    (["model.smd=1"], "model.smd must be true or false"),
    (["model.smd=true", "model.kind=unet", "smd.g_width=6"], "smd.g_width (6) must be a multiple of 4"),
])
def test_bad_smd_settings_are_one_line_errors(override, message):
    with pytest.raises(DiffpropError) as e:
        load_config(None, override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_smd_config_round_trips(tmp_path):
    from diffprop.config import save_config

    cfg = load_config(None, ["model.smd=true", "smd.variant=embedding", "smd.n_eta=3", "smd.g_width=24"])
    save_config(cfg, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == cfg and cfg.smd.n_eta == 3


def test_unknown_variant_from_python():
    with pytest.raises(DiffpropError, match="unknown SMD variant 'mix'; allowed: official, embedding"):
        build_smd_net("mlp", (2,), "mix")


def test_energy_loss_scores_the_draws_and_needs_two():
    """``smd.loss = "energy"``: ``mean_j ||f_j - y|| - mean_{j<l} ||f_j - f_l|| / 2`` in RMS units, per example;
    it is lower for draws spread like the target than for draws collapsed on the target's mean."""
    from diffprop.losses.denoising import regression_loss

    class Fixed(torch.nn.Module):  # raw() returns preset draws: rows j B + i
        eta_shape = (1,)

        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x, t, eta):
            return self.out

    sched, t = NoiseSchedule.from_config("linear", 10), torch.tensor([5, 5])
    y = torch.tensor([[2.0, 0, 0, 0], [-2.0, 0, 0, 0]])  # two examples whose targets are the two modes
    spread = torch.tensor([[2.0, 0, 0, 0], [2.0, 0, 0, 0], [-2.0, 0, 0, 0], [-2.0, 0, 0, 0]])  # draws +-2 for both
    den = SMDDenoiser(Fixed(spread), sched, n_eta=2, loss="energy")
    # RMS units (/ sqrt 4): fit (0 + 2) / 2 = 1, pair |1 - (-1)| / 2 = 1: score 0 for each example
    torch.testing.assert_close(regression_loss(den, y, t, y, None), torch.zeros(2))
    collapsed = SMDDenoiser(Fixed(torch.zeros(4, 4)), sched, n_eta=2, loss="energy")  # both draws at the mean
    torch.testing.assert_close(regression_loss(collapsed, y, t, y, None), torch.ones(2))
    mse = SMDDenoiser(Fixed(spread), sched, n_eta=2)  # 002 Eq. 14 prefers the collapsed draws: 2 vs 1
    torch.testing.assert_close(regression_loss(mse, y, t, y, None), torch.full((2,), 2.0))
    with pytest.raises(DiffpropError, match="energy with n_eta >= 2"):
        SMDDenoiser(Fixed(spread), sched, n_eta=1, loss="energy")


def test_smd_grid_reproduction_tiny(tmp_path):
    """``diffprop reproduce smd-grid --scale tiny``: every variant x sampling-step count in the table, the eta
    spread of DDPM exactly 0 and of SMD positive, figures and the report's claim and verdict."""
    import csv

    from diffprop.experiments import smd_grid

    assert main(["reproduce", "smd-grid", "--scale", "tiny", "--out", str(tmp_path), "--quiet"]) == 0
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    steps = smd_grid.SCALES["tiny"]["sampling"]
    assert [(r["variant"], int(r["sampling_steps"])) for r in rows] == [(v, k) for v in smd_grid.VARIANTS
                                                                         for k in steps]
    spread = {r["variant"]: float(r["eta_spread"]) for r in rows}
    assert spread["ddpm"] == 0 and all(spread[v] > 0 for v in smd_grid.VARIANTS if v != "ddpm")
    assert all(np.isfinite(float(r["log_likelihood"])) for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "**Claim.**" in report and "**Reproduces?**" in report and "exact posterior's is" in report
    for f in ("quality_vs_steps.png", "scatter_ddpm.png", "scatter_smd.png"):
        assert (tmp_path / f).is_file(), f
