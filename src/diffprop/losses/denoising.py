"""The denoising (noise-prediction) loss of DDPM (000 Eq. 3; Ho et al. Eq. 14), SMD's with ``n_eta`` draws."""
from __future__ import annotations

import torch

from ..denoisers import Denoiser, training_target
from ..process import q_sample


def regression_loss(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Per sample ``|| raw(x_t, t) - target ||^2``. A denoiser with ``n_eta > 1`` (SMD) sees every example
    ``n_eta`` times with independent latent draws, and the losses are averaged (002 Alg. 1, Sec. 5.4), or, with
    ``loss == "energy"``, the draws are scored together by the energy score."""
    k = getattr(denoiser, "n_eta", 1)
    if k == 1:
        return (denoiser.raw(x_t, t, generator) - target).pow(2).flatten(1).mean(1)
    x_t, t, target = (a.repeat(k, *[1] * (a.ndim - 1)) for a in (x_t, t, target))  # row j B + i: example i, draw j
    err = (denoiser.raw(x_t, t, generator) - target).flatten(1)
    if denoiser.loss == "mse":
        return err.pow(2).mean(1).view(k, -1).mean(0)  # the Monte Carlo mean over eta of 002 Eq. 14
    # energy score (Gneiting & Raftery 2007 Eq. 22) of the k draws as a sample of the predictive distribution:
    # E||f - y|| - E||f - f'|| / 2, in RMS units; strictly proper, so unlike Eq. 14 it rewards using eta
    f = err.view(k, -1, err.shape[1]) / err.shape[1] ** 0.5
    j, l = torch.triu_indices(k, k, 1, device=f.device)
    return f.norm(dim=2).mean(0) - (f[j] - f[l]).norm(dim=2).mean(0) / 2


class DenoisingLoss:
    """``|| net(x_t, t) - target ||^2`` with ``t ~ U{1..T}``, ``x_t = q_sample(x_0, t, eps)``; per sample."""

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        T = denoiser.schedule.T
        t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = q_sample(denoiser.schedule, x0, t, eps)  # 000 Eq. 1
        target = training_target(denoiser.parameterization, denoiser.schedule, x0, t, eps)
        return regression_loss(denoiser, x_t, t, target, generator)
