"""Pick the one parameter of a training-free exposure-bias fix on held-out draws, then evaluate it on fresh ones.

``eps-scaling`` (Ning et al. 2024) searches ``b`` of ``lambda(t) = b`` (:mod:`diffprop.eps_scaling`), any sampler;
``time-shift`` (Li et al. 2024) searches the window of :mod:`diffprop.samplers.time_shift` (DDPM's or DDIM's option
``shift_window``). Every grid value samples ``num`` samples from the same noise (seed ``tune_seed``:
common random numbers, so values are compared on one draw); the value of least ``quality`` is chosen. The final
evaluation samples the baseline (``b = 1``, window 0: the plain sampler) and the chosen value with ``eval_seed`` and,
for data-based metrics, against a disjoint half of the reference data. Quality: for Gaussian-mixture data the exact
``KL(p_samples || q_data)`` (the samples' entropy by Kozachenko-Leonenko, ``log q`` exact); for images the Frechet
distance in a feature extractor's features (the digits classifier on digits, as ``diffprop evaluate`` does).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from .diagnostics.entropy import knn_entropy
from .errors import DiffpropError
from .samplers import sample

METHODS = ("eps-scaling", "time-shift")
GRIDS = {"eps-scaling": (0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 1.0, 1.005, 1.01, 1.02, 1.05, 1.1),
         "time-shift": (0, 2, 4, 8, 16, 32, 64, 128, 256)}
NEUTRAL = {"eps-scaling": 1.0, "time-shift": 0}  # the plain sampler
BASES = ("ddpm", "ddim")  # the samplers time shifting applies to


def mixture_kl(mixture) -> Callable[[torch.Tensor], float]:
    """``x -> KL(p_x || q)`` nats, ``q`` the mixture (exact ``log q``, Kozachenko-Leonenko ``H(p_x)``)."""
    def kl(x: torch.Tensor) -> float:
        x = x.reshape(len(x), -1).double()
        if not bool(torch.isfinite(x).all()):
            return math.inf
        return -knn_entropy(x) - float(mixture.log_prob(x).mean())
    return kl


def frechet(reference: torch.Tensor, extractor) -> Callable[[torch.Tensor], float]:
    """``x -> FD(x, reference)`` in ``extractor``'s features."""
    from .metrics.images import image_metrics

    def fd(x: torch.Tensor) -> float:
        return image_metrics(x, reference, extractor)["fd"] if bool(torch.isfinite(x).all()) else math.inf
    return fd


def halves(x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of ``x``: the tuning and the evaluation reference data."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm[: len(x) // 2]], x[perm[len(x) // 2:]]


def method_options(method: str, value, sampler: str, options: dict | None = None) -> tuple[str, dict]:
    """``(sampler name, options)`` that run ``method`` at ``value`` on top of ``sampler``."""
    options = dict(options or {})
    if method == "eps-scaling":
        return sampler, {**options, "eps_scaling": (float(value), 0.0)}
    if method == "time-shift":
        if sampler not in BASES:
            raise DiffpropError(f"time shift applies to --sampler {' or '.join(BASES)}, not {sampler}")
        if not math.isfinite(float(value)) or float(value) != int(value) or value < 0:
            raise DiffpropError(f"time-shift windows are whole numbers of timesteps >= 0, got {value}")
        return sampler, {**options, "shift_window": int(value)}
    raise DiffpropError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")


def pooled_shift(x: torch.Tensor) -> dict:
    """Time-shift options for low-dimensional data ``x`` (model units): a state's variance pooled over its group of
    samples, matched with ``abar V + 1 - abar``, ``V`` the data's variance per coordinate (one sample's variance over
    two coordinates, the published rule, means nothing)."""
    return {"shift_variance": "group", "shift_data_var": float(x.double().var(0).mean())}


def tune(denoiser, shape: tuple[int, ...], method: str, *, tune_quality: Callable, eval_quality: Callable,
         quality_name: str, sampler: str = "ddim", steps: int | None = None, grid=None, num: int = 1000,
         tune_seed: int = 1, eval_seed: int = 0, options: dict | None = None, to_data: Callable | None = None,
         device="cpu", batch_size: int | None = None, progress: bool = False) -> dict:
    """Search ``grid`` (default :data:`GRIDS`) for the value of ``method`` of least ``tune_quality`` on samples of
    seed ``tune_seed``; report it and the plain sampler under ``eval_quality`` on samples of seed ``eval_seed``.
    ``options``: the sampler's other options; ``to_data``: model units -> the units the qualities read."""
    if tune_seed == eval_seed:
        raise DiffpropError(f"the tuning seed and the evaluation seed must differ (both {tune_seed}): the chosen value "
                            f"would be scored on the draws it was chosen on")
    grid = list(GRIDS[method] if grid is None else grid)
    if not grid:
        raise DiffpropError("the grid is empty")
    to_data = to_data or (lambda x: x)

    def draw(value, seed: int) -> tuple[torch.Tensor, float]:
        name, opts = method_options(method, value, sampler, options)
        start = time.perf_counter()
        x = sample(denoiser, num, shape, sampler=name, steps=steps, seed=seed, device=device, batch_size=batch_size,
                   progress=progress and f"{method} {value}", **opts).x
        return to_data(x.float().cpu()), time.perf_counter() - start

    rows = []
    for value in grid:
        x, seconds = draw(value, tune_seed)
        rows.append({"value": value, quality_name: tune_quality(x), "seconds": seconds})
    best = min(rows, key=lambda r: (r[quality_name], abs(r["value"] - NEUTRAL[method])))
    chosen, neutral = best["value"], NEUTRAL[method]
    evaluation = {}
    for label, value in (("baseline", neutral), ("chosen", chosen)):
        x, _ = draw(value, eval_seed)
        evaluation[label] = {"value": value, quality_name: eval_quality(x)}
    return {"method": method, "sampler": sampler, "steps": steps,
            "num": num, "tune_seed": tune_seed, "eval_seed": eval_seed, "quality": quality_name,
            "options": {k: v for k, v in (options or {}).items()}, "grid": rows, "chosen": chosen,
            "evaluation": evaluation,
            "gain": evaluation["baseline"][quality_name] - evaluation["chosen"][quality_name]}


__all__ = ["BASES", "GRIDS", "METHODS", "NEUTRAL", "frechet", "halves", "method_options", "mixture_kl", "pooled_shift",
           "tune"]
