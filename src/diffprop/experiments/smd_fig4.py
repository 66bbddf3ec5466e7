"""``smd-fig4`` (002 Sec. 5.4, Fig. 4): more eta draws per training example (``smd.n_eta``, 002 Alg. 1) cost time
linearly and lower the FID monotonically (6.5 % at 5 draws, DDPM + SMD on LSUN-Conference 64).

Same data, U-Net, budget and metric as ``smd-table1`` (its ``ddpm+smd`` runs are the ``n_eta = 1`` ones, shared
when side by side); the time per step of every ``n_eta`` is measured side by side.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

from . import common
from .figures import plot_tradeoff
from .smd_grid import SMD
from .smd_table1 import SCALES as TABLE1_SCALES
from .tables import by_variant, compare, p_text, write_report, write_table

CLAIM = ("Li, van Breugel & van der Schaar (2024), Fig. 4: with more eta draws per training example (n_eta = 1..5) "
         "the time per training step grows linearly and the FID falls monotonically (6.5 % lower at 5 draws)")
N_ETA = {"tiny": (1, 2), "small": (1, 2), "paper": (1, 2, 3, 4, 5)}  # trained and scored
TIMED = {"tiny": (1, 2, 3), "small": (1, 2, 3, 4, 5), "paper": (1, 2, 3, 4, 5)}  # timed side by side (cheap)
VARIANTS = {f"n_eta={n}": SMD + [f"smd.n_eta={n}"] for n in N_ETA["paper"]}  # (the paper's, for its estimate)
# small: n_eta = 2 and 2 seeds only (a run with n_eta = k costs k table1 runs; 2 CPU cores)
SCALES = dict(TABLE1_SCALES, small=replace(TABLE1_SCALES["small"], seeds=2))
MINUTES = {"tiny": 0.4, "small": 50}  # measured: 20 min + 31 for its n_eta = 2 runs (with smd-table1 done)
TIMING = {"tiny": (2, 2), "small": (3, 5), "paper": (5, 20)}  # (rounds, steps per round) of the timing


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True, **options) -> Path:
    study = common.Study("smd-fig4", out, scale, SCALES[scale], seeds, progress, **options)
    variant = {n: f"n_eta={n}" for n in TIMED[scale]}
    variants = {variant[n]: SMD + [f"smd.n_eta={n}"] for n in N_ETA[scale]}
    study.announce(variants)
    rows = study.train_and_score(variants)
    timed = list(TIMED[scale])
    ms = study.time_per_step({variant[n]: SMD + [f"smd.n_eta={n}"] for n in timed}, *TIMING[scale])
    for r in rows:
        r["n_eta"] = int(r["variant"].split("=")[1])
        r["ms_per_step (side by side)"] = ms[r["variant"]]
    cols = ["ms_per_step (side by side)", "ms_per_step", *study.columns]
    table = write_table(study.out, rows, cols)
    q = by_variant(rows, cols)
    n_eta = list(N_ETA[scale])
    quality = [q[v][study.metric] for v in variants]
    plot_tradeoff(n_eta, quality, study.metric, [ms[variant[n]] for n in timed], study.out / "tradeoff.png",
                  xlabel="eta draws per example (n_eta)", time_L=timed)
    fit = stats.linregress(timed, [ms[variant[n]] for n in timed])
    res = stats.spearmanr([r["n_eta"] for r in rows], [r[study.metric] for r in rows])
    test = compare(q, study.metric, variant[n_eta[-1]], [variant[n_eta[0]]], alpha=0.05)[0]
    means = [float(np.mean(x)) for x in quality]
    rel = 1 - means[-1] / means[0]
    monotone = all(b < a for a, b in zip(means, means[1:]))
    time_ok = fit.rvalue ** 2 >= 0.95 and fit.slope > 0
    quality_ok = monotone and test["significant"]
    word = "yes" if time_ok and quality_ok else "partly" if time_ok or quality_ok else "no"
    if study.seeds < 2:  # no test of the quality trend
        word = "undecided"
    measured = (table + f"\n- time per step (side by side) for n_eta = {timed}: "
                f"{', '.join(f'{ms[variant[n]]:.4g}' for n in timed)} ms; linear fit {fit.intercept:.3g} + "
                f"{fit.slope:.3g} n_eta ms, R^2 = {fit.rvalue ** 2:.3f}\n- {study.metric} against n_eta over all runs: "
                f"Spearman {res.statistic:.2f}, p = {res.pvalue:.3g}; means {', '.join(f'{m:.4g}' for m in means)} "
                f"({'monotone' if monotone else 'not monotone'}); {100 * rel:+.1f} % from n_eta = {n_eta[0]} to "
                f"{n_eta[-1]} (positive = lower; the paper: 6.5 % at 5), {p_text(test['p'])}\n")
    return write_report(
        study.out, study.title, CLAIM,
        study.describe() + f" DDPM + SMD (official design) trained with n_eta in {n_eta}: each example's loss averaged "
        f"over n_eta draws of eta (Li, van Breugel & van der Schaar 2024, Alg. 1). Time per step measured side by side "
        f"for n_eta in {timed} (each round times every n_eta in turn).",
        measured, {"tradeoff.png": "quality and time vs n_eta"},
        f"{word}: time per step {'grows' if time_ok else 'does not grow'} linearly with n_eta; {study.metric} "
        f"{'falls' if quality_ok else 'does not fall'} monotonically and significantly ({100 * rel:+.1f} % at "
        f"n_eta = {n_eta[-1]}, {p_text(test['p'])}).")
