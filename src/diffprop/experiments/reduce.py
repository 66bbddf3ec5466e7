"""``reduce``: which method lowers error propagation? Vanilla DDPM against Li & van der Schaar (2024)'s EPDM, the
chain-started cumulative regularizer (:mod:`diffprop.losses.chain_mmd`), denoising at the chain's own states
(:mod:`diffprop.losses.chain_denoise`), ADM-IP (Ning et al. 2023), FP-Diffusion in
its fixed form (Lai et al. 2022), Consistent DM (Daras et al. 2023), and two training-free samplers on vanilla's
models: epsilon scaling (Ning et al. 2024) and time shifting (Li et al. 2024), each with its one parameter tuned on
draws of another seed (:mod:`diffprop.tune`).

Every trained method fine-tunes the same vanilla DDPM of each seed, trained to convergence first (``base/``), as the
demo applies a regularizer to a trained model; each runs twice: for the scale's number of steps, and for the steps
its cost per step (measured side by side with vanilla's) buys in the time vanilla takes for them. Each model is
scored on DDPM samples (the quality metric of :class:`~.evaluation.Evaluator`) and by its cumulative error at t = 1
(Li & van der Schaar 2024, Eq. 12-13) with the median-bandwidth RBF and one at the mode scale (twice the largest mode
std on Gaussian mixtures); each method is compared with vanilla by Welch's t-test at alpha = 0.01.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import DiffpropError
from ..runs import load_run
from ..samplers import sample
from ..tune import GRIDS as TUNE_GRIDS, method_options, mixture_kl, pooled_shift, tune
from . import common
from .curves import mode_bandwidth, plot_curves, reference_curve
from .tables import by_variant, compare, describe_tests, standing, write_report, write_table

CLAIM = ("diffprop's question: does a method lower the cumulative error at t = 1 and the final quality significantly "
         "(p < 0.01) against vanilla DDPM at equal steps, and is it not worse at equal wall clock?")
# Every method fine-tunes seed s's vanilla base, trained to convergence on the demo's budget (the default recipe:
# from scratch, 4000 steps leave gmm-grid DDPMs far from it, 0.28 of samples near a mode; docs/results.md, Table 1)
BASES = {"tiny": replace(common.SCALES["tiny"], data="gmm-grid"),
         "small": replace(common.SCALES["small"], data="gmm-grid", steps=12_000,
                          train=("train.batch_size=512", "train.lr=3e-3", "train.lr_schedule=cosine"))}
SCALES = {"tiny": replace(BASES["tiny"], steps=60, samples=256, num=128,
                          train=(*common.SCALES["tiny"].train, "train.warmup_steps=0", "train.lr=1e-3")),
          "small": replace(BASES["small"], steps=1000, grid=(1, 3, 10, 30, 100, 300, 1000),
                           train=("train.batch_size=512", "train.lr=1e-3", "train.lr_schedule=cosine",
                                  "train.warmup_steps=0"))}
# digits at `small` (--data digits): the digits DDPM of common.DIGITS_DDPM as the base, short fine-tunes whose EMA
# follows them faster (0.99)
DIGITS = replace(common.DIGITS_DDPM, steps=200, train=("train.batch_size=128", "train.lr=3e-4", "train.warmup_steps=0",
                                                     "train.lr_schedule=cosine", "train.ema_decay=0.99"))
MINUTES = {"tiny": 1.5, "small": 45}  # tiny measured; small: measured over two invocations (docs/results.md)
TRAINED = {"vanilla": [],
           "epdm-paper": ['objective.regularizers=["epdm"]', "objective.lambda_nl=0.8", "epdm.preset=paper"],
           "chain-mmd": ['objective.regularizers=["chain_mmd"]'],
           "chain-denoise": ['objective.regularizers=["chain_denoise"]'],
           # only where the empirical target averages >= 4 examples (on digits it memorises at t <~ 20 otherwise)
           "chain-denoise-ess": ['objective.regularizers=["chain_denoise"]', "chain_denoise.min_ess=4"],
           "adm-ip": ['objective.regularizers=["input_perturbation"]', "objective.lambda_nl=0"],
           "fp-fixed": ['objective.regularizers=["fokker_planck"]', 'fokker_planck.form="fixed"'],
           "consistent-dm": ['objective.regularizers=["consistency"]']}
SAMPLING = {"eps-scaling": "vanilla + epsilon scaling", "time-shift": "vanilla + time shift"}
TIMING = {"tiny": (1, 3), "small": (3, 20)}  # rounds x steps of the side-by-side cost per step
GRIDS = {"tiny": {"eps-scaling": (1.0, 1.01), "time-shift": (0, 4)}, "small": {}}  # {}: diffprop.tune's own grids
# per-dataset weights: chain_mmd's default 50 puts its gradient at 0.12x the denoising loss's on gmm-grid's MLP but at
# 2x on digits' U-Net (medians 0.0076 per unit weight against 0.18), which damages the samples (fd 29.5 against 8.7);
# weight 3 measured 0.13-0.15x (docs/results.md, "Gradient norms on digits")
WEIGHTS = {"digits": {"chain-mmd": ["chain_mmd.weight=3"]}}
DIGITS_GRIDS = {"eps-scaling": (0.9, 0.95, 0.98, 1.0, 1.02, 1.05, 1.1), "time-shift": (0, 2, 8, 32)}
ALPHA = 0.01


def chosen(methods: str | None, data: str | None = None) -> tuple[dict, dict]:
    """``(trained, sampling)``: the subsets of :data:`TRAINED` and :data:`SAMPLING` named in ``methods``
    (comma-separated; None: all), vanilla always among them; the trained ones with ``data``'s :data:`WEIGHTS`."""
    names = list(TRAINED) + list(SAMPLING) if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in TRAINED and m not in SAMPLING]
    if unknown or not names:
        raise DiffpropError(f"reduce --methods: {', '.join(unknown) or 'none given'} is not a method; allowed: "
                            f"{', '.join([*TRAINED, *SAMPLING])}")
    weights = WEIGHTS.get(data, {})
    return ({k: [*v, *weights.get(k, [])] for k, v in TRAINED.items() if k == "vanilla" or k in names},
            {k: v for k, v in SAMPLING.items() if k in names})


