"""Denoisers: one object that answers ``eps()``, ``x0()``, ``score()`` consistently for any model.

A denoiser owns the noise schedule it was trained with and predicts, for ``x_t`` at integer
timesteps ``t`` in 1..T, both the noise and the clean sample. Samplers, losses and diagnostics only
ever talk to this interface, so a trained network and the exact oracle are interchangeable.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .errors import DiffpropError
from .schedules import NoiseSchedule

PARAMETERIZATIONS = ("eps", "x0", "v")


class Prediction(NamedTuple):
    eps: torch.Tensor
    x0: torch.Tensor


class DenoiserBase(nn.Module):
    """Interface: subclasses implement :meth:`predict`; everything else derives from it."""

    schedule: NoiseSchedule

    def predict(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        raise NotImplementedError

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        return self.predict(x_t, t)

    def eps(self, x_t, t):
        return self.predict(x_t, t).eps

    def x0(self, x_t, t):
        return self.predict(x_t, t).x0

    def score(self, x_t, t):
        """``grad log q(x_t) = -eps / sqrt(1 - abar_t)``."""
        return -self.eps(x_t, t) / (1 - self.schedule.gather("alpha_bars", t, x_t)).sqrt()


def eps_from_x0(schedule, x_t, t, x0):
    abar = schedule.gather("alpha_bars", t, x_t)
    return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def x0_from_eps(schedule, x_t, t, eps):
    abar = schedule.gather("alpha_bars", t, x_t)
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def training_target(parameterization: str, schedule: NoiseSchedule, x0, t, eps) -> torch.Tensor:
    """What the backbone regresses: eps, x0, or ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022)."""
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    abar = schedule.gather("alpha_bars", t, x0)
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


class Denoiser(DenoiserBase):
    """A backbone ``net(x_t, t - 1)`` read as an eps-, x0- or v-prediction."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, parameterization: str = "eps"):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise DiffpropError(f"unknown parameterization {parameterization!r}; "
                                f"allowed: {', '.join(PARAMETERIZATIONS)}")
        self.net = net
        self.schedule = schedule
        self.parameterization = parameterization

    def raw(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The backbone's output (what the denoising loss regresses); backbones see t - 1 in 0..T-1."""
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.net(x_t, t - 1).to(x_t.dtype)

    def predict(self, x_t, t):
        out = self.raw(x_t, t)
        if self.parameterization == "eps":
            return Prediction(out, x0_from_eps(self.schedule, x_t, t, out))
        if self.parameterization == "x0":
            return Prediction(eps_from_x0(self.schedule, x_t, t, out), out)
        abar = self.schedule.gather("alpha_bars", t, x_t)
        return Prediction((1 - abar).sqrt() * x_t + abar.sqrt() * out,
                          abar.sqrt() * x_t - (1 - abar).sqrt() * out)
