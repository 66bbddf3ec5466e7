"""``reproduce score-matching`` at tiny scale: every objective on both datasets, the exact swiss-roll mixture, the score
error of the exact and the zero score, and the verdict's logic."""
import csv

import numpy as np
import torch

from diffprop.cli import main
from diffprop.data.toy import load_toy
from diffprop.experiments import score_matching as exp
from diffprop.mixtures import ring_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.schedules import NoiseSchedule


def test_swiss_roll_mixture_is_the_datasets_law():
    """The data's mean log-density under the mixture equals the mixture's own (a wrong radius, blur or range of u
    would lower the first), within a few standard errors; and the moments agree."""
    mix = exp.swiss_roll_mixture()
    x, _ = load_toy("swiss-roll", 4000, seed=0)
    y = mix.sample(4000, torch.Generator().manual_seed(0))
    lx, ly = mix.log_prob(x), mix.log_prob(y)
    assert abs(float(lx.mean() - ly.mean())) < 4 * float((lx.var() / len(lx) + ly.var() / len(ly)).sqrt())
    assert torch.allclose(x.double().std(0), y.std(0), atol=0.05)


def test_score_error_is_zero_for_the_exact_score_and_one_for_the_zero_score():
    schedule, mix = NoiseSchedule.from_config("linear", 100), ring_mixture()
    exact = exp.score_errors(OracleDenoiser(mix, schedule), mix, 64, seed=0)
    zero = exp.score_errors(OracleDenoiser(mix, schedule, eps_scale=0.0), mix, 64, seed=0)
    assert max(exact.values()) < 1e-4  # float32 rounding of x_t only
    assert all(abs(v - 1) < 1e-9 for k, v in zero.items() if k.startswith("rel_")) and zero["eps_mse"] > 0.5
    assert exp.band_times(1000, 0.0, 0.01) == (1, 10) and exp.band_times(100, 0.3, 1.0) == (31, 100)
    assert exp.band_times(10, 0.0, 0.01) == (1, 1)


def test_verdict_reads_the_welch_tests_and_the_cost_growth():
    same = {v: {"eps_mse": np.array([0.1, 0.11, 0.12])} for v in ("ssm", "ssm-vr", "ism")}
    costs = {(n, D): (D if n == "ism" else 1.0) for n in ("ssm-vr", "ism") for D in (2, 128)}
    assert exp.verdict({"gmm-ring": same}, costs, (2, 128)).startswith("yes")
    worse = {**same, "ssm-vr": {"eps_mse": np.array([0.5, 0.51, 0.52])}}
    assert exp.verdict({"gmm-ring": worse}, costs, (2, 128)).startswith("partly")
    band = {**same, "ssm-vr": {"eps_mse": same["ism"]["eps_mse"], "rel_0.3-1": np.array([0.2, 0.21, 0.22])},
            "ism": {**same["ism"], "rel_0.3-1": np.array([0.1, 0.11, 0.12])}}
    assert "significantly worse in rel_0.3-1" in exp.verdict({"gmm-ring": band}, costs, (2, 128))


def test_tiny_run_trains_every_objective_on_both_datasets(tmp_path):
    out = tmp_path / "sm"
    assert main(["reproduce", "score-matching", "--scale", "tiny", "--out", str(out), "--quiet"]) == 0
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["data"], r["variant"]) for r in rows} == {(d, v) for d in exp.DATASETS for v in exp.VARIANTS}
    zero = {"gmm-ring": 0.81, "swiss-roll": 0.77}  # eps_mse of the zero score (measured with the exact oracle)
    assert all(0 < float(r["eps_mse"]) < zero[r["data"]] for r in rows)  # 30 steps already beat the zero score
    text = (out / "report.md").read_text()
    assert "**Reproduces?**" in text and "score_error.png" in text and (out / "score_error.png").stat().st_size > 10_000
    assert (out / "gmm-ring" / "samples.png").is_file() and (out / "swiss-roll" / "samples.png").is_file()
