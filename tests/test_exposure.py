"""Training-free exposure-bias fixes: epsilon scaling (Ning et al. 2024), the time-shift sampler (Li et al. 2024) and
the search over their one parameter, on the exact Gaussian-mixture oracle."""
import json

import pytest
import torch

from diffprop.cli import main
from diffprop.config import Config
from diffprop.data import load_dataset
from diffprop.eps_scaling import EpsScaled
from diffprop.metrics.toy import mixture_metrics
from diffprop.oracle import OracleDenoiser
from diffprop.runs import build_schedule
from diffprop.samplers import sample
from diffprop.samplers.time_shift import shifted_time, state_variance
from diffprop.tune import mixture_kl, tune

MIX = load_dataset("gmm-grid", num_samples=2).mixture
SCHEDULE = build_schedule(Config())  # linear, T = 1000


def oracle(c: float = 1.0) -> OracleDenoiser:
    return OracleDenoiser(MIX, SCHEDULE, eps_scale=c)


def draw(denoiser, sampler="ddim", num=256, steps=10, **options) -> torch.Tensor:
    return sample(denoiser, num, (2,), sampler=sampler, steps=steps, seed=3, progress=False, **options).x


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_neutral_settings_are_the_plain_samplers_bit_for_bit(sampler):
    o = oracle()
    plain = draw(o, sampler)
    assert torch.equal(draw(o, sampler, eps_scaling=1.0), plain)
    assert torch.equal(draw(o, sampler, eps_scaling=(1.0, 0.0)), plain)
    assert torch.equal(draw(o, sampler, shift_window=0), plain)
    assert torch.equal(draw(o, sampler, shift_window=40, shift_cutoff=1000), plain)  # cutoff above every t: no shift
    assert not torch.equal(draw(o, sampler, shift_window=40), plain)


def test_eps_scaled_prediction_is_coherent():
    """eps / (b + k t) per sample, and x0 from it by x_t = alpha x0 + sigma eps."""
    o, x = oracle(), torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 10, 100, 400, 700, 1000])
    wrapped = EpsScaled(o, 1.02, 1e-5)
    p, q = o.predict(x, t), wrapped.predict(x, t)
    torch.testing.assert_close(q.eps, p.eps / (1.02 + 1e-5 * t[:, None].float()), rtol=1e-6, atol=1e-7)
    abar = SCHEDULE.alpha_bars[t][:, None].float()
    torch.testing.assert_close(abar.sqrt() * q.x0 + (1 - abar).sqrt() * q.eps, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wrapped.score(x, t), -q.eps / (1 - abar).sqrt())


@pytest.mark.parametrize("c", [0.9, 1.1])
def test_matching_lambda_undoes_the_oracles_scale_defect(c):
    """eps_scale c multiplies the exact eps* by c; dividing by lambda = c gives eps* back, so the samples are the
    exact oracle's (up to float32 rounding) and the within-mode spread returns to the data's 0.05. Without it c < 1
    leaves noise in x0_hat (modes too wide), c > 1 removes too much (too narrow)."""
    exact = draw(oracle())
    broken, fixed = draw(oracle(c)), draw(oracle(c), eps_scaling=c)
    torch.testing.assert_close(fixed, exact, rtol=0, atol=1e-3)  # float32 rounding, 2 % of a mode's std
    ratio = {k: mixture_metrics(v, MIX)["within_mode_std_ratio"] for k, v in
             (("exact", exact), ("broken", broken), ("fixed", fixed))}
    assert (ratio["broken"] > 1.2 * ratio["exact"]) if c < 1 else (ratio["broken"] < 0.92 * ratio["exact"])
    assert ratio["fixed"] == pytest.approx(ratio["exact"], abs=1e-3)


