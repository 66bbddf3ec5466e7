"""Reproductions of the papers' experiments, run by ``diffprop reproduce NAME``.

Each experiment is a module with a one-line ``CLAIM``, its ``SCALES``, estimated ``MINUTES`` per CPU scale (2 CPU
cores), optionally ``VARIANTS``, ``CURVES`` (propagation curves per run) and ``PASSES`` (T-step sampling passes per
model) for the paper-scale estimate, and ``run(out: Path, scale: str, seeds: int | None, progress: bool,
**options) -> Path`` (the report it wrote); ``options`` are ``data``, ``inception_weights`` and ``force`` where it
accepts them. The shared harness is :mod:`.common`.
"""
from __future__ import annotations

from ..errors import DiffpropError
from . import (consistency, convergence, epdm_fig2, epdm_fig3, epdm_fig4, epdm_quick, epdm_table1, epdm_table2,
               propagation_theorem, reduce, samplers, score_matching, smd_fig2, smd_fig3, smd_fig4, smd_grid,
               smd_mixture, smd_table1)

EXPERIMENTS = {"epdm-fig2": epdm_fig2, "epdm-fig3": epdm_fig3, "epdm-table1": epdm_table1, "epdm-table2": epdm_table2,
               "epdm-fig4": epdm_fig4, "propagation-theorem": propagation_theorem, "epdm-quick": epdm_quick,
               "smd-grid": smd_grid, "smd-fig2": smd_fig2, "smd-table1": smd_table1, "smd-fig3": smd_fig3,
               "smd-fig4": smd_fig4, "samplers": samplers, "convergence": convergence,
               "consistency": consistency,
               "score-matching": score_matching, "smd-mixture": smd_mixture, "reduce": reduce}


def get_experiment(name: str):
    if name not in EXPERIMENTS:
        raise DiffpropError(f"unknown experiment {name!r}; allowed: {', '.join(EXPERIMENTS)} (see --list)")
    return EXPERIMENTS[name]


def _times(mod) -> str:
    """Estimated time per scale: minutes on 2 CPU cores, V100-hours at paper scale (:mod:`.gpu`)."""
    cpu = ", ".join(f"{s} ~{mod.MINUTES[s]:g} min" for s in mod.SCALES if s in mod.MINUTES)
    out = f"{cpu} (2 CPU cores)" if cpu else ""
    if "paper" in mod.SCALES:
        from .common import paper_hours

        hours = paper_hours(mod.SCALES["paper"], mod.VARIANTS, getattr(mod, "CURVES", 0), getattr(mod, "PASSES", 1)) \
            if hasattr(mod, "VARIANTS") else None
        out += "; paper " + (f"~{hours:,.0f} V100-hours on CIFAR-10" if hours else "on GPUs")
    return out


def listing() -> str:
    return "\n".join(f"{name:<20} {mod.CLAIM}\n{'':<20} scales: {_times(mod)}" for name, mod in EXPERIMENTS.items())
