"""The denoising (noise-prediction) loss of DDPM (000 Eq. 3; Ho et al. Eq. 14)."""
from __future__ import annotations

import torch

from ..denoisers import Denoiser, training_target
from ..process import q_sample


class DenoisingLoss:
    """``|| net(x_t, t) - target ||^2`` with ``t ~ U{1..T}``, ``x_t = q_sample(x_0, t, eps)``; per sample."""

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        T = denoiser.schedule.T
        t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = q_sample(denoiser.schedule, x0, t, eps)  # 000 Eq. 1
        target = training_target(denoiser.parameterization, denoiser.schedule, x0, t, eps)
        return (denoiser.raw(x_t, t) - target).pow(2).flatten(1).mean(1)
