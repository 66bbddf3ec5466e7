"""How a reproduction scores its models: samples (drawn once per run and kept), the quality metric of the data
(FD-style for images, the exact KL for Gaussian mixtures, sliced W1 otherwise), pictures of the samples, and error
propagation curves."""
from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data import Dataset
from ..diagnostics.propagation import Propagation, propagation
from ..metrics.toy import sample_metrics
from ..oracle import OracleDenoiser
from ..plots import plot_image_grid, plot_scatter
from ..samplers import sample

SAMPLE_BATCH = 1000


def slug(variant: str) -> str:
    """A variant's name as a file name: runs of other characters than letters, digits and ``=._+-`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9=._+-]+", "-", variant).strip("-")


class Evaluator:
    """Scores models of ``dataset`` (named ``data_name``) at scale ``scale`` into ``out``."""

    def __init__(self, dataset: Dataset, data_name: str, scale, out: Path, progress: bool,
                 inception_weights: str | None = None):
        self.dataset, self.data_name, self.scale, self.out = dataset, data_name, scale, Path(out)
        self.progress, self.inception_weights = progress, inception_weights
        self.image = dataset.is_image
        # the quality metric the tables test: FID-style for images; the exact KL(p_theta(x_0) || q(x_0)), i.e. the
        # cumulative error at t = 0 (Li & van der Schaar 2024, Def. 3.2), for Gaussian mixtures; sliced W1 otherwise
        # (all lower is better)
        self.metric = "fd" if self.image else "kl_estimate" if dataset.mixture is not None else "sliced_wasserstein"
        self.columns = (("fd", "kid", "mmd_rbf") if self.image else
                        ("kl_estimate", "high_quality_fraction", "mode_coverage", "mode_weight_tv",
                         "within_mode_std_ratio") if dataset.mixture is not None else
                        ("sliced_wasserstein", "mmd_rbf"))

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

    # -- error propagation (Li & van der Schaar 2024, Sec. 4) ---------------------------------------
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
