"""Figures of the reproductions that :mod:`diffprop.plots` has no general form for."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plots import _save, plt, time_axis


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


def plot_theorem(results: dict, kernel: str, out: Path, closed=None) -> Path:
    """000 Thm 3.1 and Prop. 4.1 on exact errors, one panel per model: ``E_t^cumu`` (exact KL, kNN floor removed, ±
    its noise) against the summed bound ``KL(p_T || q_T) + sum_{u >= t} E_u^mod`` (which Thm 3.1 summed would put below
    it) and the MMD bounds ``D_t^cumu / 4`` and ``D_t^cumu``. ``closed`` (a
    :class:`~diffprop.diagnostics.gaussian_chain.GaussianChain`) adds a first panel: ``E_t^cumu`` against Thm 3.1's
    right side ``E_{t+1}^cumu + E_t^mod`` and ``R_t``, the difference."""
    n = len(results) + (closed is not None)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    panels = list(axes[0])
    if closed is not None:
        ax = panels.pop(0)
        ax.plot(closed.t, closed.cumulative, "-", label="E_t^cumu")
        ax.plot(closed.t, closed.cumulative_next + closed.modular, ":",
                label="E_{t+1}^cumu + E_t^mod (Thm 3.1: below E_t^cumu)")
        ax.plot(closed.t, closed.reverse, "--", label="R_t = their difference")
        ax.set_yscale("log")
        ax.set(ylabel="nats", title="closed form, linear-Gaussian chain")
        time_axis(ax)
        ax.legend(fontsize=7)
    for ax, (name, res) in zip(panels, results.items()):
        t, e = res.column(kernel, "cumulative_kl")
        e = e - res.column(kernel, "kl_floor")[1]
        se = res.column(kernel, "cumulative_kl_se")[1]
        d = res.column(kernel, "cumulative")[1]
        ax.plot(t, e, "o-", label="E_t^cumu (exact KL)")
        ax.fill_between(t, e - se, e + se, alpha=0.25)
        ax.plot(t, res.column(kernel, "propagation_bound")[1], "s:", label="KL(p_T||q_T) + sum_u>=t E_u^mod")
        ax.plot(t, d, "k--", lw=1, label=f"D_t^cumu ({kernel})")
        ax.plot(t, d / 4, "k:", lw=1, label="D_t^cumu / 4")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set(ylabel="nats / MMD^2", title=name)
        time_axis(ax)
    if panels:
        panels[0].legend(fontsize=7)
    return _save(fig, out)
