"""``diffprop reproduce smd-mixture --scale tiny``: the three SMD losses on gmm-grid at K = 1..50 sampling steps."""
import json

import numpy as np

from diffprop.cli import main
from diffprop.config import load_config
from diffprop.experiments import smd_mixture


def test_smd_mixture_tiny_trains_each_loss_and_reports(tmp_path, capsys):
    assert main(["reproduce", "smd-mixture", "--scale", "tiny", "--out", str(tmp_path), "--quiet"]) == 0, \
        capsys.readouterr()
    rows = json.loads((tmp_path / "runs.json").read_text())
    s = smd_mixture.SCALES["tiny"]
    assert {(r["variant"], r["seed"], r["sampling_steps"]) for r in rows} == {
        (v, seed, k) for v in smd_mixture.LOSSES for seed in range(s["seeds"]) for k in s["sampling"]}
    for loss in smd_mixture.LOSSES:
        cfg = load_config(tmp_path / "runs" / f"{loss}-seed0" / "config.toml")
        assert cfg.smd.loss == loss and cfg.smd.n_eta == s["n_eta"] and cfg.diffusion.var_type == "beta_tilde"
    assert all(0 <= r["high_quality_fraction"] <= 1 and r["mode_chi2"] >= 0 and r["eta_spread"] >= 0 for r in rows)
    assert all(np.isfinite(r["kl_estimate"]) for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "**Reproduces?** " in report and (tmp_path / "quality_vs_steps.png").stat().st_size > 0
    tests = json.loads((tmp_path / "tests.json").read_text())
    assert sorted(map(int, tests)) == s["sampling"] and all(len(ts) == 2 * len(smd_mixture.COLUMNS)
                                                           for ts in tests.values())
    assert "Li, van Breugel & van der Schaar 2024" in report and "002" not in report
    # the runs are reused: a second call trains nothing
    before = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("*.safetensors")}
    assert main(["reproduce", "smd-mixture", "--scale", "tiny", "--out", str(tmp_path), "--quiet"]) == 0
    assert {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("*.safetensors")} == before


def test_mode_chi2_and_the_verdict_follow_the_numbers():
    assert smd_mixture.mode_chi2([0.25] * 4) == 0
    assert smd_mixture.mode_chi2([1.0, 0, 0, 0]) == 3.0  # K sum (w - 1/K)^2 = 4 (9/16 + 3/16)
    win = {"ours": "mixture", "metric": "high_quality_fraction", "p": 0.001, "better": True, "significant": True}
    lose = {**win, "metric": "kl_estimate", "p": 0.5, "significant": False}
    assert smd_mixture.verdict({1: [win, {**win, "metric": "kl_estimate"}]}, 3).startswith("yes")
    assert smd_mixture.verdict({1: [win, lose]}, 3).startswith("partly")
    assert smd_mixture.verdict({1: [lose], 10: [win]}, 3).startswith("no")  # K = 10 is not "few steps"
    assert smd_mixture.verdict({1: [win]}, 1).startswith("undecided")
