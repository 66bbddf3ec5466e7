"""002's reproductions at tiny scale through the CLI: smd-table1, smd-fig3 and smd-fig4 on digits share their DDPM
and SMD runs; smd-fig2 scores checkpoints over training; verdicts follow the numbers."""
import csv
import json
import math
import re

import pytest

from diffprop.cli import main
from diffprop.config import load_config
from diffprop.experiments import gpu, smd_fig2, smd_fig3, smd_table1


def _reproduce(capsys, *args) -> None:
    assert main(["reproduce", *args, "--scale", "tiny", "--quiet"]) == 0, capsys.readouterr().err


def _table(folder):
    return list(csv.DictReader((folder / "table.csv").open()))


def _verdict(folder) -> str:
    text = (folder / "report.md").read_text()
    assert "**Claim.**" in text and "**Setup.**" in text and "**Measured.**" in text
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (folder / image).is_file(), image
    return re.search(r"^\*\*Reproduces\?\*\* (\w+)", text, re.M).group(1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """smd-table1, then smd-fig3 and smd-fig4 beside it (one seed each): name -> folder."""
    root = tmp_path_factory.mktemp("smd")
    for name in ("smd-table1", "smd-fig3", "smd-fig4"):
        assert main(["reproduce", name, "--scale", "tiny", "--out", str(root / name), "--quiet"]) == 0
    return {name: root / name for name in ("smd-table1", "smd-fig3", "smd-fig4")}


def test_table1_ddpm_and_smd_on_digits(digits):
    rows = _table(digits["smd-table1"])
    assert [r["variant"] for r in rows] == ["ddpm", "ddpm+smd"]
    assert all(math.isfinite(float(r[c])) and float(r[c]) > 0 for r in rows for c in ("fd", "kid", "mmd_rbf"))
    assert _verdict(digits["smd-table1"]) == "undecided"  # one seed: no t-test
    cfg = load_config(digits["smd-table1"] / "runs" / "ddpm+smd-seed0" / "config.toml")
    assert cfg.model.smd and cfg.smd.variant == "official" and cfg.model.kind == "unet" and cfg.diffusion.T == 100


def test_fig3_and_fig4_reuse_table1s_runs(digits):
    table1 = digits["smd-table1"]
    assert not (digits["smd-fig3"] / "runs").exists()  # both models came from smd-table1
    assert sorted(p.name for p in (digits["smd-fig4"] / "runs").iterdir()) == ["n_eta=2-seed0"]
    fig4 = {r["variant"]: r for r in json.loads((digits["smd-fig4"] / "runs.json").read_text())}
    assert fig4["n_eta=1"]["shared"] and fig4["n_eta=1"]["dir"] == str(table1 / "runs" / "ddpm+smd-seed0")
    # the same model and sampling seed: the same samples, hence the same score
    t1 = {r["variant"]: r for r in json.loads((table1 / "runs.json").read_text())}
    assert fig4["n_eta=1"]["fd"] == t1["ddpm+smd"]["fd"]
    # ... drawn once: smd-table1 keeps them in the run's folder, smd-fig4 scores them again, smd-fig3 adds its own
    samples = table1 / "runs" / "ddpm+smd-seed0" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == sorted(
        f"{s}-K{k}-n64-seed10000.safetensors" for s, k in [("ddpm", "T"), *((s, k) for s in smd_fig3.SAMPLERS
                                                                             for k in smd_fig3.STEPS["tiny"])])
    assert (samples / "ddpm-KT-n64-seed10000.safetensors").stat().st_mtime <= (table1 / "runs.json").stat().st_mtime
    assert load_config(digits["smd-fig4"] / "runs" / "n_eta=2-seed0" / "config.toml").smd.n_eta == 2


def test_fig3_quality_per_sampler_and_steps(digits):
    rows = _table(digits["smd-fig3"])
    assert [r["setting"] for r in rows] == [f"{v}, {s} sampler, K = {k}" for v in smd_table1.VARIANTS
                                            for s in smd_fig3.SAMPLERS for k in smd_fig3.STEPS["tiny"]]
    for r in rows:
        p, rc, f1 = (float(r[c]) for c in ("precision", "recall", "f1"))
        assert 0 <= p <= 1 and 0 <= rc <= 1 and f1 == pytest.approx(2 * p * rc / (p + rc) if p + rc else 0)
    assert _verdict(digits["smd-fig3"]) == "undecided"


def test_fig4_time_and_quality_per_n_eta(digits):
    rows = _table(digits["smd-fig4"])
    assert [r["variant"] for r in rows] == ["n_eta=1", "n_eta=2"]
    assert all(float(r["ms_per_step (side by side)"]) > 0 and math.isfinite(float(r["fd"])) for r in rows)
    text = (digits["smd-fig4"] / "report.md").read_text()
    assert "linear fit" in text and "tradeoff.png" in text and _verdict(digits["smd-fig4"]) == "undecided"
    assert "measured side by side for n_eta in [1, 2, 3]" in text  # timing covers more n_eta than training


def test_fig2_checkpoints_over_training_two_seeds(tmp_path, capsys):
    _reproduce(capsys, "smd-fig2", "--seeds", "2", "--out", str(tmp_path))
    rows = _table(tmp_path)
    assert [r["setting"] for r in rows] == ["ddpm, step 30", "ddpm, step 60", "ddpm+smd, step 30",
                                            "ddpm+smd, step 60"]
    assert all(r["seeds"] == "0 1" for r in rows)
    assert all(0 <= float(r["high_quality_fraction"]) <= 1 and math.isfinite(float(r["log_likelihood"]))
               for r in rows)
    assert _verdict(tmp_path) in ("yes", "no", "partly")  # two seeds: t-tests at the first and last checkpoint
    assert (tmp_path / "samples-ddpm+smd.png").is_file() and (tmp_path / "quality_vs_training.png").is_file()


def test_fig3_needs_images(tmp_path, capsys):
    assert main(["reproduce", "smd-fig3", "--scale", "tiny", "--data", "gmm-grid", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gmm-grid is not an image dataset" in err


def _test(ours, other, p):
    return {"ours": "ddpm+smd", "other": "ddpm", "mean_ours": ours, "mean_other": other, "p": p,
            "better": ours < other, "significant": ours < other and p < 0.05}


def test_verdicts_follow_the_numbers():
    assert smd_table1.verdict(_test(8.0, 10.0, 0.01), 3, "fd").startswith("yes: DDPM + SMD's fd is 20.0 % lower")
    assert smd_table1.verdict(_test(9.8, 10.0, 0.01), 3, "fd").startswith("partly")  # significant but < 5 %
    assert smd_table1.verdict(_test(11.0, 10.0, 0.01), 3, "fd").startswith("no: DDPM + SMD's fd is 10.0 % higher")

    def f1(gain_few, gain_many, p_few):  # higher F1 is better: flip the test's sense
        few = {"mean_ours": 0.5 + gain_few, "mean_other": 0.5, "p": p_few,
               "significant": gain_few > 0 and p_few < 0.05}
        many = {"mean_ours": 0.5 + gain_many, "mean_other": 0.5, "p": 0.5, "significant": False}
        return {(s, k): few if k == 10 else many for s in smd_fig3.SAMPLERS for k in (10, 100)}

    assert smd_fig3.verdict(f1(0.1, 0.01, 0.01), (10, 100), 3).startswith("yes")
    assert smd_fig3.verdict(f1(0.1, 0.2, 0.01), (10, 100), 3).startswith("no")  # gain grows with K
    assert smd_fig3.verdict(f1(0.1, 0.01, 0.2), (10, 100), 3).startswith("no")  # not significant
    ll = {100: _test(-2.0, -3.0, 0.01) | {"better": True, "significant": True},
          200: _test(-2.0, -2.0, 0.9) | {"better": False, "significant": False}}
    assert smd_fig2.verdict(ll, 3).startswith("partly: at step 100 SMD's log-likelihood is -2 vs DDPM's -3 "
                                              "(significantly higher")


def test_gpu_estimate_counts_smd_and_eta_draws():
    base = load_config(None, ["model.kind=unet"])
    smd = load_config(None, ["model.kind=unet", "model.smd=true", "smd.variant=official", "smd.n_eta=2"])
    assert gpu.relative_step_cost(base) == 1.0
    assert gpu.relative_step_cost(smd) == pytest.approx(2 * gpu.SMD_NET["official"])
