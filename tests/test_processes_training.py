"""Training on continuous-time processes: time samplers, the process denoising loss, configs, run folders, the CLI."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffprop.cli import main
from diffprop.config import load_config, save_config
from diffprop.data import load_dataset
from diffprop.denoisers import ProcessDenoiser, training_target
from diffprop.errors import DiffpropError
from diffprop.losses import DenoisingLoss
from diffprop.mixtures import GaussianMixture
from diffprop.oracle import OracleDenoiser
from diffprop.process import q_sample
from diffprop.processes import EDM, VESDE, VPSDE, DiscreteVP, SubVPSDE, largest_distance
from diffprop.runs import build_denoiser, load_run
from diffprop.schedules import NoiseSchedule
from diffprop.time_sampling import TIME_SAMPLERS, build_time_sampler

from .conftest import TINY

SCHEDULE = NoiseSchedule.from_config("linear", 1000)
N = 20000


def _draw(name, process, n=N, seed=0, **options):
    return build_time_sampler(name, process.name, **options)(process, n, torch.Generator().manual_seed(seed), "cpu")


def _ratio(process, t):  # the noise-to-signal ratio sigma / alpha
    return torch.exp(-process.log_snr(t.double()) / 2)


# -- time samplers --------------------------------------------------------------------------------------------------

def test_uniform_int_is_todays_draw_and_the_loss_todays_loss_bit_for_bit():
    proc = DiscreteVP(SCHEDULE)
    t = _draw("uniform-int", proc, 64, seed=3)
    assert torch.equal(t, torch.randint(1, 1001, (64,), generator=torch.Generator().manual_seed(3)))
    cfg = load_config(None, ["model.width=16", "model.depth=1", "diffusion.parameterization=v"])
    torch.manual_seed(0)
    den = build_denoiser(cfg, (2,))
    x0 = torch.randn(64, 2)
    got = DenoisingLoss()(den, x0, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the loss as written before time samplers: t, eps, q_sample, target
    t = torch.randint(1, 1001, (64,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    want = (den.raw(q_sample(SCHEDULE, x0, t, eps), t) - training_target("v", SCHEDULE, x0, t, eps)).pow(2).mean(1)
    assert torch.equal(got, want)


def test_uniform_draws_the_processs_time_range():
    proc = VPSDE()
    t = _draw("uniform", proc)
    assert t.dtype == torch.float64 and stats.kstest(t.numpy(), stats.uniform(1e-3, 1 - 1e-3).cdf).pvalue > 1e-3
    t = _draw("uniform", DiscreteVP(SCHEDULE))  # ceil(U(0, T]): U{1..T} in distribution
    assert t.dtype == torch.int64 and int(t.min()) >= 1 and int(t.max()) <= 1000
    counts = torch.bincount((t - 1) // 100, minlength=10).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_log_normal_sigma_has_karras_moments_on_edm_and_through_the_log_snr():
    t = _draw("log-normal", EDM())  # EDM: the time is sigma
    ln = t.log().numpy()
    assert stats.kstest(ln, stats.norm(-1.2, 1.2).cdf).pvalue > 1e-3
    vp = VPSDE()
    ln = _ratio(vp, _draw("log-normal", vp, p_mean=0.0, p_std=1.0)).log().numpy()  # inside VP's range (-4.6, 5)
    assert abs(ln.mean()) < 4 / math.sqrt(N) and abs(ln.std() - 1) < 0.02
    assert stats.kstest(ln, stats.norm(0, 1).cdf).pvalue > 1e-3


def test_log_normal_on_the_discrete_chain_is_the_first_timestep_that_reaches_sigma():
    proc = DiscreteVP(SCHEDULE)
    t = _draw("log-normal", proc)
    assert t.dtype == torch.int64 and int(t.min()) >= 1
    ratios = _ratio(proc, torch.arange(1, 1001))
    for k in (5, 50, 300, 800):  # P(t <= k) = P(sigma <= ratio_k)
        p = stats.norm(-1.2, 1.2).cdf(math.log(float(ratios[k - 1])))
        assert abs(float((t <= k).double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / N) + 1e-4


def test_log_uniform_sigma_is_uniform_time_on_ve():
    proc = VESDE(sigma_max=10.0)  # ln sigma(t) is linear in t: log-uniform sigma = uniform t
    t = _draw("log-uniform", proc)
    assert stats.kstest(t.numpy(), stats.uniform(1e-5, 1 - 1e-5).cdf).pvalue > 1e-3
    ln = _ratio(proc, t).log()
    assert abs(float(ln.min()) - math.log(0.01)) < 1e-3 and abs(float(ln.max()) - math.log(10.0)) < 1e-3


def test_time_sampler_errors():
    with pytest.raises(DiffpropError, match="unknown time sampler 'gamma'; allowed: " + ", ".join(TIME_SAMPLERS)):
        build_time_sampler("gamma")
    with pytest.raises(DiffpropError, match="uniform-int draws the discrete chain's integer timesteps; the vp-sde"):
        build_time_sampler("uniform-int", "vp-sde")
    with pytest.raises(DiffpropError, match="time sampler log-normal: unknown option.*allowed: p_mean, p_std"):
        build_time_sampler("log-normal", "edm", rho=7)
    assert type(build_time_sampler(None, "edm")).__name__ == "LogNormal"
    assert type(build_time_sampler(None, "ve-sde")).__name__ == "Uniform"


# -- the process denoising loss at the exact optimum -------------------------------------------------------------

class _OracleNet(torch.nn.Module):
    """A "backbone" that outputs what the exact denoiser of ``mixture`` says ``raw`` should: ``E[target | x_t]``
    (``target`` is linear in x0 and eps at fixed t). It reads ``x_t`` and ``t`` back from ``(c_in x~, c_noise)``."""

    def __init__(self, mixture, process, t_of_noise):
        super().__init__()
        self.oracle, self.t_of_noise, self.den = OracleDenoiser(mixture, process), t_of_noise, None

    def forward(self, x_in, c_noise):
        t = self.t_of_noise(c_noise.double())
        a2, s2 = self.den.process.coefficients(t, x_in.double())
        x_t = x_in.double() * (s2 / a2 + self.den.sigma_data ** 2).sqrt() * a2.sqrt()  # undo c_in and the 1 / alpha
        eps, x0 = self.oracle.predict(x_t, t)
        return self.den.target(x0, t, eps)


@pytest.mark.parametrize("process, parameterization, t_of_noise", [
    (EDM(sigma_data=0.5), "edm", lambda c: (4 * c).exp()),
    (VPSDE(), "eps", lambda c: c / 999),
    (VPSDE(), "v", lambda c: c / 999),
    (SubVPSDE(), "x0", lambda c: c / 999),
    (VESDE(sigma_max=20.0), "edm", lambda c: (4 * c).exp().log().sub(math.log(0.01)) / math.log(20.0 / 0.01)),
])
def test_loss_of_the_exact_denoiser_is_the_closed_form_minimum(process, parameterization, t_of_noise):
    """Gaussian data ``N(mu, s^2 I)``: ``Var(x0 | x_t) = s^2 sigma~^2 / (s^2 + sigma~^2)`` (``sigma~ = sigma /
    alpha``), so the minimum of ``E|raw - target|^2`` per dimension is that over ``c^2`` for ``target = c x0 +
    (linear in x_t)``: eps ``alpha^2 s^2 / (alpha^2 s^2 + sigma^2)``, x0 ``Var``, v ``Var / sigma^2`` (VP),
    EDM's ``F`` ``Var / c_out^2`` (= 1 when ``sigma_data = s``). A wrong ``target`` or ``marginal`` misses it."""
    s = 0.5
    mix = GaussianMixture(torch.tensor([[1.0, -2.0]]), torch.tensor([s]), torch.ones(1))
    den = ProcessDenoiser(None, process, parameterization)
    net = _OracleNet(mix, process, t_of_noise)
    den.net, net.den = net, den
    x0 = torch.tensor([1.0, -2.0], dtype=torch.float64) + s * torch.randn(N, 2, generator=torch.Generator()
                                                                           .manual_seed(5), dtype=torch.float64)
    sampler = build_time_sampler("log-uniform", process.name)  # every noise level, the extremes included
    loss = DenoisingLoss(sampler)(den, x0, torch.Generator().manual_seed(7))
    t = sampler(process, N, torch.Generator().manual_seed(7), "cpu")  # the loss's own draws
    a2, s2 = process.alpha2(t), process.sigma2(t)
    var = s**2 * (s2 / a2) / (s**2 + s2 / a2)
    c2 = {"eps": a2 / s2, "x0": torch.ones_like(t), "v": 1 / s2,
          "edm": (s2 / a2 + den.sigma_data**2) / (s2 / a2 * den.sigma_data**2)}[parameterization]  # 1 / c_out^2
    minimum = var * c2
    z = (loss - minimum).mean() / (loss - minimum).std() * math.sqrt(N)
    assert abs(float(z)) < 4, (float(loss.mean()), float(minimum.mean()))
    if parameterization == "edm" and isinstance(process, EDM):
        assert torch.allclose(minimum, torch.ones_like(minimum))  # Karras et al.'s weighting: unit loss everywhere


