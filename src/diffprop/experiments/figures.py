"""Figures of the reproductions that :mod:`diffprop.plots` has no general form for."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plots import _save, plt


def plot_tradeoff(L: list[int], quality: list[np.ndarray], metric: str, ms: list[float], out: Path,
                  xlabel: str = "L (bootstrapping steps)", time_L: list[int] | None = None) -> Path:
    """000 Fig. 4 (and 002 Fig. 4): quality (mean ± std over seeds) and time per training step against L (or
    another cost knob, ``xlabel``); ``time_L``: the knob's values of ``ms`` when they differ from ``L``."""
    fig, ax = plt.subplots(1, 2, figsize=(8, 3.2))
    ax[0].errorbar(L, [np.mean(q) for q in quality], yerr=[np.std(q, ddof=1) if len(q) > 1 else 0 for q in quality],
                   marker="o", capsize=3)
    ax[0].set(xlabel=xlabel, ylabel=f"{metric} (lower is better)", title="quality")
    ax[1].plot(L if time_L is None else time_L, ms, "o-", color="C1")
    ax[1].set(xlabel=xlabel, ylabel="ms per training step", title="time per step", ylim=(0, None))
    return _save(fig, out)


def plot_theorem(results: dict, kernel: str, out: Path) -> Path:
    """000 Thm 3.1 and Prop. 4.1 on exact errors, one panel per model: ``E_t^cumu`` (exact KL, kNN floor removed)
    against the propagation bound ``E_{t+1}^cumu + E_t^mod`` and the MMD bounds ``D_t^cumu / 4`` and ``D_t^cumu``."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        t, e = res.column(kernel, "cumulative_kl")
        e = e - res.column(kernel, "kl_floor")[1]
        e_next = res.column(kernel, "cumulative_kl_next")[1] - res.column(kernel, "kl_floor_next")[1]
        d = res.column(kernel, "cumulative")[1]
        ax.plot(t, e, "o-", label="E_t^cumu (exact KL)")
        ax.plot(t, e_next + res.column(kernel, "modular_kl")[1], "s:", label="E_{t+1}^cumu + E_t^mod (Thm 3.1)")
        ax.plot(t, d, "k--", lw=1, label=f"D_t^cumu ({kernel})")
        ax.plot(t, d / 4, "k:", lw=1, label="D_t^cumu / 4")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set(xscale="log", xlabel="t (sampling runs right to left)", ylabel="nats / MMD^2", title=name)
        ax.invert_xaxis()
    axes[0][0].legend(fontsize=7)
    return _save(fig, out)
