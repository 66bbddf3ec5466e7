"""``epdm-fig2`` (000 Sec. 4, Fig. 2): the cumulative error ``D_t^cumu`` of a vanilla DDPM grows as sampling
proceeds (t falls), under three kernels: errors propagate along the chain."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from . import common
from .curves import curve_study
from .tables import write_report

CLAIM = ("Li & van der Schaar (2024), Fig. 2: the MMD cumulative error D_t^cumu of a standard DDPM rapidly grows "
         "as t decreases, under each of three kernels (error propagation)")
VARIANTS = {"ddpm": []}
SCALES = dict(common.SCALES, paper=replace(common.SCALES["paper"], seeds=1))  # 000 shows one curve
MINUTES = {"tiny": 0.2, "small": 5}  # measured: 2.3-5 min (2 shared cores)
CURVES = 1  # propagation curves per run
RISING = -0.6  # Spearman correlation of D_t^cumu with t at or below which a curve counts as rising


def rises(crows: list[dict], variant: str, kernel: str) -> tuple[bool, float, float, float]:
    """Whether ``variant``'s curve under ``kernel`` rises (mean over seeds): trend <= RISING and D_1 above the
    noise floor; returns (rises, mean trend, mean D_1^cumu, mean floor at t = 1)."""
    sel = [r for r in crows if r["variant"] == variant and r["kernel"] == kernel]
    tr, d1, floor = (float(np.mean([r[c] for r in sel])) for c in ("trend", "t=1", "floor(t=1)"))
    return tr <= RISING and d1 > floor, tr, d1, floor


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True, **options) -> Path:
    study = common.Study("epdm-fig2", out, scale, SCALES[scale], seeds, progress, **options)
    c = curve_study(study, VARIANTS, "vanilla DDPM: cumulative error along the chain")
    checks = {k: rises(c.rows, "ddpm", k) for k in c.kernels}
    lines = "".join(f"- {k}: trend (Spearman of D_t with t) {tr:.2f}, D_1^cumu {d1:.3g} vs noise floor {fl:.2g}: "
                    f"{'rises' if ok else 'does not rise'}\n" for k, (ok, tr, d1, fl) in checks.items())
    n = sum(ok for ok, *_ in checks.values())
    word = "yes" if n == len(c.kernels) else "partly" if n else "no"
    return write_report(
        study.out, study.title, CLAIM, f"{study.describe(scored=False)} {c.setup} A curve rises when its "
        f"trend <= {RISING} and D_1^cumu is above the floor.", c.table + "\n" + lines, c.figures,
        f"{word}: the vanilla curve rises under {n} of {len(c.kernels)} kernels.")
