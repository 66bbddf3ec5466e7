"""Denoisers: one object that answers ``eps()``, ``x0()``, ``score()`` consistently for any model.

A denoiser owns the noise schedule it was trained with and predicts, for ``x_t`` at integer
timesteps ``t`` in 1..T, both the noise and the clean sample. Samplers, losses and diagnostics only
ever talk to this interface, so a trained network and the exact oracle are interchangeable.

Every call takes the caller's ``generator``: a stochastic denoiser (soft mixture denoising, 002 Sec. 4)
draws its latent noise from it, so its draws follow the run's seed; deterministic ones ignore it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .errors import DiffpropError
from .process import VAR_TYPES
from .schedules import NoiseSchedule

PARAMETERIZATIONS = ("eps", "x0", "v")
SMD_LOSSES = ("mse", "energy")


class Prediction(NamedTuple):
    eps: torch.Tensor
    x0: torch.Tensor


class DenoiserBase(nn.Module):
    """Interface: subclasses implement :meth:`predict`; everything else derives from it.

    ``stochastic`` denoisers draw fresh latent noise from ``generator`` on every call (two calls on the same
    input differ); the others ignore ``generator``. ``var_type`` is the backward variance the model was trained
    for (``beta``, 000's choice, or ``beta_tilde``; a run's ``diffusion.var_type``, a diffusers scheduler's
    ``variance_type``): ancestral samplers, losses and diagnostics read it from here. ``clip_x0`` is the range
    ``c`` the model's sampler clips predicted x0 to (``[-c, c]``; a diffusers scheduler's ``clip_sample_range``
    when ``clip_sample`` is set; None: no clipping): samplers use it unless given one.
    """

    schedule: NoiseSchedule
    stochastic = False
    var_type = "beta"
    clip_x0: float | None = None

    def set_var_type(self, var_type: str) -> "DenoiserBase":
        if var_type not in VAR_TYPES:
            raise DiffpropError(f"unknown backward variance {var_type!r}; allowed: {', '.join(VAR_TYPES)}")
        self.var_type = var_type
        return self

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> Prediction:
        raise NotImplementedError

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> Prediction:
        return self.predict(x_t, t, generator)

    def eps(self, x_t, t, generator=None):
        return self.predict(x_t, t, generator).eps

    def x0(self, x_t, t, generator=None):
        return self.predict(x_t, t, generator).x0

    def score(self, x_t, t, generator=None):
        """``grad log q(x_t) = -eps / sqrt(1 - abar_t)``."""
        return -self.eps(x_t, t, generator) / (1 - self.schedule.gather("alpha_bars", t, x_t)).sqrt()


def _batched(t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Timesteps as a (B,) tensor: a scalar ``t`` is shared by the batch."""
    return t.expand(x_t.shape[0]) if t.ndim == 0 else t


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

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, parameterization: str = "eps",
                 var_type: str = "beta"):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise DiffpropError(f"unknown parameterization {parameterization!r}; "
                                f"allowed: {', '.join(PARAMETERIZATIONS)}")
        self.net = net
        self.schedule = schedule
        self.parameterization = parameterization
        self.set_var_type(var_type)

    def raw(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The backbone's output (what the denoising loss regresses); backbones see t - 1 in 0..T-1."""
        return self.net(x_t, _batched(t, x_t) - 1).to(x_t.dtype)

    def predict(self, x_t, t, generator=None):
        return self.read(x_t, t, self.raw(x_t, t, generator))

    def read(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> Prediction:
        """The backbone output ``out`` at ``(x_t, t)`` read as a :class:`Prediction`."""
        if self.parameterization == "eps":
            return Prediction(out, x0_from_eps(self.schedule, x_t, t, out))
        if self.parameterization == "x0":
            return Prediction(eps_from_x0(self.schedule, x_t, t, out), out)
        abar = self.schedule.gather("alpha_bars", t, x_t)
        return Prediction((1 - abar).sqrt() * x_t + abar.sqrt() * out,
                          abar.sqrt() * x_t - (1 - abar).sqrt() * out)


class SMDDenoiser(Denoiser):
    """Soft mixture denoising (002 Sec. 4): ``net(x_t, t - 1, eta)`` with latent noise ``eta ~ N(0, I)``.

    ``net`` is an SMD network (:mod:`diffprop.nets.smd`) of latent-noise shape ``net.eta_shape``; without
    an explicit ``eta`` every call draws a fresh one from ``generator`` (002 Alg. 1 line 5, Alg. 2 line 4:
    a new eta at every sampling step), so any sampler, loss or regularizer runs SMD unchanged. The
    denoising loss averages ``n_eta`` draws per example (002 Alg. 1, Fig. 4), or with ``loss="energy"`` scores
    them as a sample of the backward distribution (see :func:`diffprop.losses.denoising.regression_loss`).
    """

    stochastic = True

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, parameterization: str = "eps", n_eta: int = 1,
                 loss: str = "mse", var_type: str = "beta"):
        super().__init__(net, schedule, parameterization, var_type)
        if n_eta < 1:
            raise DiffpropError(f"n_eta must be >= 1, got {n_eta}")
        if loss not in SMD_LOSSES or (loss == "energy" and n_eta < 2):
            raise DiffpropError(f"SMD loss {loss!r} with n_eta = {n_eta}: allowed mse, or energy with n_eta >= 2")
        self.eta_shape, self.n_eta, self.loss = tuple(net.eta_shape), int(n_eta), loss

    def draw_eta(self, x_t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``eta ~ N(0, I)``, one per sample of ``x_t``, drawn on the generator's device."""
        device = generator.device if generator is not None else x_t.device
        eta = torch.randn((x_t.shape[0], *self.eta_shape), generator=generator, device=device, dtype=x_t.dtype)
        return eta.to(x_t.device)

    def raw(self, x_t, t, generator=None, eta=None):
        """The backbone's output at latent noise ``eta`` (deterministic), or at a fresh draw from ``generator``."""
        if eta is None:
            eta = self.draw_eta(x_t, generator)
        return self.net(x_t, _batched(t, x_t) - 1, eta).to(x_t.dtype)  # z_t = g_xi(eta, x_t, t), 002 Alg. 2 l. 5

    def predict(self, x_t, t, generator=None, eta=None):
        return self.read(x_t, t, self.raw(x_t, t, generator, eta))
