"""Error curves along any sampler's chain (issue 15): the chain recorded at the times it visits against q_t there.

With the exact oracle every curve sits at its permutation noise floor (000 Prop. A.1) whatever the sampler and the
process; with eps-bias 0.1 the cumulative curve leaves it; the modular error of a step is that step applied to forward
samples of q_t; the CLI measures any sampler end to end and refuses bad input in one line."""
import csv
import json

import numpy as np
import pytest
import torch

from diffprop.cli import main
from diffprop.diagnostics import propagation as prop
from diffprop.mixtures import grid_mixture, ring_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.processes import VESDE
from diffprop.samplers import ddim_step, sampler_times
from diffprop.samplers.driver import as_times
from diffprop.schedules import NoiseSchedule

GRID, SCHED = grid_mixture(), NoiseSchedule.from_config("linear", 1000)
DATA = GRID.sample(4000, torch.Generator().manual_seed(0)).float()
OPTS = dict(num=300, kernels=("rbf",), num_permutations=50, progress=False, seed=1)
CHAINS = [("ddim", None), ("heun", None), ("em", 100)]  # em: 100 of the discrete chain's 1000 steps


def _curve(res):
    t, cumu = res.column("rbf", "cumulative")
    return t, cumu, res.column("rbf", "floor")[1], res.column("rbf", "modular")[1]


@pytest.mark.parametrize("sampler,steps", CHAINS)
def test_exact_oracle_sits_at_the_floor_and_a_biased_one_leaves_it(sampler, steps):
    res = prop.propagation(OracleDenoiser(GRID, SCHED), DATA, sampler=sampler, steps=steps, **OPTS)
    t, cumu, floor, mod = _curve(res)
    visited = as_times(sampler_times(OracleDenoiser(GRID, SCHED), sampler, steps))
    assert set(t.tolist()) <= set(visited[:-1]) and len(t) >= 12  # rows at the times the chain steps from
    assert (cumu <= 3 * floor).all() and (cumu > floor).sum() <= 3, (cumu, floor)  # few above: the floor is a q95
    assert (mod <= 3 * floor).all()
    biased = prop.propagation(OracleDenoiser(GRID, SCHED, eps_bias=0.1), DATA, sampler=sampler, steps=steps, **OPTS)
    t, cumu, floor, _ = _curve(biased)
    assert (cumu > 3 * floor).sum() >= len(t) / 2 and (cumu / floor).max() > 5  # orders above the exact oracle's


def test_continuous_process_and_exact_kl_of_a_non_gaussian_chain():
    """The oracle under the VE SDE (float times in (0, 1]): heun at the floor; the exact cumulative KL is measured
    at the end of the chain, the modular KL is NaN with the reason in meta."""
    ring = ring_mixture()
    data = ring.sample(2000, torch.Generator().manual_seed(0)).float()
    ve = VESDE(sigma_max=float(torch.cdist(data[:500], data[:500]).max()))
    res = prop.propagation(OracleDenoiser(ring, ve), data, sampler="heun", steps=10, oracle=OracleDenoiser(ring, ve),
                           **{**OPTS, "num": 200})
    t, cumu, floor, _ = _curve(res)
    assert len(t) == 10 and t.dtype == float and 0 < t.min() < 1e-3 and t.max() == 1.0
    assert (cumu <= 3 * floor).all()
    row = res.rows[0]  # the last step, into the data
    assert row["t_next"] == 0 and abs(row["cumulative_kl"] - row["kl_floor"]) < 4 * row["cumulative_kl_se"] + 0.1
    assert np.isnan(row["modular_kl"]) and "point mass" in res.meta["modular_kl"]
    assert res.meta["sampler"] == "heun" and res.meta["nfe"] == 19  # Karras et al.'s 2 steps - 1 evaluations


def test_modular_error_is_the_step_applied_to_forward_samples(monkeypatch):
    """Every one-step call of the measurement takes the chain's own step from t to the next visited time, on
    forward samples of q_t; the oracle's DDPM step (full chain) has its modular error at the floor."""
    calls = []
    inner = prop._model_steps

    def spy(denoiser, x, times, step, generator):
        out = inner(denoiser, x, times, step, generator)
        calls.append((x.clone(), list(times), step, out))
        return out

    monkeypatch.setattr(prop, "_model_steps", spy)
    oracle = OracleDenoiser(GRID, SCHED)
    grid_t = [1, 2, 50, 1000]
    res = prop.propagation(oracle, DATA, grid=grid_t, **{**OPTS, "num_permutations": 100})
    _, _, floor, mod = _curve(res)
    assert (mod <= 3 * floor).all()
    one = calls[0::2]  # per grid time: the modular step, then the bootstrapped chain
    assert sorted(c[1][0] for c in one) == grid_t and all(c[1][1] == c[1][0] - 1 for c in one)
    for x, (t, _), _, _ in one:  # x ~ q_t: mean 0, per-coordinate variance abar_t Var(x_0) + 1 - abar_t
        abar = float(SCHED.alpha_bars[t])
        var = abar * float(DATA.double().var(0).mean()) + 1 - abar
        assert abs(float(x.double().var(0).mean()) / var - 1) < 0.2
    calls.clear()
    prop.propagation(oracle, DATA, sampler="ddim", steps=10, grid=None, **OPTS)
    times = as_times(sampler_times(oracle, "ddim", 10))
    for x, ts, step, out in calls[0::2]:
        i = times.index(ts[0])
        assert ts[1] == times[i + 1] and step.func is ddim_step  # the sampler's own step, to its next time
        assert torch.equal(out, ddim_step(oracle, x, ts[0], ts[1]))  # deterministic: the same move exactly


def test_measure_cli_along_a_ddim_chain(tmp_path, capsys):
    out = tmp_path / "m"
    code = main(["measure", "--oracle", "gmm-ring", "--sampler", "ddim", "--steps", "10", "--num", "200",
                 "--kernels", "rbf", "--permutations", "20", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "propagation.csv").open()))
    oracle = OracleDenoiser(ring_mixture(), SCHED)
    visited = as_times(sampler_times(oracle, "ddim", 10))
    assert [float(r["t"]) for r in rows] == pytest.approx(sorted(visited[:-1]))  # every step of the chain
    assert [float(r["t_next"]) for r in rows] == pytest.approx(sorted(visited[1:]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chain"]["sampler"] == "ddim" and summary["chain"]["steps"] == 10
    assert summary["settings"]["sampler"] == "ddim" and "point mass" in summary["exact"]["reason"]
    assert rows[0]["modular_kl"] == "nan" and float(rows[0]["cumulative_kl_se"]) > 0
    assert (out / "propagation.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv,message", [
    (["--sampler", "nonsense"], "argument --sampler: invalid choice: 'nonsense'"),
    (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["--sampler", "ddim", "--steps", "10", "--grid", "5,7"], "[5, 7] are not times this chain steps from"),
    (["--sampler", "ddim", "--spacing", "cubic"], "time grid 'cubic' does not apply to the discrete process"),
    (["--sampler", "ddpm", "--steps", "5000"], "steps must be in 1..1000"),
])
def test_bad_sampler_input_gives_one_line_and_exit_2(argv, message, tmp_path, capsys):
    try:
        code = main(["measure", "--oracle", "gmm-grid", "--out", str(tmp_path / "m"), "--quiet", *argv])
        err = capsys.readouterr().err
    except SystemExit as e:  # argparse's usage errors leave through exit()
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and err.startswith("diffprop: error:") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "m").exists()  # refused before any work
