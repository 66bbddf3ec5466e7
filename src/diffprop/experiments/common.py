"""The harness the reproductions share: named variants (config overrides) x seeds, every run with the same data,
backbone and budget; each trained model sampled and scored, and optionally measured along its chain.

A :class:`Scale` fixes the data, T, backbone, budget and evaluation sizes; a :class:`Study` is one reproduction at
one scale writing into one folder. A run that already finished with the same config is reused, so an interrupted
reproduction continues where it stopped; so is one that a sibling reproduction (a folder beside ``out``) finished.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..checkpoint import list_checkpoints, read_json
from ..config import Config, load_config
from ..data import load_dataset
from ..diagnostics.propagation import Propagation, propagation
from ..errors import DiffpropError
from ..metrics.toy import sample_metrics
from ..oracle import OracleDenoiser
from ..plots import plot_image_grid, plot_scatter
from ..runs import load_run, made_with
from ..samplers import sample
from ..training import Trainer
from . import gpu


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
SAMPLE_BATCH = 1000


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


def slug(variant: str) -> str:
    """A variant's name as a file name: runs of other characters than letters, digits and ``=._+-`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9=._+-]+", "-", variant).strip("-")


def log(message: str) -> None:
    print(message, flush=True)


def curve_lists(result: Propagation) -> dict[str, dict[str, list]]:
    """``{kernel: {column: list over t}}`` of a propagation result (JSON-ready)."""
    cols = ("cumulative", "modular", "floor", "amplification")
    return {k: {"t": result.column(k, "cumulative")[0].tolist(),
                **{c: result.column(k, c)[1].tolist() for c in cols}} for k in result.kernels}


