"""``reproduce convergence``: its pieces against closed forms (W2 between Gaussians, exact histogram masses, the
score error of known defects, a power law's exponent) and the tiny run end to end."""
import csv
import math

import numpy as np
import pytest
import torch

from diffprop.cli import main
from diffprop.errors import DiffpropError
from diffprop.experiments import convergence as conv
from diffprop.mixtures import ring_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.processes import VPSDE


@pytest.fixture(scope="module")
def oracle():
    return OracleDenoiser(ring_mixture(), VPSDE())


def test_w2_of_gaussian_samples_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    n = 600
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([2.0, 0.0], dtype=torch.float64) + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    # W2^2(N(m1, s1^2 I), N(m2, s2^2 I)) = |m1 - m2|^2 + D (s1 - s2)^2 = 4 + 2 * 0.25
    assert conv.w2(x, y) == pytest.approx(math.sqrt(4.5), abs=0.08)
    assert conv.w2(x, x[torch.randperm(n, generator=g)]) == pytest.approx(0.0, abs=1e-12)  # a permutation: 0
    with pytest.raises(DiffpropError, match="equal-size"):
        conv.w2(x, y[:10])


def test_exact_cell_masses_and_the_tv_floor(oracle):
    t = 0.05
    edges = conv.histogram_edges(oracle, t, 32)
    probs = conv.cell_probabilities(oracle, t, edges)
    assert probs.shape == (32, 32) and 0.999 < probs.sum() <= 1.0
    g = torch.Generator().manual_seed(1)
    from diffprop.diagnostics.exact import forward_samples

    big = forward_samples(oracle, t, 200_000, g)
    assert conv.tv_histogram(big, probs, edges) < 0.02  # Monte Carlo frequencies agree with the exact masses
    x = forward_samples(oracle, t, 2000, g)
    floor = np.mean([conv.tv_histogram(forward_samples(oracle, t, 2000, g), probs, edges) for _ in range(4)])
    assert conv.tv_histogram(x, probs, edges) == pytest.approx(floor, abs=0.03)  # exact samples sit at the floor
    shifted = x + torch.tensor([0.3, 0.0], dtype=torch.float64)  # about two component stds at t = 0.05
    assert conv.tv_histogram(shifted, probs, edges) > floor + 0.2


def test_score_error_of_known_defects(oracle):
    for t in (0.01, 0.3, 0.9):
        assert conv.score_error(oracle, oracle, t, num=500) == pytest.approx(0.0, abs=1e-20)
        assert conv.score_error(conv.ScoreShift(oracle, 0.3), oracle, t, num=500) == pytest.approx(0.09, rel=1e-9)
        # eps-bias b adds b to each coordinate of eps: the score moves by -b / sigma(t) per coordinate
        biased = OracleDenoiser(oracle.mixture, oracle.process, eps_bias=0.1)
        s2 = float(oracle.process.sigma2(torch.tensor(t, dtype=torch.float64)))
        assert conv.score_error(biased, oracle, t, num=500) == pytest.approx(2 * 0.01 / s2, rel=1e-9)
    B = float(oracle.process._B(1.0) - oracle.process._B(oracle.process.t_min))
    assert conv.girsanov_kl(oracle.process, 0.5) == pytest.approx(0.125 * B)
    assert abs(conv.prior_kl(oracle, num=20_000)) < 1e-4  # q_1 is N(0, I) up to alpha(1)^2 ~ 4e-5


def test_rate_fit_recovers_a_power_law():
    rng = np.random.default_rng(0)
    h = np.logspace(-3, -1, 7)
    y = 3 * h**0.7 * np.exp(0.02 * rng.standard_normal(len(h)))
    p, se, n = conv.fit_rate(h, y, noise=1e-6)
    assert n == conv.FIT_POINTS and abs(p - 0.7) < 0.05 and se < 0.05
    p2, _, n2 = conv.fit_rate(h, 5 * h**2, noise=1e-6)
    assert abs(p2 - 2) < 1e-9
    # points at the floor are left out; with fewer than 3 above it there is no fit
    p3, _, n3 = conv.fit_rate(h, np.r_[np.full(4, 1e-4), 3 * h[4:]], noise=1e-3)
    assert n3 == 3 and p3 == pytest.approx(1.0)
    p4, _, n4 = conv.fit_rate(h, np.r_[np.full(5, 1e-4), 3 * h[5:]], noise=1e-3)
    assert n4 == 2 and math.isnan(p4)
    assert conv.judge(0.9, 0.1, 0.5) == "consistent" and conv.judge(0.2, 0.1, 0.5) == "not consistent"
    assert conv.judge(math.nan, math.nan, 0.5).startswith("not testable")
    # an eps exponent below the bound's is no violation while the values stay under Thm 6.2's explicit bound
    checks = [{"sampler": "em", "kl": 0.1, "kl_bound": 0.3, "kl_holds": True}]
    assert conv.eps_verdict(1.5, 0.1, "em", "kl", checks).startswith("consistent: below the explicit bound")
    checks[0].update(kl=0.5, kl_holds=False)
    assert conv.eps_verdict(1.5, 0.1, "em", "kl", checks).startswith("not consistent")
    assert conv.eps_verdict(1.5, 0.1, "heun", "kl", checks).startswith("not testable")


def test_tiny_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "conv"
    assert main(["reproduce", "convergence", "--scale", "tiny", "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    for name in ("runs.csv", "table.csv", "table.md", "rates.csv", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "convergence.png").stat().st_size > 20_000
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    s = conv.SCALES["tiny"]
    assert len(rows) == len(s.eps) * len(conv.SAMPLERS) * len(s.steps)
    kl = {(float(r["eps"]), r["sampler"], int(r["steps"])): float(r["kl_excess"]) for r in rows}
    fine, coarse = max(s.steps), min(s.steps)
    for sampler in conv.STOCHASTIC:
        assert kl[0.0, sampler, fine] < kl[0.0, sampler, coarse] / 5  # the discretization error shrinks with h
    assert kl[1.0, "ddpm", fine] > kl[0.0, "ddpm", fine] + 0.2  # a score error of size 1 is seen
    text = (out / "report.md").read_text()
    assert "**Reproduces?**" in text and "Girsanov" in text and "convergence.png" in text


def test_refuses_data_without_an_exact_density(tmp_path, capsys):
    assert main(["reproduce", "convergence", "--scale", "tiny", "--data", "moons", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "2-D Gaussian-mixture" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