def scales(scale: str, data: str | None) -> tuple[common.Scale, common.Scale, dict]:
    """``(base, fine-tune, tuning grids)`` of ``scale`` on ``data`` (None: gmm-grid): :data:`DIGITS` for digits at
    ``small``, else :data:`BASES` and :data:`SCALES` with the data replaced."""
    if data == "digits" and scale == "small":
        return common.DIGITS_DDPM, DIGITS, DIGITS_GRIDS
    return BASES[scale], SCALES[scale], GRIDS[scale]


def _sampling_rows(study, rows: list[dict], kernels, grids: dict, sampling: dict) -> list[dict]:
    """Epsilon scaling and time shifting on each seed's vanilla model: the value tuned on seed 1's samples, then
    scored on the samples vanilla is scored on (seed 10000 + s)."""
    mixture, out = study.dataset.mixture, []
    metric = study.metric
    tune_q = mixture_kl(mixture) if mixture is not None else (lambda x: study.quality(x, 1)[metric])
    for r in (r for r in rows if r["variant"] == "vanilla"):
        den = load_run(r["dir"]).denoiser.to(study.device)
        base = {"var_type": den.var_type, **({"clip_x0": 1.0} if study.image else {})}
        for method, name in sampling.items():
            opts = dict(base)
            if method == "time-shift" and not study.image:  # low-dimensional data: pooled variance (diffprop.tune)
                opts.update(pooled_shift(study.dataset.x))
            grid = grids.get(method, TUNE_GRIDS[method])  # the grid itself in the key: a wider default re-tunes
            tuned = common.cached(r["dir"], "tune", [method, list(grid), study.scale.samples, opts, metric],
                                  lambda: tune(den, tuple(study.dataset.data_shape), method, tune_quality=tune_q,
                                               eval_quality=tune_q, quality_name=metric, sampler="ddpm",
                                               grid=grid, num=study.scale.samples, tune_seed=1,
                                               eval_seed=2, options=opts, device=study.device))
            sampler, options = method_options(method, tuned["chosen"], "ddpm", opts)
            seed = r["seed"]
            x = sample(den, study.scale.samples, tuple(study.dataset.data_shape), sampler=sampler, seed=10_000 + seed,
                       device=study.device, batch_size=common.SAMPLE_BATCH, progress=False, **options).x.float().cpu()
            q = study.quality(x, seed)
            row = {"variant": name, "seed": seed, "budget": "steps", "steps": r["steps"], "chosen": tuned["chosen"],
                   **{c: q.get(c, float("nan")) for c in study.columns}}
            if method == "eps-scaling":  # the DDPM chain of the scaled model: its propagation curve
                from ..eps_scaling import EpsScaled

                row["curves"] = study.cached_curves(EpsScaled(den, tuned["chosen"]), kernels, seed, r["dir"],
                                                    tag=f"eps-scaling {tuned['chosen']}")
            out.append(row)
    return out


