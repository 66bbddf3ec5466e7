"""``consistency``: consistency models (Song et al. 2023; Song & Dhariwal 2023). Consistency distillation (CD) and
consistency training (CT) without a teacher, both under the EDM process, sampled in 1, 2 and 4 steps, against the
teacher itself with DDIM and Heun at the same number of network evaluations (NFE); 3 seeds. On gmm-grid the teacher
is the exact oracle; on digits (``--data digits``) a DDPM trained first (the digits DDPM of
:data:`.common.DIGITS_DDPM`, shared with ``reduce``), scored with the digits classifier's Frechet distance."""
from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import config_from_dict, read_toml
from ..errors import DiffpropError
from ..oracle import OracleDenoiser
from ..plots import _save, plt
from ..runs import load_run
from ..samplers import sample
from . import common
from .samplers import quality, steps_for
from .tables import write_report

CLAIM = ("Song et al. (2023): a consistency model distilled from a diffusion model samples in 1-2 network evaluations "
         "with quality close to the teacher's multistep sampling, far above the teacher's own at that NFE; "
         "consistency training needs no teacher")
GOAL = (". Goal set here: 2-step CD from the exact oracle covers all 49 modes of gmm-grid with >= 80 % of its samples "
        "within 4 std of a mode")
CM = ["diffusion.process=edm", "diffusion.parameterization=cm", "sample.sampler=consistency"]
VARIANTS = {"cd": [*CM, "objective.loss=cd", "cm.teacher=oracle", "cm.schedule=fixed"],
            "ct": [*CM, "objective.loss=ct", "cm.schedule=doubling"]}
SCALES = {"tiny": replace(common.SCALES["tiny"], data="gmm-grid", steps=40, samples=256,
                          train=("train.batch_size=64", "train.lr=2e-3", "train.warmup_steps=10",
                                 "data.num_samples=2048")),
          "small": replace(common.SCALES["small"], data="gmm-grid", steps=2500, seeds=3, samples=2000,
                           train=("train.batch_size=256", "train.lr=2e-3", "train.lr_schedule=cosine",
                                  "train.warmup_steps=100"),
                           mlp=("model.width=128", "model.depth=3"))}
# digits: (the teacher's scale, the students' scale); the students share the teacher's data, T and U-Net. `small`
# trains 3200 steps of batch 64: at 800 steps seed 0's 2-step fd was 50 (CD) and 30 (CT), at 3200 steps 21 and 14.5.
# The whole `--data digits --jobs 2` run took 48 min on 2 cores (CD 222 ms per step, CT 143; docs/results.md)
DIGITS = {"tiny": (replace(common.SCALES["tiny"], data="digits"), replace(SCALES["tiny"], data="digits", samples=128)),
          "small": (common.DIGITS_DDPM, replace(common.DIGITS_DDPM, steps=3200, train=(
              "train.batch_size=64", "train.lr=1e-3", "train.lr_schedule=cosine", "train.warmup_steps=100")))}
IMAGE_CM = [*CM, "diffusion.sigma_data=0.5"]  # Song et al. 2023's sigma_data for images in [-1, 1]
CLOSE_FD = 1.25  # digits: 2-step CD is "close" to the teacher's multistep when its fd is within this factor
GOAL_FD = (". Goal set here: 2-step CD's Frechet distance below the teacher's DDIM at 1 and 2 NFE and within "
           f"{CLOSE_FD}x of the teacher's Heun at 49 NFE")
MINUTES = {"tiny": 0.3, "small": 33}  # small: measured 32.9 min (2 cores shared with ~6 jobs, load 12-15)
NFES = (1, 2, 4)
REFERENCE = ("heun", 25)  # the teacher's multistep quality: Heun at 49 NFE on the rho = 7 grid
GOAL_COVERAGE, GOAL_HQ = 1.0, 0.8
COLUMNS = ("kl_estimate", "high_quality_fraction", "mode_coverage", "within_mode_std_ratio")


def teacher_settings(nfe: int) -> list[tuple[str, int]]:
    """The oracle's DDIM at ``nfe`` steps and Heun at the most steps that cost at most ``nfe`` evaluations."""
    heun = steps_for("heun", nfe) or steps_for("heun", nfe - 1)
    return [("ddim", nfe), ("heun", heun)]


