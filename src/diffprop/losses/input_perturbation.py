"""ADM-IP: input perturbation against exposure bias (Ning et al. 2023, "Input Perturbation Reduces
Exposure Bias in Diffusion Models", Eq. 9; the public code is forever208/DDPM-IP).

The network is trained on ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) (eps + gamma xi)`` with the
target built from ``eps`` alone (not ``eps + gamma xi``), so it learns to undo a small extra error
in its input, like the one it meets along its own sampling chain. Sampling is unchanged.

As a term of :class:`~diffprop.losses.Objective` it is added to the plain denoising loss. ADM-IP as
published *replaces* that loss: set ``objective.lambda_nl = 0`` with
``objective.regularizers = ["input_perturbation"]`` (and ``input_perturbation.weight = 1``).
"""
from __future__ import annotations

import torch

from ..time_sampling import UniformInt, time_sampler_for
from .denoising import regression_loss
from .objective import Term


class InputPerturbation:
    """``|| raw(x_t^IP, t) - target(x_0, t, eps) ||^2`` with ``t`` from the run's time sampler (default
    ``t ~ U{1..T}``; Ning et al. 2023, Eq. 9), on any process: ``x_t^IP = alpha(t) x_0 + sigma(t) (eps + gamma xi)``.

    Draws ``t`` and ``eps`` exactly as :class:`~diffprop.losses.DenoisingLoss` does and then ``xi``,
    so that with ``gamma = 0`` it reproduces the denoising loss on the same generator state.
    Works for any parameterization: the target is the denoiser's ``target(x_0, t, eps)``.
    """

    def __init__(self, gamma: float = 0.1, weight: float = 1.0, time_sampler=None):
        self.gamma, self.weight = float(gamma), float(weight)
        self.time_sampler = time_sampler or UniformInt()

    @classmethod
    def from_config(cls, cfg, sample_data=None) -> "InputPerturbation":
        c = cfg.input_perturbation
        return cls(gamma=c.gamma, weight=c.weight, time_sampler=time_sampler_for(cfg))

    def __call__(self, denoiser, x0: torch.Tensor, generator: torch.Generator) -> Term:
        t = self.time_sampler(denoiser.process, x0.shape[0], generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        xi = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = denoiser.process.marginal(x0, t, eps + self.gamma * xi)  # Ning et al. Eq. 9: perturbed input
        target = denoiser.target(x0, t, eps)  # ... clean target
        return Term(regression_loss(denoiser, x_t, t, target, generator).mean(), {})