def _tests(rows: list[dict], cols, metrics) -> dict[str, list[dict]]:
    groups = by_variant(rows, cols)
    return {m: [t for v in groups if v != "vanilla" for t in compare(groups, m, v, ["vanilla"], alpha=ALPHA)]
            for m in metrics}


def paired(rows: list[dict], metrics) -> str:
    """Each method against vanilla by seed (a trained one fine-tunes the same base, a training-free sampler draws
    from vanilla's own model with the same noise): the mean difference and the paired t-test's p on each of
    ``metrics``, as report lines; beside the Welch tests, which ignore the pairing."""
    by = {(r["variant"], r["seed"]): r for r in rows}
    lines = []
    for v in dict.fromkeys(r["variant"] for r in rows):
        seeds = sorted(s for (w, s) in by if w == v and ("vanilla", s) in by)
        if v == "vanilla" or len(seeds) < 2:
            continue
        for m in metrics:
            a = np.array([by[v, s][m] for s in seeds], dtype=float)
            b = np.array([by["vanilla", s][m] for s in seeds], dtype=float)
            if np.isfinite(a - b).all():
                lines.append(f"- {v} - vanilla, {m}: {np.mean(a - b):+.4g} (per seed "
                             + ", ".join(f"{d:+.3g}" for d in a - b) + f"), paired t-test p = "
                             f"{stats.ttest_rel(a, b).pvalue:.3g}\n")
    return "".join(lines)


def verdict(steps_tests: dict, time_tests: dict, metric: str, t1: str, seeds: int) -> tuple[str, str | None]:
    """(the verdict sentence, the best method or None): a method passes when both its quality metric and its
    cumulative error at t = 1 are significantly lower than vanilla's at equal steps and its quality is not
    significantly worse at equal wall clock."""
    if seeds < 2:
        return "undecided: one seed gives no t-test (run `--scale small`, 3 seeds).", None
    better = lambda t: t["significant"]  # noqa: E731  (lower and p < ALPHA)
    worse = lambda t: t["p"] < ALPHA and not t["better"]  # noqa: E731
    q = {t["ours"]: t for t in steps_tests[metric]}
    c = {t["ours"]: t for t in steps_tests.get(t1, [])}
    w = {t["ours"]: t for t in time_tests.get(metric, [])}
    passing = [m for m in q if better(q[m]) and m in c and better(c[m]) and not (m in w and worse(w[m]))]
    if passing:
        best = min(passing, key=lambda m: q[m]["mean_ours"])
        return (f"yes: {', '.join(passing)} meet the goal; the best, {best}, has {metric} {q[best]['mean_ours']:.4g} "
                f"against vanilla's {q[best]['mean_other']:.4g} (p = {q[best]['p']:.2g})."), best
    lines = "; ".join(f"{m}: {metric} {standing(t, ALPHA)} vanilla's (p = {t['p']:.2g})" for m, t in q.items())
    return f"no: no method meets the goal at p < {ALPHA}; {lines}.", None


def equal_time_steps(ms: dict[str, float], steps: int) -> dict[str, int]:
    """The steps each method affords in the time vanilla takes for ``steps``, from the side-by-side cost per step
    ``ms``: deterministic runs on a full LR schedule, unlike a wall-clock budget (``train.time_budget``), which
    trains at the schedule's start and depends on the load of the moment."""
    return {m: max(1, round(steps * ms["vanilla"] / t)) for m, t in ms.items()}


def tuned(rows: list[dict]) -> str:
    """The sentence on the training-free samplers' tuned parameters; empty when none ran (``--methods``)."""
    picks = [f"{r['variant']} seed {r['seed']}: {r['chosen']:g}" for r in rows if "chosen" in r]
    if not picks:
        return ""
    return ("\nEpsilon scaling's lambda and time shifting's window were tuned on samples of seed 1 (chosen: "
            + ", ".join(picks) + "); time shifting has no propagation curve (its chain visits other timesteps per "
            "sample).\n")


