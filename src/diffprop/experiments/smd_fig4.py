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
from .tables import by_variant, write_report, write_table

CLAIM = ("002 Fig. 4: with more eta draws per training example (n_eta = 1..5) the time per training step grows "
         "linearly and the FID falls monotonically (6.5 % lower at 5 draws)")
N_ETA = {"tiny": (1, 2), "small": (1, 2, 4), "paper": (1, 2, 3, 4, 5)}
VARIANTS = {f"n_eta={n}": SMD + [f"smd.n_eta={n}"] for n in N_ETA["paper"]}  # (the paper's, for its estimate)
# small: 2 seeds, not 3: n_eta = 4 alone costs 4 x a table1 run
SCALES = dict(TABLE1_SCALES, small=replace(TABLE1_SCALES["small"], seeds=2))
MINUTES = {"tiny": 0.4, "small": 80}
TIMING = {"tiny": (2, 2), "small": (3, 5), "paper": (5, 20)}  # (rounds, steps per round) of the timing


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True, **options) -> Path:
    study = common.Study("smd-fig4", out, scale, SCALES[scale], seeds, progress, **options)
    variants = {f"n_eta={n}": SMD + [f"smd.n_eta={n}"] for n in N_ETA[scale]}
    study.announce(variants)
    rows = study.train_and_score(variants)
    ms = study.time_per_step(variants, *TIMING[scale])
    for r in rows:
        r["n_eta"] = int(r["variant"].split("=")[1])
        r["ms_per_step (side by side)"] = ms[r["variant"]]
    cols = ["ms_per_step (side by side)", "ms_per_step", *study.columns]
    table = write_table(study.out, rows, cols)
    q = by_variant(rows, cols)
    n_eta = list(N_ETA[scale])
    quality = [q[v][study.metric] for v in variants]
    plot_tradeoff(n_eta, quality, study.metric, [ms[v] for v in variants], study.out / "tradeoff.png",
                  xlabel="eta draws per example (n_eta)")
    fit = stats.linregress(n_eta, [ms[v] for v in variants])
    res = stats.spearmanr([r["n_eta"] for r in rows], [r[study.metric] for r in rows])
    means = [float(np.mean(x)) for x in quality]
    rel = 1 - means[-1] / means[0]
    monotone = all(b < a for a, b in zip(means, means[1:]))
    time_ok = fit.rvalue ** 2 >= 0.95 and fit.slope > 0
    quality_ok = monotone and res.statistic < 0 and res.pvalue < 0.05
    word = "yes" if time_ok and quality_ok else "partly" if time_ok or quality_ok else "no"
    if study.seeds < 2:  # no test of the quality trend
        word = "undecided"
    measured = (table + f"\n- time per step against n_eta: linear fit {fit.intercept:.3g} + {fit.slope:.3g} n_eta ms, "
                f"R^2 = {fit.rvalue ** 2:.3f}\n- {study.metric} against n_eta over all runs: Spearman "
                f"{res.statistic:.2f}, p = {res.pvalue:.3g}; means {', '.join(f'{m:.4g}' for m in means)} "
                f"({'monotone' if monotone else 'not monotone'}); {100 * rel:+.1f} % from n_eta = {n_eta[0]} to "
                f"{n_eta[-1]} (positive = lower; 002: 6.5 % at 5)\n")
    return write_report(
        study.out, study.title, CLAIM,
        study.describe() + f" DDPM + SMD (official design) with n_eta in {n_eta}: each example's loss averaged over "
        "n_eta draws of eta (002 Alg. 1). Time per step measured side by side (each round times every n_eta in turn).",
        measured, {"tradeoff.png": "quality and time vs n_eta"},
        f"{word}: time per step {'grows' if time_ok else 'does not grow'} linearly with n_eta; {study.metric} "
        f"{'falls' if quality_ok else 'does not fall'} monotonically and significantly ({100 * rel:+.1f} % at "
        f"n_eta = {n_eta[-1]}).")
