"""``score-matching``: denoising, sliced (plain and variance-reduced) and implicit score matching (Tang & Zhao 2024,
Sec. 4) trained with the same MLP, budget and sigma^2 weighting on gmm-ring and swiss-roll: the learnt score against
the exact one per band of t, sample quality, time per training step, and the cost of one step against the data's
dimension.

Both datasets have an exact score. gmm-ring is a Gaussian mixture. diffprop's swiss-roll is the roll curve
``c(u) = (u cos u, u sin u) / 7``, ``u ~ U[1.5 pi, 4.5 pi]``, blurred by isotropic noise of std ``0.5 / 7``
(scikit-learn's ``make_swiss_roll`` with noise 0.5, the coordinates x and z, :mod:`diffprop.data.toy`): a continuous
Gaussian mixture over ``u``. :func:`swiss_roll_mixture` discretises it at ``K`` quantile midpoints of ``u``; with ``K =
2000`` adjacent points lie at most 0.01 apart along the curve (length 12.8), far below the blur 0.071, so the mixture's
score is the data's to quadrature error.
"""
from __future__ import annotations

import csv
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.toy import SWISS_ROLL_NOISE, SWISS_ROLL_SCALE
from ..denoisers import Denoiser
from ..losses.score_matching import OBJECTIVES
from ..mixtures import GaussianMixture
from ..nets.mlp import TimeMLP
from ..oracle import OracleDenoiser
from ..plots import _save, plt
from ..runs import load_run
from ..schedules import NoiseSchedule
from . import common
from .tables import by_variant, compare, describe_tests, mean_std, p_text, standing, welch, write_report

CLAIM = ("Tang & Zhao (2024) Sec. 4, after Song et al. (2019): sliced score matching learns the score as well as "
         "implicit score matching with the exact Jacobian trace (Hyvarinen 2005) at a cost per step that does not grow "
         "with the dimension; its variance-reduced form is at least as accurate as the plain one; denoising score "
         "matching (Vincent 2011), a least-squares regression, is the most widely used")
VARIANTS = {name: [f"objective.loss={name}"] for name in OBJECTIVES}  # every other setting: the scale's
DATASETS = ("gmm-ring", "swiss-roll")
SCALES = {"tiny": replace(common.SCALES["tiny"], steps=30, samples=128),
          "small": replace(common.SCALES["small"], steps=1500, seeds=3, samples=2000,
                           train=("train.batch_size=256", "train.lr=2e-3", "train.lr_schedule=cosine"),
                           mlp=("model.width=64", "model.depth=2"))}
MINUTES = {"tiny": 0.5, "small": 33}  # measured: 33 min wall (2 shared cores, load 12-16), 14 min of it training
BANDS = ((0.0, 0.01), (0.01, 0.1), (0.1, 0.3), (0.3, 1.0))  # bands of t / T
EVAL = {"tiny": 128, "small": 1000}  # points per band for the score error
DIMS = {"tiny": (2, 4), "small": (2, 8, 32, 128)}  # the cost-against-dimension measurement
TIMING = {"tiny": (1, 1), "small": (3, 10)}  # rounds, steps of the side-by-side time per step
ALPHA = 0.01


