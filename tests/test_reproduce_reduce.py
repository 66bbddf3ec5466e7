"""``reproduce reduce``: every method at equal steps and at equal wall clock, the training-free samplers tuned on
vanilla's models, the cost table, and a verdict that says yes only for a method that is better on quality and on the
cumulative error at equal steps and not worse at equal wall clock."""
import json

import pytest

from diffprop.cli import main
from diffprop.errors import DiffpropError
from diffprop.experiments.reduce import SAMPLING, TRAINED, chosen, equal_time_steps, paired, tuned, verdict


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("reduce") / "tiny"
    assert main(["reproduce", "reduce", "--scale", "tiny", "--out", str(out), "--quiet"]) == 0
    return out


def test_tiny_run_reports_every_method_under_both_budgets(tiny):
    report = (tiny / "report.md").read_text()
    steps, clock = (tiny / "table.md").read_text(), (tiny / "equal-time" / "table.md").read_text()
    for name in TRAINED:
        assert f"| {name} | 1 |" in steps and f"| {name} | 1 |" in clock and f"| {name} | " in report
    for name in SAMPLING.values():  # sampling-time methods: at equal steps only (they train nothing)
        assert f"| {name} | 1 |" in steps and name not in clock
    summary = json.loads((tiny / "summary.json").read_text())
    assert set(summary["ms_per_step"]) == set(TRAINED) and summary["wall_clock_budget_s"] > 0
    # equal wall clock: each method trained the steps its measured cost buys in vanilla's time (vanilla: its own run)
    afford = summary["equal_time_steps"]
    assert afford == equal_time_steps(summary["ms_per_step"], 60) and afford["vanilla"] == 60
    timed = json.loads((tiny / "equal-time" / "runs.json").read_text())
    assert {r["variant"] for r in timed} == set(TRAINED) - {"vanilla"}
    assert all(r["steps"] == afford[r["variant"]] for r in timed)
    assert summary["best"] is None and "**Reproduces?** undecided" in report  # one seed: no test
    assert (tiny / "propagation.png").is_file() and (tiny / "propagation-h0.1.png").is_file()


def _t(ours, mean_ours, p, mean_other=1.0):
    better = mean_ours < mean_other
    return {"ours": ours, "other": "vanilla", "mean_ours": mean_ours, "mean_other": mean_other, "p": p,
            "better": better, "significant": better and p < 0.01}


def test_verdict_needs_quality_and_cumulative_error_at_equal_steps_and_no_loss_at_equal_time():
    m, c = "kl", "cumulative_t1[rbf@0.1]"
    steps = {m: [_t("a", 0.5, 1e-3), _t("b", 0.4, 1e-4), _t("c", 0.6, 1e-3), _t("d", 0.9, 0.2)],
             c: [_t("a", 0.5, 1e-3), _t("b", 0.5, 1e-3), _t("c", 0.9, 0.5), _t("d", 0.5, 1e-3)]}
    clock = {m: [_t("a", 0.9, 0.3), _t("b", 1.5, 1e-3)]}  # b is significantly worse at equal wall clock
    text, best = verdict(steps, clock, m, c, seeds=3)
    assert best == "a" and text.startswith("yes: a meet the goal")
    text, best = verdict({m: steps[m][2:], c: steps[c][2:]}, {m: []}, m, c, seeds=3)
    assert best is None and text.startswith("no: no method meets the goal at p < 0.01; c: kl better than")
    assert verdict(steps, clock, m, c, seeds=1)[0].startswith("undecided")


def test_methods_choose_a_subset_with_vanilla_and_bad_names_are_refused(tmp_path, capsys):
    trained, sampling = chosen("chain-denoise, time-shift")
    assert list(trained) == ["vanilla", "chain-denoise"] and list(sampling) == ["time-shift"]
    assert chosen(None) == (TRAINED, SAMPLING)
    # digits: chain_mmd at the weight whose gradient matches gmm-grid's ratio to the denoising loss's
    digits, _ = chosen("chain-mmd,chain-denoise", "digits")
    assert digits["chain-mmd"] == [*TRAINED["chain-mmd"], "chain_mmd.weight=3"]
    assert digits["chain-denoise"] == TRAINED["chain-denoise"] and chosen(None, "gmm-grid") == (TRAINED, SAMPLING)
    with pytest.raises(DiffpropError, match="reduce --methods: nope is not a method; allowed: vanilla, epdm-paper"):
        chosen("vanilla,nope")
    code = main(["reproduce", "epdm-quick", "--scale", "tiny", "--methods", "chain-mmd", "--out",
                 str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "diffprop: error: epdm-quick does not take --methods (only reduce compares " \
                                        "chosen methods)", err


def test_a_sampling_method_alone_trains_nothing_at_equal_wall_clock(tmp_path):
    out = tmp_path / "eps"
    assert main(["reproduce", "reduce", "--scale", "tiny", "--methods", "eps-scaling", "--out", str(out),
                 "--quiet"]) == 0
    clock = (out / "equal-time" / "table.md").read_text()
    assert "| vanilla | 1 | 60 |" in clock and "epsilon" not in clock and not (out / "equal-time" / "runs").exists()
    assert "vanilla + epsilon scaling - vanilla" not in (out / "report.md").read_text()  # one seed: no pairs


def test_equal_time_steps_scale_by_the_cost_per_step():
    assert equal_time_steps({"vanilla": 10.0, "a": 25.0, "b": 9.0, "c": 1e9}, 100) == \
        {"vanilla": 100, "a": 40, "b": 111, "c": 1}  # at least one step


def test_tuned_parameters_are_reported_only_when_a_sampler_ran():
    rows = [{"variant": "vanilla", "seed": 0}, {"variant": "eps-scaling", "seed": 0, "chosen": 1.004}]
    assert "(chosen: eps-scaling seed 0: 1.004)" in tuned(rows)
    assert tuned(rows[:1]) == ""  # --methods without epsilon scaling or time shifting: no empty "(chosen: )"


def test_paired_differences_by_seed():
    rows = [{"variant": v, "seed": s, "kl": base + d}
            for s, base in enumerate((1.0, 2.0, 3.0)) for v, d in (("vanilla", 0.0), ("a", -0.1 - 0.01 * s))]
    text = paired(rows, ["kl"])
    # the seeds' spread (1..3) hides the effect from Welch; the pairing sees a consistent -0.11
    assert text.startswith("- a - vanilla, kl: -0.11 (per seed -0.1, -0.11, -0.12), paired t-test p = 0.00")
