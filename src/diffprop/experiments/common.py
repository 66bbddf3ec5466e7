"""The harness the reproductions share: named variants (config overrides) x seeds, every run with the same data,
backbone and budget; each trained model sampled and scored, and optionally measured along its chain.

A :class:`Scale` fixes the data, T, backbone, budget and evaluation sizes; a :class:`Study` is one reproduction at
one scale writing into one folder. A run that already finished with the same config is reused, so an interrupted
reproduction continues where it stopped; so is one that a sibling reproduction (a folder beside ``out``) finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import read_json
from ..config import Config, load_config
from ..data import load_dataset
from ..diagnostics.propagation import Propagation
from ..errors import DiffpropError
from ..run_cache import RECORD, finished, train_all, train_or_reuse
from ..runs import load_run
from ..training import Trainer
from . import gpu
from .evaluation import SAMPLE_BATCH, Evaluator, slug  # noqa: F401 (SAMPLE_BATCH: the reproductions' batch)


@dataclass(frozen=True)
class Scale:
    """What one scale fixes; ``data=None`` makes the user name the data (``--data``)."""
    data: str | None
    T: int
    steps: int  # optimizer steps of every run: 000 trains every model on the same schedule
    seeds: int
    samples: int  # DDPM samples scored per run
    num: int  # N = M of a propagation curve (000 Sec. 4: 1000)
    grid: tuple[int, ...]  # module indices t of a curve (scaled to T)
    permutations: int  # of the curves' MMD noise floor
    train: tuple[str, ...]  # config overrides: batch, learning rate, EMA, ...
    mlp: tuple[str, ...]  # backbone for vector data
    unet: str  # U-Net preset for images
    gpu: bool = False  # refuse to start on a CPU unless forced
    time_budget: float | None = None  # seconds of training per run instead of ``steps`` (None: off)


SCALES = {
    "tiny": Scale("gmm-ring", T=100, steps=150, seeds=1, samples=256, num=128, grid=(1, 3, 10, 30, 100),
                  permutations=20, train=("train.batch_size=64", "train.lr=2e-3", "train.warmup_steps=10",
                                          "data.num_samples=2048"),
                  mlp=("model.width=32", "model.depth=2", "model.time_dim=16"), unet="tiny"),
    "small": Scale("gmm-ring", T=1000, steps=4000, seeds=3, samples=2000, num=1000,
                   grid=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), permutations=100,
                   train=("train.batch_size=256", "train.lr=2e-3", "train.lr_schedule=cosine"),
                   mlp=("model.width=128", "model.depth=3"), unet="tiny"),
    # 000 Sec. 6.1 and Ho et al. 2020 (configs/cifar10.toml); FID on 50k samples
    "paper": Scale(None, T=1000, steps=800_000, seeds=3, samples=50_000, num=1000,
                   grid=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), permutations=100,
                   train=("train.batch_size=128", "train.lr=2e-4", "train.warmup_steps=5000", "train.ema_decay=0.9999",
                          "train.mixed_precision=auto", "train.checkpoint_every=10000", "train.log_every=100"),
                   mlp=("model.width=256", "model.depth=4"), unet="ddpm-cifar10", gpu=True),
}

# The digits DDPM of `small` in the reproductions that need a trained digits model first (reduce's vanilla base,
# consistency's teacher; one config, so a sibling reproduction reuses the other's runs). A tiny U-Net step costs ~10x
# an MLP step on this CPU and a chain step 15x, so the chain is short (T = 100) and the budget a few minutes per seed;
# 500 samples per model (fd's floor at 500 real digits: 2.2-3.1)
DIGITS_DDPM = replace(SCALES["small"], data="digits", T=100, steps=2000, samples=500, num=500,
                      grid=(1, 2, 5, 10, 20, 50, 100), permutations=50,
                      train=("train.batch_size=128", "train.lr=1e-3", "train.lr_schedule=cosine",
                             "train.warmup_steps=100"))


def config_for(s: Scale, data: str, image: bool, extra: list[str], seed: int) -> Config:
    """The config of one run: the scale's data, T, backbone (U-Net for images, MLP otherwise) and budget, then
    the variant's overrides ``extra``."""
    backbone = ["model.kind=unet", f"model.preset={s.unet}"] if image else ["model.kind=mlp", *s.mlp]
    steps = s.steps if not s.time_budget else 10**8  # a wall-clock budget: stop by time, checkpoint at the end
    return load_config(None, [f"data.name={data}", f"diffusion.T={s.T}", *backbone, f"train.checkpoint_every={steps}",
                              *s.train, f"train.steps={steps}",
                              *([f"train.time_budget={s.time_budget}"] if s.time_budget else []), *extra,
                              f"seed={seed}"])