def test_time_shift_selection_rule():
    """A state wider than q_t's variance is read at a later time, a narrower one at an earlier time (per sample);
    no shift at or below the cutoff, from t = T, or below t_next."""
    o, t, g = oracle(), 500, torch.Generator().manual_seed(0)
    var = 1 - SCHEDULE.alpha_bars  # data_var None: the published 1 - abar_tau
    z = torch.randn(3, 4096, generator=g, dtype=torch.float64)
    z = (z - z.mean(1, keepdim=True)) / z.std(1, keepdim=True)  # sample variance exactly 1
    x = z * torch.stack([var[t + 6], var[t - 6], var[t]]).sqrt()[:, None]
    tau = shifted_time(o, x, t, 480, window=20, cutoff=300)
    assert tau.tolist() == [t + 6, t - 6, t]
    assert shifted_time(o, x, t, 480, window=20, cutoff=500) == t  # at the cutoff: no shift
    assert shifted_time(o, x, 1000, 980, window=20, cutoff=300) == 1000  # the prior's time: no shift
    assert shifted_time(o, x, t, 498, window=20, cutoff=300).tolist() == [t + 6, t - 1, t]  # never at/below t_next
    assert shifted_time(o, x, t, 480, window=4, cutoff=300).tolist() == [t + 2, t - 2, t]  # the window bounds it
    # data_var: the marginal variance abar data_var + 1 - abar; groups of 64 samples share one reading
    z = torch.randn(2, 64, 2, generator=g, dtype=torch.float64)
    z = (z - z.mean((1, 2), keepdim=True)) / z.flatten(1).std(1)[:, None, None]  # each group's variance exactly 1
    a2 = SCHEDULE.alpha_bars[[t + 6, t - 3]].reshape(2, 1, 1)
    y = (z * (a2 * 4 + 1 - a2).sqrt()).reshape(128, 2)  # with data_var > 1 the later time has the smaller variance
    tau = shifted_time(o, y, t, 400, window=40, cutoff=300, data_var=4.0, variance="group")
    assert state_variance(y, "group")[0] == pytest.approx(float(y[:64].var()))
    assert tau.tolist() == [t + 6] * 64 + [t - 3] * 64


def test_tuner_recovers_the_defects_lambda():
    o = oracle(0.9)
    kl = mixture_kl(MIX)
    res = tune(o, (2,), "eps-scaling", tune_quality=kl, eval_quality=kl, quality_name="kl", steps=10, num=512,
               grid=(0.8, 0.9, 1.0, 1.1))
    assert res["chosen"] == 0.9
    assert [r["value"] for r in res["grid"]] == [0.8, 0.9, 1.0, 1.1]
    assert res["evaluation"]["chosen"]["kl"] < res["evaluation"]["baseline"]["kl"] - 0.3


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_sample_and_tune(tmp_path, capsys):
    code, out, err = run(capsys, "sample", "--oracle", "gmm-grid", "--sampler", "ddim", "--steps", 5, "--num", 64,
                         "--eps-scaling", "1.01,0", "--shift-window", 8, "--shift-variance", "group",
                         "--shift-data-var", 4, "--out", tmp_path / "s.npz")
    assert code == 0, err
    import numpy as np
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
    assert meta["sampler"] == "ddim" and meta["eps_scaling"] == [1.01, 0.0] and meta["shift_window"] == 8
    code, out, err = run(capsys, "tune", "--oracle", "gmm-grid", "--eps-scale", 0.9, "--method", "eps-scaling",
                         "--grid", "0.9,1", "--steps", 10, "--num", 256, "--quiet", "--out", tmp_path / "t.json")
    assert code == 0, err
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["chosen"] == 0.9 and res["model"] == "oracle:gmm-grid" and len(res["grid"]) == 2
    assert "chose 0.9" in out


@pytest.mark.parametrize("argv, message", [
    (["sample", "--oracle", "gmm-grid", "--eps-scaling", "1,a"], "expected B or B,K"),
    (["sample", "--oracle", "gmm-grid", "--eps-scaling", "-1"], "must be > 0"),
    (["sample", "--oracle", "gmm-grid", "--steps", 2, "--num", 8, "--eps-scaling", "1,-0.01"], "in 0..1000"),
    (["sample", "--oracle", "gmm-grid", "--sampler", "ddim", "--shift-window", 4, "--shift-variance", "x", "--num", 8],
     "unknown variance"),
    (["sample", "--oracle", "gmm-grid", "--sampler", "heun", "--shift-window", 4, "--num", 8],
     "--shift-window applies to --sampler ddpm or ddim, not heun"),
    (["sample", "--oracle", "gmm-grid", "--process", "vp-sde", "--sampler", "ddim", "--shift-window", 4, "--num", 8],
     "discrete chain"),
    (["tune", "--oracle", "gmm-grid", "--method", "time-shift", "--sampler", "heun"], "time-shift applies to"),
    (["tune", "--oracle", "gmm-grid", "--method", "eps-scaling", "--seed", 1, "--tune-seed", 1], "must differ"),
    (["tune", "--oracle", "gmm-grid", "--method", "eps-scaling", "--cutoff", 100], "--cutoff applies to"),
    (["tune", "--oracle", "gmm-grid", "--method", "eps-scaling", "--grid", "1,x"], "comma list of numbers"),
    (["tune", "--oracle", "gmm-grid", "--method", "time-shift", "--grid", "1.5"], "whole numbers"),
])
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    code, out, err = run(capsys, *argv, *(["--out", tmp_path / "o.json"] if argv[0] == "tune" else []))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
