"""Tables and reports of the reproductions: mean ± std over seeds, Welch t-tests, ``report.md``.

Every reproduction writes ``table.csv`` (per variant: each column's mean and std, and the seeds), ``table.md``
(the same as ``mean ± std``) and ``report.md``: the paper's claim, the setup, what we measured, the figures and a
``**Reproduces?**`` line whose first word is yes, no, partly or undecided (``diffprop report`` reads it).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy import stats

VERDICTS = ("yes", "no", "partly", "undecided")


def by_variant(rows: list[dict], columns) -> dict[str, dict[str, np.ndarray]]:
    """``{variant: {column: values over seeds}}`` in the rows' order."""
    out: dict = {}
    for r in rows:
        per = out.setdefault(r["variant"], {c: [] for c in columns})
        for c in columns:
            per[c].append(r[c])
    return {v: {c: np.asarray(x, dtype=float) for c, x in per.items()} for v, per in out.items()}


def mean_std(v: np.ndarray) -> str:
    """``mean ± std`` (sample std, ddof = 1) of the finite values, or the one value; ``(k of n)`` when some are
    undefined (NaN), ``n/a`` when all are."""
    f = v[np.isfinite(v)]
    if not len(f):
        return "n/a"
    text = f"{np.mean(f):.4g} ± {np.std(f, ddof=1):.2g}" if len(f) > 1 else f"{f[0]:.4g}"
    return text + (f" ({len(f)} of {len(v)})" if len(f) < len(v) else "")


def write_table(out: Path, rows: list[dict], columns, key: str = "variant") -> str:
    """``table.csv`` and ``table.md`` of ``rows`` grouped by ``key``; returns the Markdown."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    with open(Path(out) / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([key, *(x for c in columns for x in (c, f"{c}_std")), "seeds"])
        for name, rs in groups.items():
            vals = [np.asarray([r[c] for r in rs], dtype=float) for c in columns]
            w.writerow([name, *(x for v in vals for x in (np.mean(v), np.std(v, ddof=1) if len(v) > 1 else "")),
                        " ".join(str(r["seed"]) for r in rs)])
    md = (f"| {key} | seeds | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns) + "\n" +
          "".join(f"| {name} | {len(rs)} | " + " | ".join(mean_std(np.asarray([r[c] for r in rs], dtype=float))
                                                           for c in columns) + " |\n" for name, rs in groups.items()))
    (Path(out) / "table.md").write_text(md)
    return md


def welch(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value; NaN with fewer than two values a side or no spread at all."""
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare(groups: dict[str, dict[str, np.ndarray]], metric: str, ours: str, others, lower_better: bool = True,
            alpha: float = 0.01) -> list[dict]:
    """``ours`` against each of ``others`` on ``metric``: means, Welch p, whether ours is better and significantly."""
    out = []
    for v in others:
        a, b = groups[ours][metric], groups[v][metric]
        p = welch(a, b)
        better = bool(np.mean(a) < np.mean(b)) if lower_better else bool(np.mean(a) > np.mean(b))
        out.append({"ours": ours, "other": v, "mean_ours": float(np.mean(a)), "mean_other": float(np.mean(b)),
                    "p": p, "better": better, "significant": better and p < alpha})
    return out


def standing(t: dict, alpha: float) -> str:
    """One :func:`compare` result as a comparative: ``better than`` or ``worse than`` (Welch p < ``alpha``), else
    ``no different from``."""
    if t["p"] < alpha:
        return "better than" if t["better"] else "worse than"
    return "no different from"


def p_text(p: float) -> str:
    return f"Welch t-test p = {p:.3g}" if math.isfinite(p) else "no t-test (one seed)"


def describe_tests(tests: list[dict], metric: str) -> str:
    return "".join(f"- {t['ours']} vs {t['other']}, {metric}: {t['mean_ours']:.4g} vs {t['mean_other']:.4g}, "
                   f"{p_text(t['p'])}\n" for t in tests)


def write_report(out: Path, title: str, claim: str, setup: str, measured: str, figures: dict[str, str],
                 verdict: str, notes: str = "") -> Path:
    """``report.md``: claim, setup, measured (tables, tests), figures, ``**Reproduces?** verdict``, notes."""
    assert verdict.split()[0].strip(":;,.") in VERDICTS, verdict
    figs = "".join(f"![{caption}]({path})\n\n" for path, caption in figures.items())
    path = Path(out) / "report.md"
    path.write_text(f"# {title}\n\n**Claim.** {claim}\n\n**Setup.** {setup}\n\n**Measured.**\n\n{measured}\n"
                    f"{figs}**Reproduces?** {verdict}\n" + (f"\n{notes}\n" if notes else ""))
    return path
