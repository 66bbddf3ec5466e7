"""``reproduce consistency`` at tiny scale: every row (CD and CT at 1, 2, 4 steps, the oracle teacher's DDIM and Heun
at the same NFE), the figure and the report, on gmm-grid and on digits (a trained DDPM as teacher); the verdicts and
the NFE bookkeeping in closed form."""
import csv
import math
from pathlib import Path

import pytest

from diffprop.errors import DiffpropError
from diffprop.experiments import consistency as exp


def test_teacher_settings_spend_the_nfe():
    assert exp.teacher_settings(1) == [("ddim", 1), ("heun", 1)]
    assert exp.teacher_settings(4) == [("ddim", 4), ("heun", 2)]  # Heun: 2 steps - 1 = 3 evaluations


def test_verdict_reads_the_goal_and_the_teacher_comparison():
    base = {"sampler": "consistency", "seeds": 3, "nfe": 1}
    oracle = {**base, "model": "oracle", "sampler": "ddim", "mode_coverage": 0.02, "high_quality_fraction": 1.0}
    table = [{**base, "model": "cd", "steps": 1, "mode_coverage": 1.0, "high_quality_fraction": 0.7},
             {**base, "model": "cd", "steps": 2, "mode_coverage": 1.0, "high_quality_fraction": 0.92},
             {**oracle, "steps": 1}, {**oracle, "steps": 2},
             {**oracle, "sampler": "heun", "steps": 25, "nfe": 49, "mode_coverage": 1.0}]
    assert exp.verdict(table).startswith("yes") and "(goal: 100 % and >= 80 %: reached)" in exp.verdict(table)
    table[1]["high_quality_fraction"] = 0.85  # the goal, but not within 0.1 of the teacher's 49-NFE Heun
    assert exp.verdict(table).startswith("partly")
    table[1]["high_quality_fraction"], table[0]["mode_coverage"], table[1]["mode_coverage"] = 0.5, 0.0, 0.0
    assert exp.verdict(table).startswith("no") and "not reached" in exp.verdict(table)
    assert exp.verdict(table[2:]).startswith("undecided")


def test_tiny_run_writes_every_row(tmp_path):
    report = exp.run(tmp_path / "cm", "tiny", progress=False)
    with open(tmp_path / "cm" / "table.csv") as f:
        rows = list(csv.DictReader(f))
    got = {(r["model"], r["sampler"], r["steps"]) for r in rows}
    assert {(m, "consistency", str(k)) for m in ("cd", "ct") for k in (1, 2, 4)} <= got
    assert {("oracle", "ddim", "4"), ("oracle", "heun", "2"), ("oracle", "heun", "25")} <= got
    assert all(int(r["nfe"]) == int(r["steps"]) for r in rows if r["sampler"] in ("consistency", "ddim"))
    # the teacher's one-step DDIM at sigma = 80 lands on the data mean, (0, 0): one mode, all of it within 4 std
    ddim1 = next(r for r in rows if (r["model"], r["sampler"], r["steps"]) == ("oracle", "ddim", "1"))
    assert float(ddim1["high_quality_fraction"]) > 0.99 and float(ddim1["mode_coverage"]) < 0.05
    text = report.read_text()
    assert "samples.png" in text and (tmp_path / "cm" / "samples.png").stat().st_size > 10_000
    assert "**Reproduces?**" in text and "Song et al. (2023)" in text and "covers all 49 modes" in text


def test_verdict_fd_compares_with_the_teachers_ddim_and_multistep():
    row = lambda m, s, k, fd, nfe=None: {"model": m, "sampler": s, "steps": k, "nfe": nfe or k, "fd": fd}  # noqa: E731
    table = [row("cd", "consistency", 1, 30.0), row("cd", "consistency", 2, 12.0), row("teacher", "ddim", 1, 300.0),
             row("teacher", "ddim", 2, 200.0), row("teacher", "heun", 25, 10.0, 49)]
    assert exp.verdict_fd(table).startswith("yes")  # beats DDIM at 1 and 2 NFE, 12 <= 1.25 x 10
    table[1]["fd"] = 13.0
    assert exp.verdict_fd(table).startswith("partly") and "not within 1.25x" in exp.verdict_fd(table)
    table[0]["fd"] = table[1]["fd"] = 400.0
    assert exp.verdict_fd(table).startswith("no")
    assert exp.verdict_fd(table[:4]).startswith("undecided")


def test_digits_shares_reduce_s_ddpm():
    from diffprop.experiments import common, reduce

    assert exp.DIGITS["small"][0] is common.DIGITS_DDPM is reduce.scales("small", "digits")[0]
    assert reduce.scales("small", None)[0] is reduce.BASES["small"]


def test_tiny_digits_distils_the_trained_teacher(tmp_path):
    from diffprop.config import load_config

    report = exp.run(tmp_path / "cm", "tiny", progress=False, data="digits")
    with open(tmp_path / "cm" / "table.csv") as f:
        rows = list(csv.DictReader(f))
    got = {(r["model"], r["sampler"], r["steps"]): r for r in rows}
    assert {(m, "consistency", str(k)) for m in ("cd", "ct") for k in (1, 2, 4)} <= set(got)
    assert {("teacher", "ddim", "1"), ("teacher", "heun", "2"), ("teacher", "heun", "25")} <= set(got)
    assert all(math.isfinite(float(r["fd"])) for r in rows)
    # the teacher is a trained DDPM: 49 NFE of Heun beat one DDIM step from pure noise by far
    assert float(got["teacher", "heun", "25"]["fd"]) < 0.5 * float(got["teacher", "ddim", "1"]["fd"])
    cd = load_config(tmp_path / "cm" / "runs" / "cd-seed0" / "config.toml")
    assert Path(cd.cm.teacher) == tmp_path / "cm" / "runs" / "teacher-seed0" and cd.diffusion.sigma_data == 0.5
    text = report.read_text()
    assert "`digits`" in text and "samples-teacher-heun-25.png" in text
    # the digits report states the goal its verdict reads, not gmm-grid's
    assert "49 modes" not in text and "within 1.25x of the teacher's Heun" in text
    assert (tmp_path / "cm" / "samples-cd-consistency-2.png").stat().st_size > 1000


def test_data_without_a_teacher_is_refused_before_training(tmp_path):
    with pytest.raises(DiffpropError, match="swiss-roll is neither"):
        exp.run(tmp_path / "x", "tiny", progress=False, data="swiss-roll")
    assert not (tmp_path / "x").exists()
