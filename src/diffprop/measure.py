"""``diffprop measure``: run the propagation diagnostics on a model and write CSV, plot and summary."""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from .diagnostics.propagation import Propagation, propagation
from .plots import plot_propagation

CSV_COLUMNS = ("t", "kernel", "cumulative", "modular", "amplification", "bootstrapped", "floor", "p_value",
               "delta", "eps_norm_chain", "eps_norm_forward")
KL_TOLERANCE = 0.02  # nats: the kNN cumulative-KL estimator's spread at N = 1000-5000 (tests/test_exact_errors.py)


def write_csv(result: Propagation, path: Path) -> None:
    extra = [k for k in result.rows[0] if k not in CSV_COLUMNS] if result.rows else []
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS) + extra)
        w.writeheader()
        w.writerows(result.rows)


def summarize(result: Propagation) -> dict:
    """Per kernel: the curve's ends, how much it grows from t = T to t = 1, and where it leaves the floor."""
    out = {}
    for k in result.kernels:
        t, cumu = result.column(k, "cumulative")
        _, floor = result.column(k, "floor")
        _, mu = result.column(k, "amplification")
        above = cumu > floor
        checks = {}
        if "cumulative_kl" in result.rows[0]:
            _, e = result.column(k, "cumulative_kl")
            _, e_floor = result.column(k, "kl_floor")
            _, slack = result.column(k, "propagation_slack")
            e = e - e_floor
            checks = {"theorem_3_1_holds": int((slack >= -KL_TOLERANCE).sum()),  # 000 Thm 3.1, up to the estimator
                      "prop_4_1_lower_holds": int((e >= cumu / 4 - KL_TOLERANCE).sum()),  # 000 Prop. 4.1
                      "prop_4_1_upper_holds": int((e <= cumu + KL_TOLERANCE).sum()),
                      "kl_tolerance": KL_TOLERANCE}
        out[k] = {"cumulative_t1": float(cumu[0]), "cumulative_tT": float(cumu[-1]), **checks,
                  "floor_t1": float(floor[0]), "points_above_floor": int(above.sum()), "points": len(t),
                  "largest_t_above_floor": int(t[above].max()) if above.any() else None,
                  "median_amplification": float(np.nanmedian(mu)) if np.isfinite(mu).any() else None}
    return out


def describe_checks(v: dict) -> str | None:
    """One kernel's exact-KL check counts from :func:`summarize` as a sentence (None without exact errors)."""
    if "theorem_3_1_holds" not in v:
        return None
    return (f"Thm 3.1 (E_t^cumu >= E_t+1^cumu + E_t^mod, within {v['kl_tolerance']} nats) held at "
            f"{v['theorem_3_1_holds']}/{v['points']} grid points; Prop. 4.1 lower bound (D/4 <= E) at "
            f"{v['prop_4_1_lower_holds']}/{v['points']}, upper bound (E <= D) at {v['prop_4_1_upper_holds']}/{v['points']}")


def run_measure(denoiser, data, out: Path, meta: dict, *, reference=None, progress: bool = True,
                **options) -> dict:
    """Measure ``denoiser`` (and ``reference``, e.g. the exact oracle, with the same settings) into ``out``."""
    t0 = time.perf_counter()
    result = propagation(denoiser, data, progress=progress, **options)
    seconds = time.perf_counter() - t0
    ref = None
    if reference is not None:
        ref = propagation(reference, data, progress=progress, **{**options, "oracle": None})
    return write_measure(result, out, {**meta, "seconds": round(seconds, 1)}, reference=ref, settings=options)


def write_measure(result: Propagation, out: Path, meta: dict, *, reference: Propagation | None = None,
                  settings: dict | None = None) -> dict:
    """Write ``propagation.csv``, ``reference.csv``, ``propagation.png`` and ``summary.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result, out / "propagation.csv")
    if reference is not None:
        write_csv(reference, out / "reference.csv")
    plot_propagation(result, out / "propagation.png", reference=reference, title=meta.get("model", ""))
    clean = {k: v for k, v in (settings or {}).items() if k not in ("oracle", "progress")}
    summary = {**meta, "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in clean.items()},
               "kernels": summarize(result), "reference": summarize(reference) if reference is not None else None}
    text = json.dumps(summary, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    (out / "summary.json").write_text(text)
    return summary
