"""``epdm-fig4`` (000 Sec. 6.4, Fig. 4): the number of bootstrapping steps L trades quality for time: as L grows
quality improves and levels off while the time per training step keeps growing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from . import common
from .epdm_table1 import EPDM
from .figures import plot_tradeoff
from .tables import by_variant, write_report, write_table

CLAIM = ("Li & van der Schaar (2024), Fig. 4: as the number of bootstrapping steps L grows (1, 3, 5, 7, 10), quality "
         "improves and levels off while the time per training step grows without bound")
LS = (1, 3, 5, 7, 10)
VARIANTS = {f"L={L}": EPDM + [f"epdm.L={L}"] for L in LS}
SCALES = common.SCALES
MINUTES = {"tiny": 0.4, "small": 45}  # measured: 41 min (2 shared cores)
TIMING = {"tiny": (2, 3), "small": (5, 10), "paper": (5, 20)}  # (rounds, steps per round) of the timing


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True, **options) -> Path:
    study = common.Study("epdm-fig4", out, scale, SCALES[scale], seeds, progress, **options)
    study.announce(VARIANTS)
    rows = study.train_and_score(VARIANTS)
    ms = study.time_per_step(VARIANTS, *TIMING[scale])
    for r in rows:
        r["ms_per_step (side by side)"] = ms[r["variant"]]
    cols = ["ms_per_step (side by side)", "ms_per_step", *study.columns]
    table = write_table(study.out, rows, cols, key="variant")
    q = by_variant(rows, cols)
    quality = [q[v][study.metric] for v in VARIANTS]
    plot_tradeoff(list(LS), quality, study.metric, [ms[v] for v in VARIANTS], study.out / "tradeoff.png")
    time_trend = float(stats.spearmanr(LS, [ms[v] for v in VARIANTS]).statistic)
    L_all = [int(r["variant"][2:]) for r in rows]
    res = stats.spearmanr(L_all, [r[study.metric] for r in rows])
    q_trend, q_p = float(res.statistic), float(res.pvalue)
    means = [float(np.mean(x)) for x in quality]
    gains = means[0] - means[1], means[-2] - means[-1]  # 1 -> 3 and 7 -> 10
    time_ok, quality_ok = time_trend >= 0.9, q_trend < 0 and q_p < 0.05
    word = "yes" if time_ok and quality_ok else "partly" if time_ok or quality_ok else "no"
    if study.seeds < 2 and not time_ok:
        word = "undecided"
    measured = (table + f"\n- time per step against L: Spearman {time_trend:.2f} ({ms['L=1']:.3g} ms at L = 1, "
                f"{ms['L=10']:.3g} ms at L = 10)\n- {study.metric} against L over all runs: Spearman {q_trend:.2f}, "
                f"p = {q_p:.3g}; gain from L = 1 to 3: {gains[0]:.3g}, from L = 7 to 10: {gains[1]:.3g}\n")
    return write_report(
        study.out, study.title, CLAIM,
        study.describe() + " EPDM as the text of Li & van der Schaar (2024) has it, except L. Time per step measured "
        "side by side (each round times every L in turn), besides each run's own wall clock.", measured,
        {"tradeoff.png": "quality and time vs L"},
        f"{word}: time per step {'grows' if time_ok else 'does not grow steadily'} with L; quality "
        f"{'improves' if quality_ok else 'does not improve significantly'} with L.")