def variants(teacher: str | None) -> dict[str, list[str]]:
    """The CD and CT configs: :data:`VARIANTS` on gmm-grid (``teacher`` None: the exact oracle); on images CD
    distils the run folder ``teacher`` and both use ``sigma_data = 0.5``."""
    if teacher is None:
        return VARIANTS
    return {"cd": [*IMAGE_CM, "objective.loss=cd", f"cm.teacher={teacher}", "cm.schedule=fixed"],
            "ct": [*IMAGE_CM, "objective.loss=ct", "cm.schedule=doubling"]}


def columns(study) -> tuple[str, ...]:
    return tuple(study.columns) if study.image else COLUMNS


def draw(study, denoiser, sampler: str, steps: int, seed: int) -> tuple[dict, np.ndarray]:
    """One setting's samples (seed ``20000 + seed``) and their quality; images are clamped to [-1, 1] first (every
    sampler alike: the consistency and Heun steps do not clip x0 as diffprop's DDPM and DDIM do on images)."""
    res = sample(denoiser.to(study.device), study.scale.samples, tuple(study.dataset.data_shape), sampler=sampler,
                 steps=steps, seed=20_000 + seed, device=study.device, batch_size=common.SAMPLE_BATCH, progress=False)
    x = res.x.float().cpu()
    q = {}
    if bool(x.isfinite().all()):
        q = study.quality(x.clamp(-1, 1), seed) if study.image else quality(x, study.dataset.mixture)
    return {"nfe": res.nfe, **{c: float(q.get(c, math.nan)) for c in columns(study)}}, x.numpy()


