"""``samplers``: every registered sampler at a range of network evaluations (NFE) on gmm-grid, for the exact oracle
(on the trained model's discrete chain, and under the EDM process) and for a trained DDPM: sample quality against
NFE, and the error-propagation curve of each sampler's chain at one NFE. The sampler part of Song et al. (2021,
score SDE) Sec. 4-5 and Karras et al. (2022) Sec. 3 made measurable."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from ..diagnostics.entropy import knn_entropy
from ..diagnostics.propagation import propagation
from ..metrics.toy import mixture_metrics
from ..oracle import OracleDenoiser
from ..plots import _save, plt
from ..processes import build_process
from ..runs import load_run
from ..samplers import GENERAL, sample
from . import common
from .tables import write_report

CLAIM = ("Song et al. (2021, score SDE), Karras et al. (2022): a second-order probability-flow ODE solver (Heun, "
         "EDM time grid) reaches the quality of 1000-step ancestral sampling with <= 50 network evaluations")
SCALES = {"tiny": replace(common.SCALES["tiny"], data="gmm-grid", steps=300, samples=256, num=128),
          "small": replace(common.SCALES["small"], data="gmm-grid", steps=12000, seeds=1, samples=2000, num=1000,
                           permutations=20,
                           train=("train.batch_size=256", "train.lr=2e-3", "train.lr_schedule=cosine"))}
MINUTES = {"tiny": 0.5, "small": 15}  # measured: 14.7 min (2 shared cores)
NFES = {"tiny": (10,), "small": (5, 10, 20, 50, 100, 1000)}
RTOLS = {"tiny": (1e-2,), "small": (1e-1, 1e-2, 1e-3, 1e-5)}  # the adaptive ODE's NFE is set by its tolerance
CURVE_NFE = 20  # each sampler's error curve at (about) this many evaluations
CURVE_CHAINS = {"tiny": {"oracle": ("ddim", "heun")}, "small": {"oracle": GENERAL, "trained": GENERAL}}
CURVE_KERNEL = "rbf@0.1"  # the mode scale of gmm-grid (the median bandwidth, ~3, is blind inside a mode)
COLUMNS = ("nfe", "kl_estimate", "high_quality_fraction", "mode_coverage", "mode_weights_pvalue",
           "within_mode_std_ratio", "log_likelihood")


def quality(x, mixture) -> dict:
    """The mixture metrics and ``kl_estimate`` of :func:`~diffprop.metrics.toy.sample_metrics` (not its MMD and
    sliced W1, which would cost more than the sampling)."""
    return {**mixture_metrics(x, mixture), "kl_estimate": -knn_entropy(x) - float(mixture.log_prob(x).mean())}


def steps_for(sampler: str, nfe: int) -> int | None:
    """Steps that cost ``nfe`` evaluations: Heun spends ``2 steps - 1``, predictor-corrector 2 per step; None for a
    budget the sampler cannot spend exactly."""
    if sampler == "heun":
        return (nfe + 1) // 2 if nfe % 2 else None
    if sampler == "pc":
        return nfe // 2 if nfe % 2 == 0 else None
    return nfe


def settings(sampler: str, nfes, T: int, rtols=RTOLS["small"]) -> list[dict]:
    """The (steps, options) each sampler runs at: one per NFE budget it can spend on a chain of T steps (Heun at the
    odd budgets ``nfe - 1``), the adaptive ODE once per tolerance."""
    if sampler == "ode":
        return [{"steps": 2, "rtol": r, "atol": r} for r in rtols]
    out = []
    for n in nfes:
        steps = steps_for(sampler, n) or steps_for(sampler, n - 1)
        if steps and steps <= T:
            out.append({"steps": steps})
    return out


def models(study, run_dir: str) -> dict:
    trained = load_run(run_dir).denoiser
    mix = study.dataset.mixture
    return {"oracle": OracleDenoiser(mix, trained.schedule), "trained": trained,
            "oracle-edm": OracleDenoiser(mix, build_process("edm", data=study.dataset.x))}


def chain_curves(study, zoo: dict, chains: dict, progress: bool) -> dict:
    """Each sampler's error-propagation profile at about ``CURVE_NFE`` evaluations (the adaptive ODE at rtol 1e-2),
    for the models and samplers in ``chains``: cumulative MMD at the mode scale and the exact KL ``E_t`` (kNN floor
    removed) at every time the chain visits."""
    out = {}
    todo = [(m, s) for m, samplers in chains.items() for s in samplers]
    for m, sampler in tqdm(todo, desc="samplers: curves", unit="chain", disable=not progress):
        den = zoo[m]
        st = {"steps": 2, "sampler_options": {"rtol": 1e-2, "atol": 1e-2}} if sampler == "ode" else \
            {"steps": steps_for(sampler, CURVE_NFE) or steps_for(sampler, CURVE_NFE - 1)}
        res = propagation(den, study.dataset.x, num=study.scale.num, kernels=(CURVE_KERNEL,), sampler=sampler,
                          num_permutations=study.scale.permutations, seed=0, device=study.device,
                          batch_size=common.SAMPLE_BATCH, progress=False, oracle=zoo["oracle"], **st)
        t, cumu = res.column(CURVE_KERNEL, "cumulative")
        _, floor = res.column(CURVE_KERNEL, "floor")
        _, kl = res.column(CURVE_KERNEL, "cumulative_kl")
        _, kl_floor = res.column(CURVE_KERNEL, "kl_floor")
        out[m, sampler] = {"t": t, "mmd": cumu, "floor": floor, "E": kl - kl_floor, "nfe": res.meta.get("nfe")}
    return out


def plot_curves(curves: dict, T: int, out: Path) -> Path:
    """The exact cumulative error ``E_t`` along each sampler's chain (about the same NFE), one panel per model."""
    names = list(dict.fromkeys(m for m, _ in curves))
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], names):
        for i, sampler in enumerate(GENERAL):
            c = curves.get((m, sampler))
            if c is not None:
                ax.plot(c["t"], c["E"], "o-", ms=3, color=f"C{i}", label=f"{sampler} ({c['nfe']} NFE)")
        ax.set(xscale="log", yscale="symlog", xlim=(T * 1.2, 0.8), xlabel="t of each step (its E is at the time it "
               "steps to; T to 1, left to right)", title=m)
        ax.axhline(0, color="0.6", lw=0.8)
    axes[0, 0].set(ylabel="E_t: exact KL(chain || q_t), nats")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"cumulative error along each sampler's chain, about {CURVE_NFE} NFE")
    return _save(fig, out)