# -- configs and run folders --------------------------------------------------------------------------------------

def test_config_round_trip_with_process_keys(tmp_path):
    cfg = load_config(None, ["diffusion.process=ve-sde", "diffusion.sigma_min=0.02", "diffusion.t_min=1e-4",
                             "diffusion.time_sampler=log-uniform", "sample.sampler=heun", "sample.spacing=edm"])
    save_config(cfg, tmp_path / "c.toml")
    text = (tmp_path / "c.toml").read_text()
    assert 'process = "ve-sde"' in text and "sigma_min = 0.02" in text and "sigma_max" not in text  # None: absent
    back = load_config(tmp_path / "c.toml")
    assert back == cfg and back.diffusion.sigma_max is None and back.sample.spacing == "edm"
    old = load_config(None)  # a config written before processes existed reads as the discrete chain
    assert (old.diffusion.process, old.diffusion.time_sampler, old.sample.spacing) == ("discrete", None, None)


@pytest.mark.parametrize("override, message", [
    (["diffusion.process=cm"], r"diffusion.process = 'cm' is not allowed; allowed: discrete, vp-sde, subvp-sde, "
                               r"ve-sde, edm"),
    (["diffusion.time_sampler=beta"], r"diffusion.time_sampler = 'beta' is not allowed; allowed: uniform-int, "
                                      r"uniform, log-normal, log-uniform"),
    (["diffusion.process=edm", "diffusion.beta_min=0.2"], r"diffusion.beta_min applies to diffusion.process = "
                                                          r"vp-sde, subvp-sde, not 'edm'"),
    (["diffusion.sigma_data=0.5"], r"diffusion.sigma_data applies to diffusion.process = edm, not 'discrete'"),
    (["diffusion.parameterization=edm"], r"'edm' .* needs a continuous-time diffusion.process"),
    (["diffusion.process=ve-sde", "diffusion.parameterization=v"], r"'v' needs a variance-preserving process"),
    (["diffusion.process=vp-sde", "diffusion.time_sampler=uniform-int"], r"uniform-int' draws the discrete chain"),
    (["diffusion.process=vp-sde", 'objective.regularizers=["epdm"]'], r"epdm is defined on the discrete chain only"),
    (["diffusion.process=edm", "model.smd=true"], r"model.smd .* not on diffusion.process = 'edm'"),
    (["diffusion.process=edm", "sample.spacing=leading"], r"spacing of the discrete chain; .* allowed: uniform, "
                                                          r"quadratic, edm"),
    (["diffusion.process=edm", "diffusion.sigma_max=-1"], r"diffusion.sigma_max must be > 0.0"),
])
def test_process_config_errors(override, message):
    with pytest.raises(DiffpropError, match=message) as e:
        load_config(None, override)
    assert "\n" not in str(e.value)


