"""What every sampler shares: its output type, the times a step is called with, and the final denoising step.

A step is ``step(denoiser, x, t, t_next, generator) -> x``: one move of the chain from time ``t`` to the
earlier ``t_next`` (:mod:`.driver` walks a list of times with it). ``t_next = 0`` is the data: every step
ends there with the denoised sample ``x0_hat(x_t)`` (Tweedie's formula, score_sde's ``noise_removal``; for the
discrete chain it is Ho et al. Alg. 2's last step, for EDM the Euler step to ``sigma = 0``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..noise import randn_like as noise_like  # noqa: F401 (the steps' name for it)


class SamplerOutput(NamedTuple):
    x: torch.Tensor
    states: dict
    nfe: int = 0  # denoiser evaluations per sample (0 where not counted)


def time_arg(t, x: torch.Tensor) -> torch.Tensor:
    """A time as the tensor a denoiser is called with: a 0-d integer for the discrete chain, float64 otherwise;
    per-sample times (a (B,) tensor) as they are."""
    if torch.is_tensor(t):
        return t.to(x.device)
    if isinstance(t, int):
        return torch.tensor(t, device=x.device)
    return torch.tensor(float(t), dtype=torch.float64, device=x.device)


def denoised(denoiser, x: torch.Tensor, t, generator=None, clip_x0: float | None = None) -> torch.Tensor:
    """``x0_hat(x_t)``, clipped to ``[-clip_x0, clip_x0]`` if given."""
    x0 = denoiser.predict(x, time_arg(t, x), generator).x0
    return x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)