def summarise(rows: list[dict], cols=COLUMNS) -> list[dict]:
    """Per (model, sampler, steps): the mean and standard deviation over seeds of every column."""
    out = {}
    for r in rows:
        out.setdefault((r["model"], r["sampler"], r["steps"]), []).append(r)
    table = []
    for (m, s, k), rs in out.items():
        row = {"model": m, "sampler": s, "steps": k, "nfe": rs[0]["nfe"], "seeds": len(rs)}
        for c in cols:
            v = np.array([r[c] for r in rs], dtype=float)
            row[c], row[c + "_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        table.append(row)
    return table


def verdict(table: list[dict]) -> str:
    """The goal on 2-step CD (mean over seeds); CD's 1- and 2-step mode coverage against the teacher's DDIM at the same
    NFE (not the KL estimate: a collapse onto the central mode, which DDIM's first step from sigma = 80 lands on, reads
    log 49 = 3.9 nats, better than any spread-out sample that misses the modes' 0.05 scale); and 2-step CD's
    within-4-std fraction against the teacher's multistep (``REFERENCE``), "close" within 0.1."""
    def get(m, s, k):
        return next((r for r in table if (r["model"], r["sampler"], r["steps"]) == (m, s, k)), None)

    cd2 = get("cd", "consistency", 2)
    if cd2 is None:
        return "undecided: no 2-step CD row."
    reached = cd2["mode_coverage"] >= GOAL_COVERAGE and cd2["high_quality_fraction"] >= GOAL_HQ
    parts = [f"2-step CD covers {cd2['mode_coverage']:.0%} of the 49 modes with {cd2['high_quality_fraction']:.1%} of "
             f"samples within 4 std (goal: 100 % and >= 80 %: {'reached' if reached else 'not reached'})"]
    beats = []
    for k in (1, 2):
        cd, ddim = get("cd", "consistency", k), get("oracle", "ddim", k)
        if cd and ddim:
            beats.append(cd["mode_coverage"] > ddim["mode_coverage"])
            parts.append(f"at {k} NFE CD covers {cd['mode_coverage']:.0%} of the modes, the teacher's DDIM "
                         f"{ddim['mode_coverage']:.0%}")
    ref = get("oracle", *REFERENCE)
    close = ref is not None and cd2["high_quality_fraction"] >= ref["high_quality_fraction"] - 0.1
    if ref is not None:
        parts.append(f"within 4 std: 2-step CD {cd2['high_quality_fraction']:.1%}, the teacher's Heun at {ref['nfe']} "
                     f"NFE {ref['high_quality_fraction']:.1%}")
    word = "yes" if reached and close and all(beats) else "partly" if reached or close or any(beats) else "no"
    return f"{word}: " + "; ".join(parts) + "."


def verdict_fd(table: list[dict]) -> str:
    """Digits: 2-step CD's Frechet distance against the teacher's DDIM at 1 and 2 NFE (lower beats it) and against
    the teacher's multistep (``REFERENCE``; "close" within a factor :data:`CLOSE_FD`)."""
    rows = {(r["model"], r["sampler"], r["steps"]): r for r in table}
    cd2, ref = rows.get(("cd", "consistency", 2)), rows.get(("teacher", *REFERENCE))
    if cd2 is None or ref is None:
        return "undecided: no 2-step CD or no multistep teacher row."
    parts, beats = [], []
    for k in (1, 2):
        cd, ddim = rows.get(("cd", "consistency", k)), rows.get(("teacher", "ddim", k))
        if cd and ddim:
            beats.append(cd["fd"] < ddim["fd"])
            parts.append(f"at {k} NFE CD's fd {cd['fd']:.3g}, the teacher's DDIM {ddim['fd']:.3g}")
    close = cd2["fd"] <= CLOSE_FD * ref["fd"]
    parts.append(f"2-step CD's fd {cd2['fd']:.3g} against the teacher's Heun at {ref['nfe']} NFE {ref['fd']:.3g} "
                 f"({'within' if close else 'not within'} {CLOSE_FD}x)")
    word = "yes" if close and beats and all(beats) else "partly" if close or any(beats) else "no"
    return f"{word}: " + "; ".join(parts) + "."


def plot_samples(pictures: dict, out: Path) -> Path:
    """Seed 0's samples of each (model, sampler, steps), one panel each, the 49 modes marked."""
    fig, axes = plt.subplots(1, len(pictures), figsize=(2.6 * len(pictures), 3.4), squeeze=False)
    for ax, ((m, s, k), x) in zip(axes[0], pictures.items()):
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set(xlim=(-4, 4), ylim=(-4, 4), xticks=[], yticks=[], aspect="equal")
        ax.set_title(f"{m} {s}\n{k} step(s)", fontsize=9)
    return _save(fig, out)


def markdown(table: list[dict], metrics=COLUMNS) -> str:
    cols = ("model", "sampler", "steps", "nfe", *metrics)
    md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in table:
        cells = [str(r[c]) for c in cols[:4]]
        cells += [f"{r[c]:.3g}" + (f" ± {r[c + '_std']:.2g}" if r["seeds"] > 1 else "") for c in metrics]
        md += "| " + " | ".join(cells) + " |\n"
    return md


def teachers(out: Path, scale: str, seeds: int | None, progress: bool, **options) -> dict[int, str] | None:
    """Digits: each seed's teacher, a DDPM trained (or reused, also from a sibling reproduction such as ``reduce``)
    in ``out/runs/teacher-seed*``; gmm-grid: None (the exact oracle)."""
    if options.get("data") != "digits":
        return None
    study = common.Study("consistency", out, scale, DIGITS[scale][0], seeds, progress, **options)
    study.train_all({"teacher": []})
    return {s: study.train("teacher", [], s)["dir"] for s in range(study.seeds)}


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True, **options) -> Path:
    ddpm = teachers(Path(out), scale, seeds, progress, **options)
    student = SCALES[scale] if ddpm is None else DIGITS[scale][1]
    study = common.Study("consistency", out, scale, student, seeds, progress, **options)
    if ddpm is None and study.dataset.mixture is None:
        raise DiffpropError(f"consistency distils the exact oracle of a Gaussian mixture or, on digits, a DDPM it "
                            f"trains first; {study.data_name} is neither")
    cols = columns(study)
    study.train_all(lambda seed: variants(ddpm and ddpm[seed]))
    rows, pictures, records = [], {}, []
    todo = [(v, s) for s in range(study.seeds) for v in VARIANTS]
    for variant, seed in tqdm(todo, desc="consistency: runs", unit="run", disable=not progress):
        rec = study.train(variant, variants(ddpm and ddpm[seed])[variant], seed)
        records.append(rec)
        model = load_run(rec["dir"]).denoiser
        for k in NFES:
            row, x = draw(study, model, "consistency", k, seed)
            rows.append({"model": variant, "sampler": "consistency", "steps": k, "seed": seed, **row})
            if seed == 0:
                pictures[variant, "consistency", k] = x
        if variant == "cd":  # the teacher: the oracle on the student's process (sigma_data of the same data), or
            # the trained DDPM on its own
            name = "oracle" if ddpm is None else "teacher"
            teacher = OracleDenoiser(study.dataset.mixture, model.process) if ddpm is None else \
                load_run(ddpm[seed]).denoiser
            for sampler, steps in dict.fromkeys([*(st for k in NFES for st in teacher_settings(k)), REFERENCE]):
                row, x = draw(study, teacher, sampler, steps, seed)
                rows.append({"model": name, "sampler": sampler, "steps": steps, "seed": seed, **row})
                if seed == 0 and (sampler, steps) in (("ddim", 4), REFERENCE if ddpm else ()):
                    pictures[name, sampler, steps] = x
    study.out.mkdir(parents=True, exist_ok=True)
    with open(study.out / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table = summarise(rows, cols)
    md = markdown(table, cols)
    (study.out / "table.md").write_text(md)
    if study.image:
        named = {" ".join(map(str, key)): torch.from_numpy(x) for key, x in pictures.items()}
        figures = {p: f"{name} step(s), seed 0" for p, name in zip(study.picture(named), named)}
    else:
        figures = {plot_samples(pictures, study.out / "samples.png").name: "samples (seed 0)"}
    ms = {v: np.mean([r["ms_per_step"] for r in records if r["variant"] == v and "ms_per_step" in r] or [math.nan])
          for v in VARIANTS}
    cfg = study.config(variants(ddpm and ddpm[0])["cd"], 0)
    if ddpm is None:
        data = ("`gmm-grid` (49 modes of std 0.05) under the EDM process (sigma in [0.002, 80], sigma_data = the "
                "data's std)")
        net = f"a residual MLP (width {cfg.model.width}, depth {cfg.model.depth})"
        teacher_text = "the exact oracle as teacher"
    else:
        t = config_from_dict(read_toml(Path(ddpm[0]) / "config.toml"))  # the teacher as it was trained
        data = ("`digits` (8x8, pixels in [-1, 1]) under the EDM process (sigma in [0.002, 80], sigma_data = 0.5); "
                f"the teacher a DDPM of each seed (T = {t.diffusion.T}, {t.train.steps} steps, batch "
                f"{t.train.batch_size}, LR {t.train.lr:g} ({t.train.lr_schedule}), `{Path(ddpm[0]).parent}/`), "
                "asked at the time of the same log-SNR")
        net = f"the U-Net preset `{study.scale.unet}`"
        teacher_text = "the trained DDPM as teacher"
    setup = (f"{data}; consistency models f = c_skip x + c_out F (Song et al. 2023 App. C) on {net}, batch "
             f"{cfg.train.batch_size}, LR {cfg.train.lr:g} ({cfg.train.lr_schedule}), sampling EMA "
             f"{cfg.train.ema_decay}, {study.scale.steps} steps per run. CD: {teacher_text}, one Heun step between "
             f"adjacent points of the N = 18 grid, target EMA 0.95, squared L2 (Song et al. 2023's CD settings); CT: "
             f"Song & Dhariwal 2023 (N doubling from 10 to 1280, target = the online network, pseudo-Huber, "
             f"log-normal pairs). Samples: the training EMA weights, {study.scale.samples} per setting and seed, "
             f"consistency sampling on the rho = 7 grid; the teacher with DDIM and Heun at the same NFE"
             + (" (images clamped to [-1, 1], scored by the digits classifier's Frechet distance fd)" if study.image
                else "") + f". Mean ± std over {study.seeds} seed(s); ms per training step: "
             + ", ".join(f"{v} {t:.0f}" for v, t in ms.items()) + ".")
    return write_report(study.out, study.title, CLAIM + (GOAL_FD if study.image else GOAL), setup, md, figures,
                        verdict_fd(table) if study.image else verdict(table))


__all__ = ["run", "summarise", "teacher_settings", "verdict", "verdict_fd"]