def paper_hours(s: Scale, variants: dict[str, list[str]], curves: int = 0, passes: float = 1.0) -> float:
    """The V100-hour estimate (:mod:`.gpu`) of ``variants`` at the (paper) scale ``s`` on CIFAR-10; ``passes``: how
    many T-step sampling passes of ``s.samples`` each model gets."""
    configs = [config_for(s, "cifar10:PATH", True, v, 0) for v in variants.values()]
    h = gpu.gpu_hours(configs, s.seeds, round(passes * s.samples), curves * s.num, (3, 32, 32))
    return h["train"] + h["sample"]


def log(message: str) -> None:
    print(message, flush=True)


def curve_lists(result: Propagation) -> dict[str, dict[str, list]]:
    """``{kernel: {column: list over t}}`` of a propagation result (JSON-ready)."""
    cols = ("cumulative", "modular", "floor", "amplification")
    return {k: {"t": result.column(k, "cumulative")[0].tolist(),
                **{c: result.column(k, c)[1].tolist() for c in cols}} for k in result.kernels}


def cached(run_dir: str | Path, kind: str, key, compute):
    """``compute()`` (JSON data) kept in ``run_dir/kind/`` under a hash of ``key`` (everything it depends on
    besides the run itself), computed once: re-runs of a reproduction, and siblings sharing a run, read it back."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(run_dir) / kind / f"{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)  # whole or absent
    return value


class Study:
    """One reproduction ``name`` at scale ``scale_name`` writing into ``out``: its configs, its runs (trained once,
    :mod:`diffprop.run_cache`, ``jobs`` at a time), their scores (:class:`.evaluation.Evaluator`, also as ``draw``,
    ``quality``, ``curves``, ...) and the report's setup sentence."""

    def __init__(self, name: str, out: Path, scale_name: str, scale: Scale, seeds: int | None, progress: bool, *,
                 data: str | None = None, inception_weights: str | None = None, force: bool = False, jobs: int = 1,
                 init_from: dict[int, str] | None = None):
        self.name, self.out, self.scale_name, self.scale = name, Path(out), scale_name, scale
        self.init_from = init_from or {}  # seed -> the run each of its variants fine-tunes (none: from scratch)
        self.seeds, self.progress, self.force, self.jobs = seeds or scale.seeds, progress, force, jobs
        self.data_name = data or scale.data
        if self.data_name is None:
            raise DiffpropError(f"{name} --scale {scale_name} trains on the paper's data: give it with --data "
                                f"(e.g. --data cifar10:PATH/cifar-10-batches-py)")
        self.inception_weights = inception_weights
        if force and not scale.gpu:
            raise DiffpropError(f"{name}: --force only lets a paper-scale run start without a GPU; --scale "
                                f"{scale_name} runs on the CPU anyway")
        self.dataset = load_dataset(self.data_name, seed=0)
        self.image = self.dataset.is_image
        if inception_weights is not None and not (self.image and self.data_name != "digits"):
            raise DiffpropError(f"{name}: --inception-weights is used only for FID on image data other than digits "
                                f"(which is scored with diffprop's own digits classifier); {self.data_name} does "
                                f"not use it")
        if self.image and self.data_name != "digits" and inception_weights is None:
            raise DiffpropError(f"{name}: FID on {self.data_name} needs the Inception-v3 weights: --inception-weights "
                                f"PATH (pt_inception-2015-12-05-6726825d.pth)")
        self.evaluator = Evaluator(self.dataset, self.data_name, scale, self.out, progress, inception_weights)
        self.metric, self.columns = self.evaluator.metric, self.evaluator.columns
        ev = self.evaluator  # what a reproduction scores with, under the names it has always used
        self.draw, self.quality, self.picture, self.curves, self.grid, self.oracle, self.device = \
            ev.draw, ev.quality, ev.picture, ev.curves, ev.grid, ev.oracle, ev.device
        self.pictures: list[str] = []  # (``out`` is made by the first training run: nothing is written before)

    @property
    def extractor(self):
        return self.evaluator.extractor

    @property
    def title(self) -> str:
        return f"{self.name} ({self.scale_name}, {self.data_name})"

    # -- configs and training ------------------------------------------------------------------------
    def config(self, extra: list[str], seed: int) -> Config:
        return config_for(self.scale, self.data_name, self.image, extra, seed)

    def announce(self, variants: dict[str, list[str]], curves: int = 0, passes: float = 1.0) -> None:
        """Paper scale: print the GPU-hour estimate (``passes`` T-step sampling passes per model), then refuse a
        CPU unless forced."""
        if not self.scale.gpu:
            return
        configs = [self.config(v, 0) for v in variants.values()]
        log(gpu.describe(configs, self.seeds, round(passes * self.scale.samples), curves * self.scale.num,
                         self.dataset.data_shape))
        if not torch.cuda.is_available() and not self.force:
            raise DiffpropError(f"{self.name} --scale {self.scale_name} needs a CUDA GPU (estimate above); "
                                f"--force runs it here anyway")

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.out / "runs" / f"{slug(variant)}-seed{seed}"

    def train(self, variant: str, extra: list[str], seed: int) -> dict:
        """Train one run, reuse a finished one of the same config (here or in a sibling reproduction) or resume an
        unfinished one from its latest checkpoint (step budgets only); its record: folder, steps, seconds (of this
        session's training)."""
        cfg, run_dir, init = self.config(extra, seed), self.run_dir(variant, seed), self.init_from.get(seed)
        if not finished(run_dir, cfg, init) and (other := self.finished_elsewhere(cfg, init)) is not None:
            return {"variant": variant, "seed": seed, **read_json(other / RECORD, "training record"),
                    "dir": str(other), "shared": True}
        return {"variant": variant, "seed": seed, **train_or_reuse(cfg, run_dir, progress=self.progress,
                                                                   init_from=init)}

    def train_all(self, variants) -> None:
        """Every variant x seed trained (or reused) before they are scored, ``jobs`` runs at a time in separate
        processes (with ``jobs = 1`` nothing: :meth:`train` trains each when it is needed). ``variants``: ``{name:
        overrides}``, or a function of the seed returning it (overrides that name a per-seed run, e.g. a teacher)."""
        if self.jobs == 1:
            return
        if self.scale.time_budget:
            raise DiffpropError(f"{self.name} trains each run for {self.scale.time_budget:g} s of wall clock, which "
                                f"runs in parallel would share: run it with --jobs 1")
        of = variants if callable(variants) else lambda seed: variants
        todo = [(self.config(extra, seed), self.run_dir(variant, seed), self.init_from.get(seed))
                for seed in range(self.seeds) for variant, extra in of(seed).items()]
        todo = [(cfg, d, i) for cfg, d, i in todo
                if not finished(d, cfg, i) and self.finished_elsewhere(cfg, i) is None]
        train_all(todo, self.jobs, self.progress, desc=f"{self.name}: training")

    def finished_elsewhere(self, cfg: Config, init_from: str | None = None) -> Path | None:
        """A finished run of config ``cfg`` (from the weights of ``init_from``) made by a sibling reproduction
        (``OUT/../*/runs/*``): 002's Table 1, Fig. 3 and Fig. 4 train the same DDPM and SMD models, so each is trained
        once."""
        for done in sorted(self.out.parent.glob(f"*/runs/*/{RECORD}")):
            run_dir = done.parent
            if run_dir.parent.parent.resolve() != self.out.resolve() and finished(run_dir, cfg, init_from):
                return run_dir
        return None

    def time_per_step(self, variants: dict[str, list[str]], rounds: int, steps: int) -> dict[str, float]:
        """Milliseconds per training step of each variant (seed 0's config), measured side by side: every round
        times ``steps`` steps of each variant in turn, so load on the machine falls on all alike."""
        from ..bench.train_overhead import time_side_by_side

        with tempfile.TemporaryDirectory() as tmp:
            trainers = {v: Trainer(self.config(extra, 0), Path(tmp) / slug(v), progress=False)
                        for v, extra in variants.items()}
            return {v: 1e3 * s for v, s in time_side_by_side(trainers, rounds, steps).items()}

    def train_and_score(self, variants: dict[str, list[str]], kernels=(), score: bool = True) -> list[dict]:
        """Every variant x seed trained, scored on its samples (``score``) and measured with ``kernels`` (each row's
        ``curves[kernel]``: lists ``t``, ``cumulative``, ``modular``, ``floor``, ``amplification``); seed 0's
        samples are pictured (``self.pictures``). The rows also go to ``runs.json``."""
        self.train_all(variants)
        rows, pictures = [], {}
        todo = [(seed, variant, extra) for seed in range(self.seeds) for variant, extra in variants.items()]
        bar = tqdm(todo, desc=f"{self.name}: runs", unit="run", disable=not self.progress)  # overall, with ETA
        for seed, variant, extra in bar:
            bar.set_postfix_str(f"{variant}, seed {seed}")
            rec = self.train(variant, extra, seed)
            denoiser = load_run(rec["dir"]).denoiser
            if score:
                x = self.draw(denoiser, self.scale.samples, 10_000 + seed, cache=Path(rec["dir"]))
                q = self.quality(x, seed)
                rec.update({c: q.get(c, float("nan")) for c in self.columns})
                if seed == 0:
                    pictures[variant] = x
            if kernels:
                rec["curves"] = self.cached_curves(denoiser, kernels, seed, rec["dir"])
            rows.append(rec)
        self.pictures = self.picture(pictures)
        (self.out / "runs.json").write_text(json.dumps(rows, indent=1))
        return rows

    def cached_curves(self, denoiser, kernels, seed: int, run_dir, tag: str = "") -> dict:
        """:func:`curve_lists` of ``denoiser``'s curves (``self.curves``), kept in its run folder ``run_dir`` (``tag``:
        what was done to the run's model, e.g. a sampling-time scaling)."""
        key = [tag, list(kernels), seed, self.scale.num, list(self.grid(denoiser.schedule.T)), self.scale.permutations]
        return cached(run_dir, "curves", key, lambda: curve_lists(self.curves(denoiser, kernels, seed)))

    def describe(self, scored: bool = True) -> str:
        """The setup sentence every report starts with (``scored``: with the quality metric's)."""
        s, cfg = self.scale, self.config([], 0)
        if self.image:
            net = f"U-Net preset `{s.unet}`"
        else:
            net = f"residual MLP (width {cfg.model.width}, depth {cfg.model.depth})"
        budget = f"{s.steps} steps" if not s.time_budget else f"{s.time_budget:.0f} s of wall clock"
        return (f"`{self.data_name}`, {net}, T = {s.T}, linear betas, sigma_t^2 = beta_t, batch "
                f"{cfg.train.batch_size}, LR {cfg.train.lr:g} ({cfg.train.lr_schedule}), EMA {cfg.train.ema_decay}; "
                f"every run trains for {budget}; {self.seeds} seed{'s' if self.seeds > 1 else ''}"
                + (f"; quality on {s.samples} DDPM samples ({self.metric}, lower is better)." if scored else "."))