def plot_quality(rows: list[dict], out: Path) -> Path:
    """Quality against NFE, one column per model: the exact KL estimate (lower is better) and the within-mode spread
    (1 is right), one line per sampler."""
    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False, sharex=True)
    for j, m in enumerate(names):
        for i, sampler in enumerate(GENERAL):
            sel = sorted((r for r in rows if r["model"] == m and r["sampler"] == sampler), key=lambda r: r["nfe"])
            if not sel:
                continue
            nfe = [r["nfe"] for r in sel]
            for k, (col, ylabel) in enumerate((("kl_estimate", "KL(samples || data), nats"),
                                               ("within_mode_std_ratio", "within-mode spread / 0.05"))):
                axes[k, j].plot(nfe, [r[col] for r in sel], "o-", color=f"C{i}", label=sampler, ms=3)
                axes[k, j].set(xscale="log", ylabel=ylabel if j == 0 else None)
        axes[0, j].set(title=m, yscale="symlog", ylim=(-0.05, None))
        axes[0, j].axhline(0, color="0.6", lw=0.8)
        axes[1, j].axhline(1, color="0.6", lw=0.8)
        axes[1, j].set(xlabel="network evaluations per sample (NFE)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("sample quality against NFE on gmm-grid")
    return _save(fig, out)


def _best(rows, model, sampler, most_nfe):
    sel = [r for r in rows if r["model"] == model and r["sampler"] == sampler and r["nfe"] <= most_nfe]
    return min(sel, key=lambda r: r["kl_estimate"]) if sel else None


def verdict(rows: list[dict], T: int) -> str:
    """Heun at <= 50 NFE against DDPM with every step, per model: 'matches' when its KL estimate is within 0.05 nats
    (a few times the estimator's bias at these sizes) and its high-quality fraction within 1 point."""
    parts, ok = [], []
    for m in dict.fromkeys(r["model"] for r in rows):
        heun = _best(rows, m, "heun", 50)
        full = [r for r in rows if r["model"] == m and r["sampler"] == "ddpm" and r["steps"] == T]
        if heun is None or not full:
            continue
        d = full[0]
        good = (heun["kl_estimate"] <= d["kl_estimate"] + 0.05
                and heun["high_quality_fraction"] >= d["high_quality_fraction"] - 0.01)
        ok.append(good)
        parts.append(f"{m}: Heun at {heun['nfe']} NFE KL {heun['kl_estimate']:.3f}, "
                     f"HQ {heun['high_quality_fraction']:.3f}"
                     f" vs DDPM at {d['nfe']} KL {d['kl_estimate']:.3f}, HQ {d['high_quality_fraction']:.3f}")
    if not ok:
        return "undecided: no DDPM run over the whole chain to compare with."
    word = "yes" if all(ok) else "partly" if any(ok) else "no"
    return f"{word}: " + "; ".join(parts) + "."


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True, **options) -> Path:
    study = common.Study("samplers", out, scale, SCALES[scale], seeds, progress, **options)
    rec = study.train("ddpm", [], 0)
    T = study.scale.T
    zoo = models(study, rec["dir"])
    todo = [(m, s, st) for m in zoo for s in GENERAL
            for st in settings(s, NFES[scale], T if m != "oracle-edm" else 10**9, RTOLS[scale])]
    rows = []
    for m, sampler, st in tqdm(todo, desc="samplers: settings", unit="run", disable=not progress):
        den = zoo[m]
        opts = {k: v for k, v in st.items() if k != "steps"}
        res = sample(den.to(study.device), study.scale.samples, tuple(study.dataset.data_shape), sampler=sampler,
                     steps=st["steps"], seed=20_000, device=study.device, batch_size=common.SAMPLE_BATCH,
                     progress=False, **opts)
        x = res.x.float().cpu()
        q = quality(x, study.dataset.mixture) if bool(x.isfinite().all()) else {}
        rows.append({"model": m, "sampler": sampler, "steps": st["steps"], **opts, "nfe": res.nfe,
                     **{c: float(q.get(c, math.nan)) for c in COLUMNS if c != "nfe"}})
    study.out.mkdir(parents=True, exist_ok=True)
    table = write_rows(study.out, rows)
    fig = plot_quality(rows, study.out / "quality_vs_nfe.png")
    curves = chain_curves(study, zoo, CURVE_CHAINS[scale], progress)
    curve_fig = plot_curves(curves, T, study.out / "error_curves.png")
    table += "\n" + curve_table(curves)
    setup = (f"`gmm-grid` (49 modes of std 0.05); models: the exact oracle on a linear-beta chain of T = {T} "
             f"(`oracle`), a DDPM trained on it ({study.describe(scored=False)[:-1]}; `trained`), and the exact "
             f"oracle under the EDM process (`oracle-edm`, sigma in [0.002, 80]); {study.scale.samples} samples per "
             f"setting, seed 20000; each sampler at its default time grid (see `diffprop sample --help`); Heun at "
             f"odd NFE, predictor-corrector at even NFE, the adaptive RK45 ODE at rtol = atol in "
             f"{list(RTOLS[scale])}.")
    return write_report(study.out, study.title, CLAIM, setup, table, {fig.name: "quality against NFE",
                                                                      curve_fig.name: "error along each chain"},
                        verdict(rows, T))


def curve_table(curves: dict) -> str:
    """Per chain: NFE, the exact cumulative error of its output (at t = 0) and its largest, and how many of its times
    the mode-scale MMD lies above its permutation noise floor."""
    md = ("| model | sampler | NFE | E at t = 0, the samples (nats) | largest E (nats) | MMD above floor |\n"
          "|---|---|---|---|---|---|\n")
    for (m, s), c in curves.items():
        md += (f"| {m} | {s} | {c['nfe']} | {c['E'][0]:.3g} | {max(c['E']):.3g} | "
               f"{int((c['mmd'] > c['floor']).sum())}/{len(c['t'])} |\n")
    return md


def write_rows(out: Path, rows: list[dict]) -> str:
    """``table.csv`` (every row) and the Markdown table the report shows."""
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(Path(out) / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    cols = ("model", "sampler", "steps", *COLUMNS)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    md += "".join("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |\n" for r in rows)
    (Path(out) / "table.md").write_text(md)
    return md


__all__ = ["run", "settings", "steps_for", "verdict"]
