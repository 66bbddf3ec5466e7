"""Exact likelihood by the probability-flow ODE (diffprop.diagnostics.likelihood) against closed forms."""
import json
import math

import pytest
import torch

from diffprop.cli import main
from diffprop.diagnostics.likelihood import (bits_per_dim, dequantize, drift_and_divergence, gaussian_log_prob,
                                             ode_likelihood, pixel_levels)
from diffprop.errors import DiffpropError
from diffprop.mixtures import GaussianMixture, grid_mixture, ring_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.processes import build_process
from diffprop.samplers.ode import ode_drift
from diffprop.schedules import NoiseSchedule


def _points(mixture, n, seed=0):
    return mixture.sample(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,n", [("vp-sde", 128), ("edm", 128), ("ve-sde", 128), ("discrete", 64)])
def test_ode_likelihood_matches_closed_form_on_the_grid(name, n):
    """With the exact oracle the flow carries q_{t_min} to q_{t_max}: log p = log q_{t_min}(x) up to the solver's
    error and the prior's mismatch (data-scaled VE's sigma_max leaves one: checked with q_{t_max} in its place)."""
    mix = grid_mixture()
    proc = build_process(name, data=_points(mix, 2000, seed=1), schedule=NoiseSchedule.from_config("linear", 1000))
    oracle = OracleDenoiser(mix, proc)
    x = _points(mix, n)
    res = ode_likelihood(oracle, x)
    exact = oracle.log_prob(x, proc.t_min)
    assert res.trace == "exact" and res.t_min == proc.t_min and res.t_max == proc.t_max and res.nfe > 20
    # the flow itself, with the exact end density q_{t_max}(x_T) instead of the prior: tight for every process
    flow = res.delta_logp + oracle.log_prob(res.z, proc.t_max) - exact
    assert float(flow.abs().mean()) < 0.01, float(flow.abs().mean())
    diff = res.logp - exact
    assert abs(float(diff.mean())) < 0.05, float(diff.mean())  # the acceptance: 0.05 nats on average
    if name != "ve-sde":  # the prior N(0, prior_std^2) is q_{t_max} to within 1e-2 nats
        assert float(diff.abs().mean()) < 0.01, float(diff.abs().mean())
    assert torch.allclose(res.bits_per_dim, -res.logp / (2 * math.log(2)))  # continuous data: no offset
    # and it is the density at t_min, not some other: log q_0 differs by far more than the error
    if name == "vp-sde":
        assert float((oracle.log_prob(x, 0) - exact).abs().mean()) > 5 * float(diff.abs().mean())


def test_hutchinson_agrees_with_the_exact_trace():
    """Unbiased: on the ring (not a product density, so the Jacobian is not diagonal) the mean difference lies within
    3 standard errors, and the estimate is noisy; on the grid (a product of 1-D mixtures: a diagonal Jacobian)
    Rademacher probes are exact."""
    proc = build_process("vp-sde")
    ring = OracleDenoiser(ring_mixture(), proc)
    x = _points(ring.mixture, 128)
    exact = ode_likelihood(ring, x, trace="exact")
    for probe in ("rademacher", "gaussian"):
        est = ode_likelihood(ring, x, trace="hutchinson", probe=probe, generator=torch.Generator().manual_seed(3))
        d = est.logp - exact.logp
        se = float(d.std()) / math.sqrt(len(d))
        assert est.trace == "hutchinson" and est.probe == probe and se > 0.01
        assert abs(float(d.mean())) < 3 * se, (probe, float(d.mean()), se)
    grid = OracleDenoiser(grid_mixture(), proc)
    x = _points(grid.mixture, 64)
    d = ode_likelihood(grid, x, trace="hutchinson").logp - ode_likelihood(grid, x, trace="exact").logp
    assert float(d.abs().max()) < 1e-6


def test_exact_divergence_is_the_jacobians_trace_in_any_chunking():
    """The copies-of-the-batch trace against torch.func's full Jacobian, on a 5-D mixture with a dense Jacobian, with
    all coordinates in one pass and two per pass (the last pass partial)."""
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixture(torch.randn(4, 5, generator=g, dtype=torch.float64), torch.tensor([0.3, 0.5, 0.4, 0.6]),
                          torch.ones(4))
    oracle = OracleDenoiser(mix, build_process("vp-sde"))
    x = mix.sample(6, g)
    for t in (0.02, 0.4):
        jac = torch.func.vmap(torch.func.jacrev(lambda z: ode_drift(oracle, z[None], t)[0]))(x)
        trace = jac.diagonal(dim1=1, dim2=2).sum(1)
        for rows in (8192, 12):
            f, div = drift_and_divergence(oracle, x, t, max_rows=rows)
            assert torch.allclose(div, trace, atol=1e-10) and torch.allclose(f, ode_drift(oracle, x, t), atol=1e-12)
        off = (jac - torch.diag_embed(jac.diagonal(dim1=1, dim2=2))).abs().max()
        assert float(off) > 1e-3  # a dense Jacobian: a wrong row would show


def test_bits_per_dim_of_dequantised_images_match_a_gaussian_in_closed_form():
    """8-bit 'images' of a Gaussian N(0, s^2 I): the discrete probability of a pixel's bin is a product of normal CDF
    differences, so the true bits/dim of the 8-bit data is known; the dequantised ODE bound lies within 1e-3 of it
    (score SDE's offset 7 instead of log2(127.5) would be 0.0056 off, a bin of the wrong width a whole bit)."""
    s, D, n = 0.5, 16, 32
    gaussian = GaussianMixture(torch.zeros(1, D), torch.tensor([s]), torch.ones(1))
    oracle = OracleDenoiser(gaussian, build_process("vp-sde"))
    k = ((_points(oracle.mixture, n) + 1) * 127.5).round().clamp(0, 255)
    x = (k / 127.5 - 1).reshape(n, 1, 4, 4).float()
    assert pixel_levels(x) == 256 and pixel_levels(x / 2 + 0.003) is None
    res = ode_likelihood(oracle, x, levels=256, generator=torch.Generator().manual_seed(0))
    assert res.levels == 256 and res.trace == "exact" and res.x.shape == x.shape
    assert float((res.x - x.double()).abs().max()) <= 1 / 255 + 1e-7  # within each pixel's bin of width 2/255
    t = torch.tensor(res.t_min, dtype=torch.float64)
    std = math.sqrt(float(oracle.process.alpha2(t) * s**2 + oracle.process.sigma2(t)))  # q_{t_min} = N(0, std^2 I)
    assert float((res.logp - gaussian_log_prob(res.x, std)).abs().max()) < 2e-3  # nats at the dequantised points
    cdf = torch.distributions.Normal(0.0, std).cdf
    xd = x.double().reshape(n, -1)
    discrete = -torch.log(cdf(xd + 1 / 255) - cdf(xd - 1 / 255)).sum(1) / (D * math.log(2))
    assert abs(float((res.bits_per_dim - discrete).mean())) < 1e-3
    assert torch.allclose(bits_per_dim(res.logp, D, 256), (-res.logp / D + math.log(127.5)) / math.log(2))


def test_digits_levels_and_dequantisation_bins():
    x = torch.arange(17.0) / 8 - 1  # sklearn digits: 0..16 as x / 8 - 1
    assert pixel_levels(x.reshape(1, 1, 1, 17)) == 17
    y = dequantize(x.reshape(1, -1), 17, torch.Generator().manual_seed(0))
    assert float((y - x).abs().max()) <= 1 / 16 and not torch.equal(y, x.double().reshape(1, -1))


def test_bad_options_are_refused():
    oracle = OracleDenoiser(grid_mixture(), build_process("vp-sde"))
    x = torch.zeros(2, 2)
    for kw, msg in [({"trace": "hutch"}, "unknown trace"), ({"probe": "cauchy"}, "unknown Hutchinson probe"),
                    ({"rtol": 0.0}, "rtol and atol"), ({"t_min": 0.0}, "0 < t_min < t_max")]:
        with pytest.raises(DiffpropError, match=msg):
            ode_likelihood(oracle, x, **kw)
    oracle.stochastic = True  # as an SMD denoiser: fresh latent noise at every call
    with pytest.raises(DiffpropError, match="needs a deterministic denoiser"):
        ode_likelihood(oracle, x)


def test_cli_likelihood_end_to_end(tmp_path, capsys):
    out = tmp_path / "lk.json"
    code = main(["likelihood", "--oracle", "gmm-ring", "--process", "edm", "--num", "64", "--seed", "2",
                 "--hutchinson", "--rtol", "1e-4", "--atol", "1e-4", "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    r = json.loads(out.read_text())
    assert {"nats", "bits_per_dim", "nfe", "t_min", "t_max", "trace", "log_q_t_min", "ode_minus_exact", "logp",
            "process", "seconds"} <= set(r)
    assert r["process"] == "edm" and r["trace"] == "hutchinson" and r["probe"] == "rademacher" and r["num"] == 64
    assert len(r["logp"]) == 64 and r["nfe"] > 0 and abs(r["ode_minus_exact"]["mean"]) < 3 * r["ode_minus_exact"]["se"]
    assert "bits/dim" in captured.out and "NFE" in captured.out


@pytest.mark.parametrize("argv,msg", [
    (["--oracle", "gmm-grid", "--rtol", "-1"], "--rtol and --atol must be > 0"),
    (["--oracle", "moons"], "needs a Gaussian-mixture dataset"),
    (["--oracle", "gmm-grid", "--exact-trace", "--hutchinson"], "not allowed with"),
])
def test_cli_likelihood_bad_input_is_one_line(argv, msg, tmp_path, capsys):
    try:
        code = main(["likelihood", *argv, "--out", str(tmp_path / "x.json")])
    except SystemExit as e:  # argparse's own refusals exit from inside the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and msg in err and err.count("\n") == 1 and err.startswith("diffprop: error:"), err
    assert not (tmp_path / "x.json").exists()


def test_cli_likelihood_of_a_trained_run(tmp_path, capsys, tiny_overrides):
    """A float32 network through the ODE: finite numbers, the closed form beside, the default output path."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[train]\nsteps = 30\n")
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet", *sets]) == 0
    capsys.readouterr()
    code = main(["likelihood", str(tmp_path / "run"), "--num", "16", "--seed", "5", "--rtol", "1e-3", "--atol", "1e-3",
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    r = json.loads((tmp_path / "run" / "likelihood-seed5.json").read_text())
    assert r["process"] == "discrete" and r["t_min"] == 1.0 and r["t_max"] == 100.0 and r["trace"] == "exact"
    assert math.isfinite(r["nats"]["mean"]) and math.isfinite(r["log_q_t_min"]["mean"]) and r["nfe"] > 0
    assert r["ode_minus_exact"]["mean"] < 0  # an untrained model is worse than the data's own density


def test_cli_likelihood_of_an_image_run_is_dequantised(tmp_path, capsys):
    """digits (17 levels, x / 8 - 1) through a tiny U-Net: dequantised over bins of width 1/8, Hutchinson in 64-D,
    bits/dim = -(nats / 64 - log 8) / ln 2."""
    cfg = tmp_path / "digits.toml"
    cfg.write_text('[data]\nname = "digits"\n[model]\nkind = "unet"\npreset = "tiny"\n'
                   '[train]\nsteps = 2\nbatch_size = 8\nlog_every = 1\ncheckpoint_every = 2\n[diffusion]\nT = 50\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "d.json"
    code = main(["likelihood", str(tmp_path / "run"), "--num", "3", "--hutchinson", "--rtol", "1e-2", "--atol", "1e-2",
                 "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    r = json.loads(out.read_text())
    assert r["dim"] == 64 and r["num"] == 3 and r["trace"] == "hutchinson"
    assert r["dequantization"]["levels"] == 17 and r["dequantization"]["bin_width"] == 0.125
    assert "log_q_t_min" not in r and "dequantised" in captured.out
    bpd = -(torch.tensor(r["logp"], dtype=torch.float64) / 64 - math.log(8)) / math.log(2)
    assert abs(float(bpd.mean()) - r["bits_per_dim"]["mean"]) < 1e-5