def swiss_roll_mixture(k: int = 2000) -> GaussianMixture:
    """diffprop's swiss-roll as a Gaussian mixture: ``k`` equal-weight components of std ``0.5 / 7`` on the roll curve
    at the quantile midpoints of ``u ~ U[1.5 pi, 4.5 pi]`` (see the module docstring)."""
    u = 1.5 * math.pi * (1 + 2 * (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    means = torch.stack([u * torch.cos(u), u * torch.sin(u)], dim=1) / SWISS_ROLL_SCALE
    return GaussianMixture(means, torch.full((k,), SWISS_ROLL_NOISE / SWISS_ROLL_SCALE), torch.full((k,), 1.0 / k))


def exact_mixture(study) -> GaussianMixture:
    return study.dataset.mixture if study.dataset.mixture is not None else swiss_roll_mixture()


def band_times(T: int, lo: float, hi: float) -> tuple[int, int]:
    """The integer timesteps ``a..b`` of the band ``(lo T, hi T]`` (at least one)."""
    a = max(1, math.floor(lo * T) + 1)
    return a, max(a, math.floor(hi * T))


@torch.no_grad()
def score_errors(denoiser, mixture: GaussianMixture, n: int, seed: int, chunk: int = 500) -> dict:
    """Per band of t: the relative L2 error ``sqrt(E ||s_theta - s||^2 / E ||s||^2)`` of the model's score against
    the exact ``s = grad log q_t`` at ``x_t ~ q_t``; and ``eps_mse``: ``E sigma_t^2 ||s_theta - s||^2 / D`` over ``t ~
    U{1..T}``, the model's excess sigma^2-weighted score-matching loss (004 Eq. 4.5, 4.13)."""
    oracle, T = OracleDenoiser(mixture, denoiser.schedule), denoiser.schedule.T
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (a, b) in [(f"rel_{lo:g}-{hi:g}", band_times(T, lo, hi)) for lo, hi in BANDS] + [("eps_mse", (1, T))]:
        x0 = mixture.sample(n, g)
        t = torch.randint(a, b + 1, (n,), generator=g)
        x_t = denoiser.process.marginal(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        err2, ref2 = [], []
        for i in range(0, n, chunk):
            xs, ts = x_t[i:i + chunk], t[i:i + chunk]
            exact = oracle.score(xs, ts)
            diff = denoiser.score(xs.float(), ts).double() - exact
            w = denoiser.process.coefficients(ts, xs)[1] if name == "eps_mse" else 1.0
            err2.append((w * diff.pow(2)).sum(1))
            ref2.append(exact.pow(2).sum(1))
        err2, ref2 = torch.cat(err2), torch.cat(ref2)
        out[name] = float(err2.mean() / x0.shape[1]) if name == "eps_mse" else float((err2.mean() / ref2.mean()).sqrt())
    return out


def cost_vs_dim(dims, scale: common.Scale, reps: int = 5, batch: int = 256) -> dict:
    """Median milliseconds of one loss evaluation and backward pass per objective and data dimension D, on
    standard-normal data with the scale's MLP (ism's dimension limit lifted for the measurement)."""
    cfg = common.config_for(scale, "gmm-ring", False, [], 0)
    out = {}
    for D in dims:
        torch.manual_seed(0)
        den = Denoiser(TimeMLP(D, cfg.model.width, cfg.model.depth, cfg.model.time_dim), NoiseSchedule.from_config(
            "linear", scale.T))
        x0 = torch.randn(batch, D)
        for name, cls in OBJECTIVES.items():
            loss, g, times = cls(max_dim=max(dims)), torch.Generator().manual_seed(0), []
            for _ in range(reps + 1):  # the first is a warm-up
                t0 = time.perf_counter()
                loss(den, x0, g).mean().backward()
                times.append(time.perf_counter() - t0)
            out[name, D] = 1e3 * statistics.median(times[1:])
    return out


def plot(errors: dict, costs: dict, dims, out: Path) -> Path:
    """Score error per band of t for each dataset (mean and std over seeds) and the cost of a step against D."""
    fig, axes = plt.subplots(1, len(errors) + 1, figsize=(4.6 * (len(errors) + 1), 3.8))
    x = np.arange(len(BANDS))
    for ax, (data, groups) in zip(axes, errors.items()):
        for i, (v, cols) in enumerate(groups.items()):
            m = [np.mean(cols[f"rel_{lo:g}-{hi:g}"]) for lo, hi in BANDS]
            s = [np.std(cols[f"rel_{lo:g}-{hi:g}"], ddof=1) if len(cols["eps_mse"]) > 1 else 0 for lo, hi in BANDS]
            ax.errorbar(x + 0.06 * (i - 1.5), m, yerr=s, fmt="o-", ms=3, capsize=2, color=f"C{i}", label=v)
        ax.set(xticks=x, xticklabels=[f"({lo:g}, {hi:g}]" for lo, hi in BANDS], xlabel="t / T", yscale="log",
               ylabel="relative L2 error of the score", title=data)
    for i, name in enumerate(OBJECTIVES):
        axes[-1].plot(dims, [costs[name, D] for D in dims], "o-", color=f"C{i}", label=name)
    axes[-1].set(xscale="log", yscale="log", xlabel="data dimension D", ylabel="ms per loss + backward",
                 title="cost of one step")
    axes[0].legend(fontsize=8)
    axes[-1].legend(fontsize=8)
    return _save(fig, out)


def verdict(groups: dict, costs: dict, dims) -> str:
    """Three checks: ssm-vr's score error no worse than ism's (Welch p >= ALPHA or lower mean) on every dataset, in
    eps_mse and in every band of t; ssm-vr no worse than ssm in eps_mse; ism's cost growing with D faster than
    ssm-vr's (their ratio at the largest D over that at the smallest above 2)."""
    checks, text = [], []
    for data, g in groups.items():
        for ours, other in (("ssm-vr", "ism"), ("ssm-vr", "ssm")):
            cols = [c for c in g[ours] if c.startswith(("eps_mse", "rel_"))] if other == "ism" else ["eps_mse"]
            worse = []
            for c in cols:
                a, b = g[ours][c], g[other][c]
                if np.mean(a) > np.mean(b) and welch(a, b) < ALPHA:
                    worse.append(f"{c} (p = {welch(a, b):.2g})")
            checks.append(not worse)
            a, b = g[ours]["eps_mse"], g[other]["eps_mse"]
            text.append(f"{data}: {ours} eps_mse {np.mean(a):.3g} vs {other} {np.mean(b):.3g} ({p_text(welch(a, b))})"
                        + (f", significantly worse in {', '.join(worse)}" if worse else ""))
    growth = (costs["ism", dims[-1]] / costs["ssm-vr", dims[-1]]) / (costs["ism", dims[0]] / costs["ssm-vr", dims[0]])
    checks.append(growth > 2)
    text.append(f"ism/ssm-vr cost ratio grows {growth:.3g}x from D = {dims[0]} to {dims[-1]}")
    word = "yes" if all(checks) else "partly" if any(checks) else "no"
    return f"{word}: " + "; ".join(text) + "."


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True) -> Path:
    out = Path(out)
    columns = ("eps_mse", *(f"rel_{lo:g}-{hi:g}" for lo, hi in BANDS))
    tables, tests, errors, step_ms, quality_text, every = [], [], {}, {}, [], []
    for data in DATASETS:
        study = common.Study("score-matching", out / data, scale, SCALES[scale], seeds, progress, data=data)
        rows = study.train_and_score(VARIANTS)
        mixture = exact_mixture(study)
        for r in tqdm(rows, desc=f"score-matching: score errors ({data})", disable=not progress):
            r.update(score_errors(load_run(r["dir"]).denoiser, mixture, EVAL[scale], seed=30_000 + r["seed"]))
        step_ms[data] = study.time_per_step(VARIANTS, *TIMING[scale])
        for r in rows:
            r["ms_per_step"] = step_ms[data][r["variant"]]
            every.append({"data": data, "variant": r["variant"], "seed": r["seed"],
                          **{c: r[c] for c in (*columns, study.metric, "ms_per_step")}})
        groups = by_variant(rows, (*columns, study.metric))
        errors[data] = groups
        md = (f"| {data} | seeds | {' | '.join(columns)} | {study.metric} | ms / step |\n|---|---|"
              + "---|" * (len(columns) + 2) + "\n")
        for v, cols in groups.items():
            md += (f"| {v} | {len(cols['eps_mse'])} | " + " | ".join(mean_std(cols[c]) for c in columns)
                   + f" | {mean_std(cols[study.metric])} | {step_ms[data][v]:.3g} |\n")
        tables.append(md)
        for metric in (*columns, study.metric):
            t = compare(groups, metric, "dsm", [v for v in VARIANTS if v != "dsm"])
            tests.append(f"{data}, {metric}:\n" + describe_tests(t, metric))
            quality_text += [f"{data}: dsm {standing(t_, ALPHA)} {t_['other']} on {metric}" for t_ in t
                             if metric == study.metric]
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in every for k in r)))
        w.writeheader()
        w.writerows(every)
    dims = DIMS[scale]
    costs = cost_vs_dim(dims, SCALES[scale])
    cost_md = ("| objective | " + " | ".join(f"D = {D}" for D in dims) + " |\n|---|" + "---|" * len(dims) + "\n"
               + "".join(f"| {n} | " + " | ".join(f"{costs[n, D]:.3g}" for D in dims) + " |\n" for n in OBJECTIVES))
    fig = plot(errors, costs, dims, out / "score_error.png")
    s = SCALES[scale]
    cfg = common.config_for(s, "gmm-ring", False, [], 0)
    setup = (f"gmm-ring (8 modes of std 0.05) and swiss-roll; every objective trains the same residual MLP (width "
             f"{cfg.model.width}, depth {cfg.model.depth}, eps-parameterised) on the DDPM chain (T = {s.T}, linear "
             f"betas, t ~ U{{1..T}}) with sigma^2 weighting for {s.steps} steps (batch {cfg.train.batch_size}, LR "
             f"{cfg.train.lr:g}, {cfg.train.lr_schedule}); ssm and ssm-vr with one Gaussian projection; "
             f"{study.seeds} seed(s). Score error against the exact score (gmm-ring: its mixture; swiss-roll: the "
             f"roll as a 2000-component mixture, exact to quadrature error, see diffprop.experiments.score_matching) "
             f"at {EVAL[scale]} points per band of t; `eps_mse` is E sigma_t^2 ||s_theta - s||^2 / D over t ~ "
             f"U{{1..T}}. Quality on {s.samples} DDPM samples (gmm-ring: kl_estimate; swiss-roll: sliced W1; lower "
             f"is better). Time per step measured side by side (median of {TIMING[scale][0]} rounds of "
             f"{TIMING[scale][1]} steps) and the cost of one loss + backward on standard-normal data of dimension D.")
    measured = ("\n".join(tables) + "\n\nWelch t-tests against dsm:\n\n" + "\n".join(tests)
                + "\n\nms per loss + backward against the data dimension D (batch 256):\n\n" + cost_md
                + "\n\n" + "; ".join(quality_text) + ".\n")
    return write_report(out, f"score-matching ({scale})", CLAIM, setup, measured, {fig.name: "score error and cost"},
                        verdict(errors, costs, dims),
                        notes="Samples: gmm-ring/samples.png, swiss-roll/samples.png.")
