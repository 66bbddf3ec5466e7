"""Error-propagation curves of trained variants (000 Sec. 4 and 6.2, Fig. 2-3): per kernel the cumulative error
``D_t^cumu`` (MMD^2, 000 Eq. 12-13) against t, mean ± std over seeds, beside the exact oracle's where the data are a
Gaussian mixture; a table of the curves and their trend."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..plots import plot_cumulative
from .tables import write_table

KERNELS = ("rbf", "laplace", "imq")  # 000 Sec. 4: three kernels; median-distance bandwidth


def mode_bandwidth(study) -> float | None:
    """Twice the components' std on Gaussian-mixture data (None otherwise): a bandwidth that sees errors inside a
    mode, to which the median distance (about the spread of the modes) is blind."""
    return None if study.dataset.mixture is None else 2 * float(study.dataset.mixture.stds.max())


def kernels_for(study) -> tuple[str, ...]:
    """000's three kernels, and on Gaussian-mixture data the same at :func:`mode_bandwidth`."""
    h = mode_bandwidth(study)
    return KERNELS if h is None else KERNELS + tuple(f"{k}@{h:g}" for k in KERNELS)


def trend(t: list, d: list) -> float:
    """Spearman correlation of ``D_t^cumu`` with t: near -1 when the error grows as sampling proceeds (t falls)."""
    return float(stats.spearmanr(t, d).statistic) if np.ptp(d) > 0 else 0.0


def curve_rows(rows: list[dict]) -> list[dict]:
    """One row per (variant, kernel, seed): ``D_t^cumu`` at each t, the floor at t = 1, the trend and the median
    amplification factor mu_t (000 Eq. 6, where defined)."""
    out = []
    for r in rows:
        for k, c in r["curves"].items():
            mu = np.asarray(c["amplification"], dtype=float)
            out.append({"curve": f"{r['variant']} / {k}", "variant": r["variant"], "kernel": k, "seed": r["seed"],
                        **{f"t={t}": d for t, d in zip(c["t"], c["cumulative"])}, "floor(t=1)": c["floor"][0],
                        "trend": trend(c["t"], c["cumulative"]),
                        "median mu_t": float(np.nanmedian(mu)) if np.isfinite(mu).any() else float("nan")})
    return out


@dataclass
class Curves:
    kernels: tuple[str, ...]
    rows: list[dict]  # :func:`curve_rows`
    table: str  # Markdown
    figures: dict[str, str]  # file -> caption
    setup: str  # a sentence for the report


def curve_study(study, variants: dict[str, list[str]], title: str) -> Curves:
    """Train ``variants`` x seeds, measure their curves under :func:`kernels_for` (the exact oracle's beside them
    on Gaussian mixtures) and write ``table.csv`` / ``table.md`` and the figures."""
    study.announce(variants, curves=1)
    kernels = kernels_for(study)
    rows = study.train_and_score(variants, kernels=kernels, score=False)
    crows = curve_rows(rows)
    ts = rows[0]["curves"][kernels[0]]["t"]
    table = write_table(study.out, crows, [f"t={t}" for t in ts] + ["floor(t=1)", "trend", "median mu_t"], key="curve")
    figures = plot_curves(study, rows, reference_curve(study, rows, kernels), title)
    setup = (f"Curves: kernels {', '.join(kernels)} (@H: bandwidth H, else the median distance), N = M = "
             f"{study.scale.num}, permutation noise floor (95 %), grid {study.grid(study.scale.T)}.")
    return Curves(kernels, crows, table, figures, setup)


def plot_curves(study, rows: list[dict], reference=None, title: str = "") -> dict[str, str]:
    """Every variant's mean curve (± std over seeds) per kernel, the reference dashed: ``propagation.png`` for the
    median-bandwidth kernels, ``propagation-h{H}.png`` for those at a fixed bandwidth H. Returns {file: caption}."""
    curves: dict = {}
    for r in rows:
        for k, c in r["curves"].items():
            curves.setdefault(k.partition("@")[2], {}).setdefault(r["variant"], {}).setdefault(k, []).append(
                c["cumulative"])
    ts = rows[0]["curves"][next(iter(rows[0]["curves"]))]["t"]
    names = {}
    for h, per_variant in curves.items():
        name = f"propagation-h{h}.png" if h else "propagation.png"
        names[name] = f"cumulative error, bandwidth {h}" if h else "cumulative error, median bandwidth"
        plot_cumulative({v: {k: (ts, np.mean(d, 0), np.std(d, 0, ddof=1) if len(d) > 1 else None)
                             for k, d in per.items()} for v, per in per_variant.items()},
                        study.out / name, reference=reference, title=title)
    return names


def reference_curve(study, rows: list[dict], kernels):
    """The exact oracle's curve with the same settings (Gaussian mixtures), else None."""
    from ..runs import load_run

    oracle = study.oracle(load_run(rows[0]["dir"]).denoiser.schedule)
    return None if oracle is None else study.curves(oracle, kernels, seed=0)