def run(out: Path, scale: str = "small", seeds: int | None = None, progress: bool = True, methods: str | None = None,
        **options) -> Path:
    trained, sampling = chosen(methods, options.get("data"))
    out = Path(out)
    base_scale, fine_scale, grids = scales(scale, options.get("data"))
    base = common.Study("reduce", out / "base", scale, base_scale, seeds, progress, **options)
    base.train_all({"vanilla": []})
    bases = {s: base.train("vanilla", [], s)["dir"] for s in range(base.seeds)}
    steps = common.Study("reduce", out, scale, fine_scale, seeds, progress, init_from=bases, **options)
    h = mode_bandwidth(steps)  # None off Gaussian mixtures: the median bandwidth only
    kernels = ("rbf",) if h is None else ("rbf", f"rbf@{h:g}")
    t1 = f"cumulative_t1[{kernels[-1]}]"
    rows = [{**r, "budget": "steps"} for r in steps.train_and_score(trained, kernels=kernels)]
    rows += _sampling_rows(steps, rows, kernels, grids, sampling)
    # vanilla's wall clock for the scale's steps, from the side-by-side timing (one run at a time, all threads), not
    # from its training record, which --jobs measures with the CPU shared
    ms = steps.time_per_step(trained, *TIMING[scale])
    budget = ms["vanilla"] * steps.scale.steps / 1e3
    afford = equal_time_steps(ms, steps.scale.steps)
    others = {m: [*extra, f"train.steps={afford[m]}", f"train.checkpoint_every={afford[m]}"]
              for m, extra in trained.items() if m != "vanilla"}
    timed = [{**r, "budget": "wall clock"} for r in rows if r["variant"] == "vanilla"]  # its own steps: that run
    (out / "equal-time").mkdir(parents=True, exist_ok=True)
    if others:  # (sampling-only --methods: nothing to train)
        clock = common.Study("reduce", out / "equal-time", scale, fine_scale, seeds, progress, init_from=bases,
                             **options)
        timed += [{**r, "budget": "wall clock"} for r in clock.train_and_score(others, kernels=kernels)]
    for r in rows + timed:
        r.update({f"cumulative_t1[{k}]": r["curves"][k]["cumulative"][0] if "curves" in r else float("nan")
                  for k in kernels})
    cols = ["steps", *steps.columns, *(f"cumulative_t1[{k}]" for k in kernels)]
    table = ("### At equal steps\n\n" + write_table(out, rows, cols) + "\n### At equal wall clock "
             f"(vanilla's {budget:.1f} s for its {steps.scale.steps} steps; each method trains the steps its cost per "
             "step, below, buys in that time, on its own LR schedule)\n\n"
             + write_table(out / "equal-time", timed, cols))
    cost = "| method | ms per step | vs vanilla |\n|---|---|---|\n" + "".join(
        f"| {v} | {m:.2f} | {m / ms['vanilla']:.2f}x |\n" for v, m in ms.items())
    steps_tests = _tests(rows, cols, (steps.metric, t1))
    time_tests = _tests(timed, cols, (steps.metric,))
    text, best = verdict(steps_tests, time_tests, steps.metric, t1, steps.seeds)
    (out / "summary.json").write_text(json.dumps({"best": best, "verdict": text, "ms_per_step": ms,
                                                  "wall_clock_budget_s": budget, "equal_time_steps": afford},
                                                 indent=1))
    figures = plot_curves(steps, [r for r in rows if "curves" in r], reference_curve(steps, rows, kernels),
                          title="cumulative error along the DDPM chain, equal steps")
    measured = (table + "\n### Cost per training step (side by side)\n\n" + cost + "\n"
                + "".join(describe_tests(ts, m) for m, ts in steps_tests.items())
                + "Paired by seed (every method fine-tunes, or samples from, the same base of its seed):\n"
                + paired(rows, (steps.metric, t1))
                + "At equal wall clock:\n" + describe_tests(time_tests[steps.metric], steps.metric)
                + tuned(rows))
    b = base.config([], 0).train
    setup = (f"Every run fine-tunes its seed's vanilla DDPM (trained from scratch for {b.steps} steps, batch "
             f"{b.batch_size}, LR {b.lr:g}, {b.lr_schedule}; folders `base/runs/`) with the method's objective"
             + "".join(f"; {m} with {', '.join(w)}" for m, w in WEIGHTS.get(options.get("data"), {}).items()
                       if m in trained)
             + ". " + steps.describe() + f" Propagation curves with N = M = {steps.scale.num}; kernels "
             f"{', '.join(kernels)}.")
    return write_report(out, steps.title, CLAIM, setup, measured,
                        {**figures, **{p: "samples" for p in steps.pictures}}, text)
