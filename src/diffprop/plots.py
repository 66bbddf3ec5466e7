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


def time_axis(ax) -> None:
    """log t with T on the left and 1 on the right: the direction sampling runs, said once on the label."""
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("t   (sampling runs left to right: T \u2192 1)")


def _log_bottom(values, floor) -> float:
    """The log axis' bottom: a third of the smallest positive value or floor shown."""
    pos = [float(np.nanmin(v[v > 0])) for v in (*values, floor) if v is not None and np.any(np.asarray(v) > 0)]
    return min(pos) / 3 if pos else 1e-6


def _curve(ax, t, v, floor, bottom: float, fmt: str, label: str, sd=None, **kw):
    """``v`` on a log axis: solid markers above the noise ``floor``, hollow ones inside it; values at or below the
    axis' bottom (unbiased MMD^2 estimates can be negative) as hollow down-triangles on it, the line broken there;
    ``sd`` a shaded band."""
    t, v = np.asarray(t, float), np.asarray(v, float)
    low = ~(v > bottom)
    line, = ax.plot(t, np.where(low, np.nan, v), fmt, ms=4, label=label, **kw)
    inside = ~low & (~(v > floor) if floor is not None else False)
    if inside.any():
        ax.plot(t[inside], v[inside], line.get_marker() or "o", ms=4, mfc="white", color=line.get_color(), ls="none")
    if low.any():
        ax.plot(t[low], np.full(low.sum(), bottom), "v", ms=5, mfc="white", color=line.get_color(), ls="none")
    if sd is not None:
        ax.fill_between(t, np.maximum(v - sd, bottom), np.maximum(v + sd, bottom), color=line.get_color(),
                        alpha=0.15, lw=0)
    return line


def _floor_axes(ax, t, floor, bottom: float, ylabel: str, title: str, floor_name: str = "noise floor (95 %)") -> None:
    """What every propagation panel shares: a log y axis from ``bottom``, the noise floor (by default the
    permutation test's) shaded from the bottom up (a value in the grey is indistinguishable from 0), log t with
    sampling running left to right."""
    if floor is not None:
        ax.fill_between(t, bottom, np.maximum(floor, bottom), color="0.88", lw=0,
                        label=f"{floor_name}; hollow: inside it, \u25bd: <= 0")
    ax.set_yscale("log")
    ax.set_ylim(bottom=bottom / 1.5)
    ax.set(ylabel=ylabel, title=title)
    time_axis(ax)


def _panels_done(fig, axes, title: str, out) -> Path:
    axes[0][-1].legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, loc="upper left",
                       bbox_to_anchor=(1.02, 1.0))  # beside the panels, never over a curve
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def plot_propagation(result, out: str | Path, reference=None, title: str = "") -> Path:
    """One panel per kernel: cumulative, modular and bootstrapped MMD^2 against t, the cumulative curve's
    permutation noise floor shaded (hollow markers: inside it), and a reference model's cumulative curve dashed."""
    kernels = result.kernels
    fig, axes = plt.subplots(1, len(kernels), figsize=(4.4 * len(kernels) + 2.6, 3.8), squeeze=False)
    for ax, k in zip(axes[0], kernels):
        t, floor = result.column(k, "floor")
        cols = {name: result.column(k, name)[1] for name in ("cumulative", "modular", "bootstrapped")}
        ref = reference.column(k, "cumulative") if reference is not None and k in reference.kernels else None
        bottom = _log_bottom([*cols.values(), *([ref[1]] if ref else [])], floor)
        for (name, v), fmt in zip(cols.items(), ("-o", "-s", ":^")):
            sd = result.column(k, f"{name}_std")[1] if f"{name}_std" in result.rows[0] else None
            _curve(ax, t, v, floor, bottom, fmt, name, sd)
        if ref:
            _curve(ax, *ref, None, bottom, "k--", "oracle cumulative", lw=1)
        _floor_axes(ax, t, floor, bottom, "MMD$^2$", k)
    return _panels_done(fig, axes, title, out)


def plot_cumulative(curves: dict[str, dict], out: str | Path, reference=None, title: str = "") -> Path:
    """Several models' cumulative error ``D_t^cumu`` side by side, one panel per kernel:
    ``curves[model][kernel] = (t, mean, std or None)``; a reference (the exact oracle's :class:`Propagation`)
    dashed, with its permutation noise floor shaded (hollow markers: inside it)."""
    kernels = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(kernels), figsize=(4.6 * len(kernels) + 2.6, 3.8), squeeze=False)
    for ax, k in zip(axes[0], kernels):
        ref = reference.column(k, "cumulative") if reference is not None and k in reference.kernels else None
        t_f, floor = reference.column(k, "floor") if ref else (None, None)
        bottom = _log_bottom([np.asarray(per[k][1]) for per in curves.values()] + ([ref[1]] if ref else []), floor)
        for name, per in curves.items():
            t, v, sd = per[k]
            f = np.interp(np.log(t), np.log(t_f[::-1]), floor[::-1]) if floor is not None else None
            _curve(ax, t, v, f, bottom, "-o", name, None if sd is None else np.asarray(sd))
        if ref:
            _curve(ax, *ref, floor, bottom, "k--", "oracle", lw=1)
        _floor_axes(ax, t_f if floor is not None else t, floor, bottom, "$D_t^{cumu}$ (MMD$^2$)", k)
    return _panels_done(fig, axes, title, out)


def plot_headline(results: dict, kernel: str, out: str | Path, title: str = "") -> Path:
    """Several models' error along the chain, two panels: the exact cumulative KL ``E_t^cumu`` (nats; Gaussian-mixture
    data, kNN floor removed) with twice the estimator's standard error as its noise floor, and ``D_t^cumu`` (MMD^2)
    at ``kernel`` with its permutation noise floor; hollow markers are inside the floor."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.9), squeeze=False)
    exact = {n: r for n, r in results.items() if r.rows and "cumulative_kl" in r.rows[0]}
    panels = [(axes[0][0], exact, "exact", "$E_t^{cumu}$ = KL$(p_t \\| q_t)$ (nats)", "exact cumulative KL",
               "estimator noise (2 SE)"),
              (axes[0][1], results, "mmd", "$D_t^{cumu}$ (MMD$^2$)", f"cumulative MMD$^2$, {kernel}",
               "noise floor (95 %)")]
    for ax, res, what, ylabel, name, floor_name in panels:
        cols = {}
        for n, r in res.items():
            if what == "exact":
                t, e = r.column(kernel, "cumulative_kl")
                cols[n] = (t, e - r.column(kernel, "kl_floor")[1], 2 * r.column(kernel, "cumulative_kl_se")[1])
            else:
                t, d = r.column(kernel, "cumulative")
                cols[n] = (t, d, r.column(kernel, "floor")[1])
        if not cols:
            ax.set_visible(False)
            continue
        floor = np.nanmax(np.stack([f for _, _, f in cols.values()]), 0)
        bottom = _log_bottom([v for _, v, _ in cols.values()], floor)
        for n, (t, v, f) in cols.items():
            _curve(ax, t, v, f, bottom, "k--" if n == "oracle" else "-o", n, lw=1 if n == "oracle" else 1.5)
        t_any = next(iter(cols.values()))[0]
        _floor_axes(ax, t_any, floor, bottom, ylabel, name, floor_name)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out)
