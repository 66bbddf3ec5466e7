"""``smd-fig3`` (002 Sec. 5.3, Fig. 3): quality against the number of sampling steps K for DDPM and DDIM samplers,
with and without soft mixture denoising. 002 plots the F1 score (harmonic mean of precision and recall) of latent
DDPM and DDIM on CelebA-HQ 256; here it is improved precision / recall (:mod:`diffprop.metrics.precision_recall`)
on the same features as the Fréchet distance, on the models ``smd-table1`` trains (shared when side by side).

The claim is read as: at the fewest steps SMD's F1 is significantly higher than DDPM's (Welch p < 0.05), and its
gain there is larger than at the most steps, for each sampler.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DiffpropError
from ..plots import _save, plt
from ..runs import load_run
from . import common
from .smd_table1 import SCALES, VARIANTS
from .tables import by_variant, compare, p_text, write_report, write_table

CLAIM = ("Li, van Breugel & van der Schaar (2024), Fig. 3: SMD improves quality (F1 of precision and recall) much "
         "more at few sampling steps than at many, for both DDPM and DDIM samplers")
SAMPLERS = ("ddpm", "ddim")  # DDIM with eta = 0 (deterministic)
STEPS = {"tiny": (5, 20), "small": (10, 20, 50, 100), "paper": (50, 100, 200, 500, 1000)}
MINUTES = {"tiny": 0.3, "small": 25}  # measured: 21 min with smd-table1's runs already trained (else add its 100)
QUALITY = ("f1", "precision", "recall", "fd")
PASSES = len(SAMPLERS) * sum(STEPS["paper"]) / 1000  # sampling cost per model at paper scale, in T-step passes


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True, **options) -> Path:
    study = common.Study("smd-fig3", out, scale, SCALES[scale], seeds, progress, **options)
    if not study.image:
        raise DiffpropError(f"smd-fig3 scores images (F1 on image features); {study.data_name} is not an "
                                   f"image dataset")
    study.announce(VARIANTS, passes=len(SAMPLERS) * sum(STEPS[scale]) / study.scale.T)
    study.train_all(VARIANTS)
    rows = []
    for seed in range(study.seeds):
        for variant, extra in VARIANTS.items():
            rec = study.train(variant, extra, seed)
            denoiser = load_run(rec["dir"]).denoiser
            for sampler in SAMPLERS:
                for k in STEPS[scale]:
                    x = study.draw(denoiser, study.scale.samples, 10_000 + seed, sampler, k, cache=Path(rec["dir"]))
                    q = study.quality(x, seed)
                    rows.append({"setting": f"{variant}, {sampler} sampler, K = {k}", "variant": variant, "seed": seed,
                                 "sampler": sampler, "K": k, **{c: q[c] for c in QUALITY}})
    study.out.mkdir(parents=True, exist_ok=True)
    table = write_table(study.out, rows, QUALITY, key="setting")
    tests = {(s, k): compare(by_variant([r for r in rows if r["sampler"] == s and r["K"] == k], QUALITY), "f1",
                             "ddpm+smd", ["ddpm"], lower_better=False, alpha=0.05)[0]
             for s in SAMPLERS for k in STEPS[scale]}
    plot(rows, STEPS[scale], study.out / "quality_vs_steps.png")
    lines = "".join(f"- {s}, K = {k}: F1 SMD {t['mean_ours']:.3f} vs DDPM {t['mean_other']:.3f} (gain "
                    f"{t['mean_ours'] - t['mean_other']:+.3f}, {p_text(t['p'])})\n" for (s, k), t in tests.items())
    return write_report(study.out, study.title, CLAIM,
                        f"{study.describe(scored=False)} Each model is sampled with DDPM (sigma_t^2 = beta_t) and "
                        f"DDIM (eta = 0) respaced to K in {list(STEPS[scale])}, {study.scale.samples} samples each; "
                        f"F1, precision and recall (k = 3) and the Fréchet distance on {study.extractor.name} "
                        "features.",
                        table + "\n" + lines, {"quality_vs_steps.png": "quality against sampling steps"},
                        verdict(tests, STEPS[scale], study.seeds))


def verdict(tests: dict, steps: tuple[int, ...], seeds: int) -> str:
    if seeds < 2:
        return "undecided: one seed gives no t-test (run `--scale small`, 3 seeds)."
    held = []
    for s in SAMPLERS:
        few, many = tests[(s, steps[0])], tests[(s, steps[-1])]
        gain_few, gain_many = (t["mean_ours"] - t["mean_other"] for t in (few, many))
        held.append((s, few["significant"] and gain_few > gain_many, gain_few, gain_many, few["p"]))
    n = sum(h for _, h, *_ in held)
    word = "yes" if n == len(held) else "partly" if n else "no"
    return f"{word}: " + "; ".join(
        f"{s}: F1 gain of SMD {g1:+.3f} at K = {steps[0]} (p = {p:.3g}) vs {g2:+.3f} at K = {steps[-1]}"
        for s, _, g1, g2, p in held) + "."


def plot(rows: list[dict], steps: tuple[int, ...], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("f1", "fd")):
        for i, variant in enumerate(VARIANTS):
            for sampler, style in zip(SAMPLERS, ("-", "--")):
                vals = [np.array([r[metric] for r in rows if r["variant"] == variant and r["sampler"] == sampler
                                  and r["K"] == k]) for k in steps]
                ax.errorbar(steps, [v.mean() for v in vals], yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals],
                            ls=style, color=f"C{i}", marker="o", ms=3, capsize=2, label=f"{variant}, {sampler}")
        ax.set(xscale="log", xlabel="sampling steps K",
               ylabel="F1 (higher is better)" if metric == "f1" else "Fréchet distance (lower is better)")
    axes[0].legend(fontsize=7)
    return _save(fig, out)