class Study:
    """One reproduction ``name`` at scale ``scale_name`` writing into ``out``."""

    def __init__(self, name: str, out: Path, scale_name: str, scale: Scale, seeds: int | None, progress: bool, *,
                 data: str | None = None, inception_weights: str | None = None, force: bool = False):
        self.name, self.out, self.scale_name, self.scale = name, Path(out), scale_name, scale
        self.seeds, self.progress, self.force = seeds or scale.seeds, progress, force
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
        # the quality metric the tables test: FID-style for images; the exact KL(p_theta(x_0) || q(x_0)), i.e. 000's
        # cumulative error at t = 0 (Def. 3.2), for Gaussian mixtures; sliced W1 otherwise (all lower is better)
        self.metric = "fd" if self.image else "kl_estimate" if self.dataset.mixture is not None else \
            "sliced_wasserstein"
        self.columns = (("fd", "kid", "mmd_rbf") if self.image else
                        ("kl_estimate", "high_quality_fraction", "mode_coverage", "mode_weight_tv",
                         "within_mode_std_ratio") if self.dataset.mixture is not None else
                        ("sliced_wasserstein", "mmd_rbf"))
        self.pictures: list[str] = []  # (``out`` is made by the first training run: nothing is written before)

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

    def train(self, variant: str, extra: list[str], seed: int) -> dict:
        """Train one run, reuse a finished one of the same config or resume an unfinished one from its latest
        checkpoint (step budgets only); its record: folder, steps, seconds (of this session's training)."""
        cfg = self.config(extra, seed)
        run_dir = self.out / "runs" / f"{slug(variant)}-seed{seed}"
        done = run_dir / "train.json"
        same = made_with(run_dir, cfg)
        if same and done.is_file():  # (the folder may have moved since)
            return {"variant": variant, "seed": seed, **read_json(done, "training record"), "dir": str(run_dir)}
        if not same and (other := self.finished_elsewhere(cfg)) is not None:
            return {"variant": variant, "seed": seed, **read_json(other / "train.json", "training record"),
                    "dir": str(other), "shared": True}
        resume = "latest" if same and not cfg.train.time_budget and list_checkpoints(run_dir) else None
        if resume is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, run_dir, resume=resume, progress=self.progress)
        start = trainer.step
        trainer.train()
        seconds = time.perf_counter() - t0
        record = {"dir": str(run_dir), "steps": trainer.step, "seconds": round(seconds, 2),
                  "ms_per_step": round(1e3 * seconds / max(trainer.step - start, 1), 3)}
        done.write_text(json.dumps(record))
        return {"variant": variant, "seed": seed, **record}

    def finished_elsewhere(self, cfg: Config) -> Path | None:
        """A finished run of config ``cfg`` made by a sibling reproduction (``OUT/../*/runs/*``): 002's Table 1, Fig. 3
        and Fig. 4 train the same DDPM and SMD models, so each is trained once."""
        for done in sorted(self.out.parent.glob("*/runs/*/train.json")):
            run_dir = done.parent
            if run_dir.parent.parent.resolve() != self.out.resolve() and made_with(run_dir, cfg):
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

    # -- evaluation -----------------------------------------------------------------------------------
    @cached_property
    def extractor(self):
        from ..metrics.features import get_extractor

        return get_extractor(None, self.dataset.data_shape, dataset_name=self.data_name.split(":")[0],
                             inception_weights=self.inception_weights, device=self.device)

    @property
    def device(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"

    def draw(self, denoiser, num: int, seed: int, sampler: str = "ddpm", steps: int | None = None,
             cache: Path | None = None) -> torch.Tensor:
        """``num`` samples: DDPM with T steps (sigma_t^2 the run's ``diffusion.var_type``) unless ``sampler`` /
        ``steps`` (respaced) say otherwise; images clip x0 to [-1, 1]. With ``cache`` (a run's folder) they are kept there and drawn once:
        sibling reproductions sharing a run, and re-runs, score the same samples without sampling again."""
        path = cache / "samples" / f"{sampler}-K{steps or 'T'}-n{num}-seed{seed}.safetensors" if cache else None
        if path is not None and path.is_file():
            return load_file(path)["x"]
        x = sample(denoiser.to(self.device), num, tuple(self.dataset.data_shape), sampler=sampler, steps=steps,
                   seed=seed, device=self.device, batch_size=SAMPLE_BATCH, progress=self.progress,
                   clip_x0=1.0 if self.image else None).x.float().cpu()
        if path is not None:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".tmp-{path.name}")
            save_file({"x": x.contiguous()}, tmp)
            os.replace(tmp, path)  # whole or absent, should the process stop here
        return x

    def quality(self, x: torch.Tensor, seed: int) -> dict:
        if self.image:
            from ..metrics.images import image_metrics

            return image_metrics(x, self.dataset.x, self.extractor, seed=seed)
        return sample_metrics(x, self.dataset.x, self.dataset.mixture, seed=seed)

    def train_and_score(self, variants: dict[str, list[str]], kernels=(), score: bool = True) -> list[dict]:
        """Every variant x seed trained, scored on its samples (``score``) and measured with ``kernels`` (each row's
        ``curves[kernel]``: lists ``t``, ``cumulative``, ``modular``, ``floor``, ``amplification``); seed 0's
        samples are pictured (``self.pictures``). The rows also go to ``runs.json``."""
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
                rec["curves"] = curve_lists(self.curves(denoiser, kernels, seed))
            rows.append(rec)
        self.pictures = self.picture(pictures)
        (self.out / "runs.json").write_text(json.dumps(rows, indent=1))
        return rows

    def picture(self, samples: dict[str, torch.Tensor]) -> list[str]:
        """Samples of each variant: one scatter figure for 2-D data, one image grid per variant for images."""
        if not samples:
            return []
        if self.image:
            for variant, x in samples.items():
                plot_image_grid(x.numpy(), self.out / f"samples-{slug(variant)}.png")
            return [f"samples-{slug(v)}.png" for v in samples]
        if self.dataset.data_shape == (2,):
            plot_scatter({v: x.numpy() for v, x in samples.items()}, self.out / "samples.png",
                         reference=self.dataset.x[:5000].numpy())
            return ["samples.png"]
        return []

    # -- error propagation (000 Sec. 4) ---------------------------------------------------------------
    def grid(self, T: int) -> list[int]:
        return sorted({max(1, min(T, round(t * T / self.scale.T))) for t in self.scale.grid})

    def oracle(self, schedule) -> OracleDenoiser | None:
        return OracleDenoiser(self.dataset.mixture, schedule) if self.dataset.mixture is not None else None

    def curves(self, denoiser, kernels, seed: int, exact: bool = False) -> Propagation:
        """``denoiser``'s propagation profile (000 Eq. 12-13, N = M = ``num``); ``exact`` adds the KL columns."""
        reference = self.dataset.x[torch.randperm(len(self.dataset.x), generator=torch.Generator().manual_seed(seed))]
        return propagation(denoiser.to(self.device), reference[:max(4 * self.scale.num, 4000)].to(self.device),
                           num=self.scale.num, grid=self.grid(denoiser.schedule.T), kernels=tuple(kernels),
                           num_permutations=self.scale.permutations, seed=seed, device=self.device,
                           batch_size=SAMPLE_BATCH, progress=self.progress,
                           oracle=self.oracle(denoiser.schedule) if exact else None)

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
