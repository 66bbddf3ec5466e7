"""Reproductions of the papers' experiments, run by ``diffprop reproduce NAME``.

Each experiment is a function ``run(out: Path, scale: str, seeds: int, progress: bool) -> Path`` (the
report it wrote) with a one-line ``claim`` and estimated minutes per scale on 2 CPU cores.
"""
from __future__ import annotations

from ..errors import DiffpropError
from . import epdm_quick

EXPERIMENTS = {"epdm-quick": epdm_quick}


def get_experiment(name: str):
    if name not in EXPERIMENTS:
        raise DiffpropError(f"unknown experiment {name!r}; allowed: {', '.join(EXPERIMENTS)} (see --list)")
    return EXPERIMENTS[name]


def listing() -> str:
    lines = []
    for name, mod in EXPERIMENTS.items():
        est = ", ".join(f"{s}: ~{m} min" for s, m in mod.MINUTES.items())
        lines.append(f"{name:<14} {mod.CLAIM}\n{'':<14} scales: {', '.join(mod.SCALES)} ({est}, 2 CPU cores)")
    return "\n".join(lines)
