"""The denoising loss of DDPM (000 Eq. 3; Ho et al. Eq. 14), SMD's with ``n_eta`` draws, and its continuous-time
form (Song et al. 2021, score SDE, Eq. 7; Karras et al. 2022 Eq. 2, 8) for any :class:`~diffprop.processes.Process`."""
from __future__ import annotations

import torch

from ..denoisers import Denoiser
from ..time_sampling import UniformInt, time_sampler_for
from .smd_mixture import mixture_loss


def regression_loss(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Per sample ``|| raw(x_t, t) - target ||^2``. A denoiser with ``n_eta > 1`` (SMD) sees every example
    ``n_eta`` times with independent latent draws, and the losses are averaged (002 Alg. 1, Sec. 5.4), or, with
    ``loss == "energy"``, the draws are scored together by the energy score, or, with ``loss == "mixture"``, by the
    cross-entropy of their mixture (:mod:`diffprop.losses.smd_mixture`; equal to the squared error for one draw)."""
    k = getattr(denoiser, "n_eta", 1)
    if getattr(denoiser, "loss", None) == "mixture":
        return mixture_loss(denoiser, x_t, t, target, k, generator)
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
    """Per sample ``|| raw(x_t, t) - target(x0, t, eps) ||^2`` with ``t`` from a time sampler
    (:mod:`diffprop.time_sampling`; default ``t ~ U{1..T}``), ``eps ~ N(0, I)`` and ``x_t = alpha(t) x0 + sigma(t)
    eps`` (000 Eq. 1, 3). ``target`` is the denoiser's (eps, x0, v, or EDM's ``F`` target, whose weight
    ``lambda(sigma) c_out^2 = 1`` makes Karras et al.'s Eq. 8 this plain mean square)."""

    def __init__(self, time_sampler=None):
        self.time_sampler = time_sampler or UniformInt()

    @classmethod
    def from_config(cls, cfg) -> "DenoisingLoss":
        return cls(time_sampler_for(cfg))

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = self.time_sampler(denoiser.process, x0.shape[0], generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = denoiser.process.marginal(x0, t, eps)  # 000 Eq. 1
        return regression_loss(denoiser, x_t, t, denoiser.target(x0, t, eps), generator)
