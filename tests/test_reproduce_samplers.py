"""``reproduce samplers`` at tiny scale: every sampler x model row, NFE counted, the figure, and a verdict read from
the table; the NFE bookkeeping in closed form."""
import csv

from diffprop.cli import main
from diffprop.experiments import samplers as exp
from diffprop.samplers import GENERAL


def test_steps_spend_the_nfe_budget():
    assert exp.steps_for("heun", 49) == 25 and exp.steps_for("heun", 50) is None  # 2 steps - 1
    assert exp.steps_for("pc", 50) == 25 and exp.steps_for("pc", 5) is None  # 2 per step
    assert exp.steps_for("ddim", 7) == 7
    assert [s["steps"] for s in exp.settings("heun", (5, 10, 20), T=100)] == [3, 5, 10]  # 5, 9, 19 NFE
    assert [s["steps"] for s in exp.settings("ddpm", (5, 50, 1000), T=100)] == [5, 50]  # at most T
    assert {s["rtol"] for s in exp.settings("ode", (5,), T=100, rtols=(1e-2, 1e-4))} == {1e-2, 1e-4}


def test_verdict_compares_heun_with_the_full_chain():
    base = {"model": "oracle", "high_quality_fraction": 0.99}
    rows = [{**base, "sampler": "ddpm", "steps": 100, "nfe": 100, "kl_estimate": 0.02},
            {**base, "sampler": "heun", "steps": 25, "nfe": 49, "kl_estimate": 0.05}]
    assert exp.verdict(rows, 100).startswith("yes")
    rows[1]["kl_estimate"] = 0.5
    assert exp.verdict(rows, 100).startswith("no")
    assert exp.verdict(rows[1:], 100).startswith("undecided")


def test_tiny_run_writes_every_sampler_and_model(tmp_path):
    out = tmp_path / "samplers"
    assert main(["reproduce", "samplers", "--scale", "tiny", "--out", str(out), "--quiet"]) == 0
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["model"], r["sampler"]) for r in rows} == {(m, s) for m in ("oracle", "trained", "oracle-edm")
                                                          for s in GENERAL}
    heun = [r for r in rows if r["sampler"] == "heun"]
    assert all(int(r["nfe"]) == 2 * int(r["steps"]) - 1 for r in heun)
    assert all(int(r["nfe"]) == int(r["steps"]) for r in rows if r["sampler"] in ("ddpm", "ddim", "em", "euler"))
    oracle_ode = next(r for r in rows if r["model"] == "oracle" and r["sampler"] == "ode")
    assert float(oracle_ode["high_quality_fraction"]) > 0.95  # the adaptive ODE on the exact oracle
    text = (out / "report.md").read_text()
    assert "quality_vs_nfe.png" in text and (out / "quality_vs_nfe.png").stat().st_size > 10_000
    assert "**Reproduces?**" in text
    # the error curves of the chains: the exact oracle's DDIM chain (deterministic, 20 steps) stays near q_t
    assert "error_curves.png" in text and (out / "error_curves.png").stat().st_size > 10_000
    curve_rows = [line.split("|")[1:-1] for line in text.splitlines() if line.count("|") == 7]
    ddim = next(r for r in curve_rows if [c.strip() for c in r[:3]] == ["oracle", "ddim", "20"])
    assert abs(float(ddim[3])) < 1.0  # E at t = 0 (its samples), in nats