def test_input_perturbation_runs_on_a_process():
    cfg = load_config(None, ["model.width=16", "model.depth=1", "diffusion.process=vp-sde",
                             'objective.regularizers=["input_perturbation"]'])
    from diffprop.losses import Objective

    out = Objective.from_config(cfg)(build_denoiser(cfg, (2,)), torch.randn(32, 2), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.value) and {"denoising", "input_perturbation"} <= out.logs.keys()


# -- the CLI, end to end ------------------------------------------------------------------------------------------

def _cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _sets(items):
    return [x for o in items for x in ("--set", o)]


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("edm-run")
    cfg = root / "edm.toml"
    cfg.write_text('[diffusion]\nprocess = "edm"\nparameterization = "edm"\n')
    code = main(["train", str(cfg), "--out", str(root / "run"), "--quiet",
                 *_sets(TINY + ["data.name=gmm-ring", "train.steps=20"])])
    assert code == 0
    return root / "run"


def test_train_on_edm_then_sample_with_heun(edm_run, tmp_path, capsys):
    saved = json.loads((edm_run / "process.json").read_text())
    assert saved["name"] == "edm" and saved["sigma_min"] == 0.002 and saved["sigma_max"] == 80.0
    run = load_run(edm_run)
    assert isinstance(run.denoiser, ProcessDenoiser) and run.denoiser.sigma_data == saved["sigma_data"]
    data = load_dataset("gmm-ring", num_samples=512, seed=0).x
    assert saved["sigma_data"] == float(data.double().std())  # the training data's std
    code, out, err = _cli(["sample", edm_run, "--sampler", "heun", "--steps", 6, "--churn", 2, "--num", 64,
                           "--out", tmp_path / "s.npz"], capsys)
    assert code == 0, err
    f = np.load(tmp_path / "s.npz")
    meta = json.loads(str(f["meta"]))
    assert f["samples"].shape == (64, 2) and np.isfinite(f["samples"]).all()
    assert (meta["sampler"], meta["steps"], meta["nfe"], meta["process"], meta["churn"]) == ("heun", 6, 11, "edm", 2)


