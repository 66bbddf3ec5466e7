"""Plots a person would rather look at than read: loss curves, 2-D scatters, image grids."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss(log_path: str | Path, out: str | Path) -> Path:
    """Training loss (log scale) and gradient norm against step, from ``log.jsonl``."""
    recs = [json.loads(ln) for ln in Path(log_path).read_text().splitlines() if ln.strip()]
    step = [r["step"] for r in recs]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(step, [r["loss"] for r in recs])
    ax[0].set(yscale="log", xlabel="step", ylabel="loss", title="training loss")
    ax[1].plot(step, [r["grad_norm"] for r in recs], color="C1")
    ax[1].set(yscale="log", xlabel="step", ylabel="grad norm", title="gradient norm (before clipping)")
    return _save(fig, out)


def plot_scatter(panels: dict[str, np.ndarray], out: str | Path, reference: np.ndarray | None = None) -> Path:
    """One 2-D scatter per named sample set, over the reference data in grey."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels.items()):
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.8", label="data")
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, c="C0", alpha=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
    return _save(fig, out)


def plot_image_grid(images: np.ndarray, out: str | Path, max_images: int = 64) -> Path:
    """A square grid of images given as (N, C, H, W) in [-1, 1]."""
    imgs = np.clip((images[:max_images] + 1) / 2, 0, 1)
    n = len(imgs)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img in zip(axes.ravel(), imgs):
        c = img.shape[0]
        ax.imshow(img[0] if c == 1 else img[:3].transpose(1, 2, 0), cmap="gray" if c == 1 else None,
                  vmin=0, vmax=1, interpolation="nearest")
    return _save(fig, out)


def plot_samples(samples: np.ndarray, out: str | Path, reference: np.ndarray | None = None,
                 title: str = "samples") -> Path | None:
    """The natural picture for the data: image grid, 2-D scatter, or nothing for other vector data."""
    if samples.ndim == 4:
        return plot_image_grid(samples, out)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return plot_scatter({title: samples}, out, reference)
    return None


def _floor_axes(ax, t, floor, ylabel: str, title: str) -> None:
    """The axes every propagation panel shares: the permutation noise floor shaded (when given), a symmetric-log y
    axis linear inside it (so unbiased estimates below zero stay visible), log t running right to left."""
    linthresh = 1e-6
    if floor is not None:
        ax.fill_between(t, -floor, floor, color="0.85", label="noise floor (95%)")
        linthresh = float(np.nanmedian(floor)) / 4 or linthresh
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.set(xscale="log", xlabel="t (module index; sampling runs right to left)", ylabel=ylabel, title=title)
    ax.invert_xaxis()


def _panels_done(fig, axes, title: str, out) -> Path:
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def plot_propagation(result, out: str | Path, reference=None, title: str = "") -> Path:
    """One panel per kernel: cumulative, modular and bootstrapped MMD^2 against t, the cumulative curve's
    permutation noise floor shaded, and a reference model's cumulative curve dashed."""
    kernels = result.kernels
    fig, axes = plt.subplots(1, len(kernels), figsize=(4.2 * len(kernels), 3.6), squeeze=False)
    for ax, k in zip(axes[0], kernels):
        for name, style in (("cumulative", "-o"), ("modular", "-s"), ("bootstrapped", ":^")):
            tt, v = result.column(k, name)
            line, = ax.plot(tt, v, style, ms=3, label=name)
            if f"{name}_std" in result.rows[0]:
                sd = result.column(k, f"{name}_std")[1]
                ax.fill_between(tt, v - sd, v + sd, color=line.get_color(), alpha=0.2, lw=0)
        if reference is not None and k in reference.kernels:
            ax.plot(*reference.column(k, "cumulative"), "k--", lw=1, label="oracle cumulative")
        _floor_axes(ax, *result.column(k, "floor"), "MMD$^2$", k)
    return _panels_done(fig, axes, title, out)


def plot_cumulative(curves: dict[str, dict], out: str | Path, reference=None, title: str = "") -> Path:
    """Several models' cumulative error ``D_t^cumu`` side by side, one panel per kernel:
    ``curves[model][kernel] = (t, mean, std or None)``; a reference (the exact oracle's :class:`Propagation`)
    dashed, with its permutation noise floor shaded."""
    kernels = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(kernels), figsize=(4.5 * len(kernels), 3.6), squeeze=False)
    for ax, k in zip(axes[0], kernels):
        for name, per in curves.items():
            t, v, sd = per[k]
            ax.errorbar(t, v, yerr=sd, marker="o", ms=3, capsize=2, label=name)
        floor = (None, None)
        if reference is not None and k in reference.kernels:
            ax.plot(*reference.column(k, "cumulative"), "k--", lw=1, label="oracle")
            floor = reference.column(k, "floor")
        _floor_axes(ax, *floor, "$D_t^{cumu}$ (MMD$^2$)", k)
    return _panels_done(fig, axes, title, out)
