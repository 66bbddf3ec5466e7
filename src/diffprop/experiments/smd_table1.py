"""``smd-table1`` (002 Sec. 5.2, Table 1): DDPM and DDPM with soft mixture denoising on image data, same U-Net, same
budget, T = 1000 sampling steps; the FID-style metric's mean ± std over seeds and a Welch t-test.

At CPU scales the data are scikit-learn's digits and the metric is the Fréchet distance on the in-domain digits
classifier's features (:mod:`diffprop.metrics.digits_classifier`); ``--scale paper --data cifar10:PATH
--inception-weights PATH`` is 002's CIFAR-10 row (FID on 10k samples). The DDPM and SMD runs of ``smd-table1``,
``smd-fig3`` and ``smd-fig4`` are the same models: whichever of them runs first trains them, the others reuse them
(:meth:`.common.Study.finished_elsewhere`) when their folders sit side by side (the default, ``runs/reproduce/``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import common
from .smd_grid import SMD
from .tables import by_variant, compare, describe_tests, write_report, write_table

CLAIM = ("Li, van Breugel & van der Schaar (2024), Table 1: soft mixture denoising improves DDPM's FID on every "
         "image dataset at T = 1000 "
         "(CIFAR-10 3.78 -> 3.13, LSUN-Conference 4.15 -> 3.52, LSUN-Church 3.65 -> 3.17, CelebA-HQ 6.78 -> 6.35; "
         "12-17 % lower)")
VARIANTS = {"ddpm": [], "ddpm+smd": SMD}
SCALES = {
    "tiny": replace(common.SCALES["tiny"], data="digits", steps=40, samples=64,
                    train=("train.batch_size=32", "train.lr=2e-3", "train.warmup_steps=5")),
    # small: 2 CPU cores at ~0.5 s per training step and ~1.2 s per sampling step of 1000 images (measured here)
    "small": replace(common.SCALES["small"], data="digits", steps=1000, samples=500,
                     train=("train.batch_size=128", "train.lr=1e-3", "train.lr_schedule=cosine",
                            "train.warmup_steps=100")),
    # 002 Sec. 5.2: Ho et al.'s DDPM on the user's CIFAR-10, T = 1000, FID on 10k samples
    "paper": replace(common.SCALES["paper"], samples=10_000),
}
MINUTES = {"tiny": 0.3, "small": 100}  # measured: ~100 min of one core (6 runs, 1000 steps + 500 samples each)
GAIN = 0.05  # relative improvement of the metric's mean that counts as a gain (002: 6-17 %)


def gain_line(tests: list[dict]) -> str:
    return "".join(f"- {t['ours']} vs {t['other']}: {100 * (1 - t['mean_ours'] / t['mean_other']):+.1f} % "
                   f"(positive = SMD lower)\n" for t in tests)


def verdict(t: dict, seeds: int, metric: str) -> str:
    """Yes when SMD's mean is lower by at least :data:`GAIN` and significantly (Welch p < 0.05)."""
    rel = 1 - t["mean_ours"] / t["mean_other"]
    if seeds < 2:
        return "undecided: one seed gives no t-test (run `--scale small`, 3 seeds)."
    word = "yes" if rel >= GAIN and t["significant"] else "partly" if t["better"] else "no"
    return (f"{word}: DDPM + SMD's {metric} is {100 * abs(rel):.1f} % {'lower' if rel > 0 else 'higher'} than DDPM's "
            f"({t['mean_ours']:.4g} vs {t['mean_other']:.4g}, Welch p = {t['p']:.3g}; the paper: 12-17 % lower).")


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True, **options) -> Path:
    study = common.Study("smd-table1", out, scale, SCALES[scale], seeds, progress, **options)
    study.announce(VARIANTS)
    rows = study.train_and_score(VARIANTS)
    cols = ["steps", "ms_per_step", *study.columns]
    table = write_table(study.out, rows, cols)
    tests = compare(by_variant(rows, cols), study.metric, "ddpm+smd", ["ddpm"], alpha=0.05)
    setup = (f"{study.describe()} SMD: the official design of Li, van Breugel & van der Schaar (2024) (a latent "
             f"network g_xi on (x_t, eta) and two hypernet blocks f_phi around the U-Net, latent 16), trained with "
             f"their loss (Eq. 14, one eta per example), sampled with a fresh eta every step (their Alg. 2).")
    return write_report(study.out, study.title, CLAIM, setup,
                        table + "\n" + describe_tests(tests, study.metric) + gain_line(tests),
                        {p: "samples" for p in study.pictures}, verdict(tests[0], study.seeds, study.metric))