def test_resume_on_a_process_is_bit_exact(edm_run, tmp_path, capsys):
    cfg = tmp_path / "ve.toml"
    cfg.write_text('[diffusion]\nprocess = "ve-sde"\n')
    sets = _sets(TINY + ["data.name=gmm-ring", "train.steps=20"])
    assert _cli(["train", cfg, "--out", tmp_path / "a", "--quiet", *sets], capsys)[0] == 0
    assert _cli(["train", cfg, "--out", tmp_path / "b", "--quiet", *sets, "--set", "train.steps=10"], capsys)[0] == 0
    assert _cli(["train", cfg, "--out", tmp_path / "b", "--quiet", *sets, "--resume", "latest"], capsys)[0] == 0
    a, b = (tmp_path / r / "checkpoints" / "step_00000020" / "ema.safetensors" for r in "ab")
    assert a.read_bytes() == b.read_bytes()
    saved = json.loads((tmp_path / "a" / "process.json").read_text())
    data = load_dataset("gmm-ring", num_samples=512, seed=0).x  # the run's training data (TINY: 512 points)
    assert saved["name"] == "ve-sde" and saved["sigma_max"] == largest_distance(data)  # Song & Ermon 2020, Tech. 1


@pytest.mark.parametrize("argv, message", [
    (["sample", "--oracle", "gmm-grid", "--sampler", "ddim", "--snr", "0.2"],
     "--snr applies to --sampler pc, not ddim"),
    (["sample", "--oracle", "gmm-grid", "--sampler", "dpm++"], "argument --sampler: invalid choice: 'dpm++'"),
    (["sample", "--oracle", "gmm-grid", "--process", "flow"], "argument --process: invalid choice: 'flow'"),
    (["sample", "--oracle", "gmm-grid", "--process", "vp-sde", "--spacing", "leading"],
     "time grid 'leading' does not apply to the vp-sde process"),
    (["sample", "{run}", "--process", "vp-sde"], "--process applies to --oracle"),
    (["train", "{cfg}", "--set", "diffusion.process=flow"], "diffusion.process = 'flow' is not allowed"),
    (["train", "{cfg}", "--set", "diffusion.time_sampler=beta"], "diffusion.time_sampler = 'beta' is not allowed"),
])
def test_bad_process_and_sampler_input_is_one_line_exit_2(edm_run, tmp_path, capsys, argv, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nsteps = 1\n")
    code, _, err = _cli([a.format(run=edm_run, cfg=cfg) for a in argv], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
