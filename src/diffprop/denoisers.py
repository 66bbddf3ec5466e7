"""Denoisers: one object that answers ``eps()``, ``x0()``, ``score()`` consistently for any model.

A denoiser owns the noise process it was trained with (:mod:`diffprop.processes`; a discrete model's is the
:class:`~diffprop.processes.DiscreteVP` of its beta schedule) and predicts, for ``x_t`` at times ``t`` (integer
timesteps 1..T on the discrete chain, continuous otherwise), both the noise and the clean sample, related by
``x_t = alpha(t) x_0 + sigma(t) eps``. Samplers, losses and diagnostics only ever talk to this interface, so a
trained network and the exact oracle are interchangeable.

Every call takes the caller's ``generator``: a stochastic denoiser (soft mixture denoising, 002 Sec. 4)
draws its latent noise from it, so its draws follow the run's seed; deterministic ones ignore it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .errors import DiffpropError
from .noise import randn
from .process import VAR_TYPES
from .processes import DiscreteVP, Process
from .schedules import NoiseSchedule

PARAMETERIZATIONS = ("eps", "x0", "v")
PROCESS_PARAMETERIZATIONS = ("eps", "x0", "v", "edm", "cm")
SMD_LOSSES = ("mse", "energy", "mixture")


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

    schedule: NoiseSchedule | None
    stochastic = False
    var_type = "beta"
    clip_x0: float | None = None

    @property
    def process(self) -> Process:
        """The noise process: the :class:`DiscreteVP` of ``schedule`` unless a subclass holds another."""
        cached = self.__dict__.get("_discrete")
        if cached is None or cached.schedule is not self.schedule:
            cached = DiscreteVP(self.schedule)
            self.__dict__["_discrete"] = cached
        return cached

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
        """``grad log q(x_t) = -eps / sigma(t)`` (``sigma^2 = 1 - abar_t`` on the discrete chain)."""
        return -self.eps(x_t, t, generator) / self.process.coefficients(t, x_t)[1].sqrt()


def _batched(t, x_t: torch.Tensor) -> torch.Tensor:
    """Times as a (B,) tensor on ``x_t``'s device: a scalar ``t`` is shared by the batch. Integer-valued float
    times (a discrete chain walked by a continuous-time driver) become integers, as backbones were called before."""
    t = torch.as_tensor(t, device=x_t.device)
    if t.is_floating_point() and bool((t == t.round()).all()):
        t = t.long()
    return t.expand(x_t.shape[0]) if t.ndim == 0 else t


def eps_x0(process: Process, x_t: torch.Tensor, t, *, eps: torch.Tensor | None = None,
           x0: torch.Tensor | None = None) -> Prediction:
    """The pair ``(eps, x0)`` from one of them, by ``x_t = alpha x_0 + sigma eps``."""
    a2, s2 = process.coefficients(t, x_t)
    if eps is not None:
        return Prediction(eps, (x_t - s2.sqrt() * eps) / a2.sqrt())
    return Prediction((x_t - a2.sqrt() * x0) / s2.sqrt(), x0)


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

    def target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What :meth:`raw` should output at ``x_t = q_sample(x0, t, eps)`` (:func:`training_target`)."""
        return training_target(self.parameterization, self.schedule, x0, t, eps)

    def read(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> Prediction:
        """The backbone output ``out`` at ``(x_t, t)`` read as a :class:`Prediction`."""
        if self.parameterization == "eps":
            return eps_x0(self.process, x_t, t, eps=out)
        if self.parameterization == "x0":
            return eps_x0(self.process, x_t, t, x0=out)
        abar, s2 = self.process.coefficients(t, x_t)
        return Prediction(s2.sqrt() * x_t + abar.sqrt() * out, abar.sqrt() * x_t - s2.sqrt() * out)


class SMDDenoiser(Denoiser):
    """Soft mixture denoising (002 Sec. 4): ``net(x_t, t - 1, eta)`` with latent noise ``eta ~ N(0, I)``.

    ``net`` is an SMD network (:mod:`diffprop.nets.smd`) of latent-noise shape ``net.eta_shape``; without
    an explicit ``eta`` every call draws a fresh one from ``generator`` (002 Alg. 1 line 5, Alg. 2 line 4:
    a new eta at every sampling step), so any sampler, loss or regularizer runs SMD unchanged. The
    denoising loss averages ``n_eta`` draws per example (002 Alg. 1, Fig. 4), or with ``loss="energy"`` scores
    them as a sample of the backward distribution, or with ``loss="mixture"`` takes the cross-entropy of their
    mixture (see :func:`diffprop.losses.denoising.regression_loss`).
    """

    stochastic = True

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, parameterization: str = "eps", n_eta: int = 1,
                 loss: str = "mse", var_type: str = "beta"):
        super().__init__(net, schedule, parameterization, var_type)
        if n_eta < 1:
            raise DiffpropError(f"n_eta must be >= 1, got {n_eta}")
        if loss not in SMD_LOSSES or (loss == "energy" and n_eta < 2):
            raise DiffpropError(f"SMD loss {loss!r} with n_eta = {n_eta}: allowed mse, mixture, or energy with "
                                f"n_eta >= 2")
        self.eta_shape, self.n_eta, self.loss = tuple(net.eta_shape), int(n_eta), loss

    def draw_eta(self, x_t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``eta ~ N(0, I)``, one per sample of ``x_t``, drawn on the generator's device."""
        return randn((x_t.shape[0], *self.eta_shape), generator, device=x_t.device, dtype=x_t.dtype)

    def raw(self, x_t, t, generator=None, eta=None):
        """The backbone's output at latent noise ``eta`` (deterministic), or at a fresh draw from ``generator``."""
        if eta is None:
            eta = self.draw_eta(x_t, generator)
        return self.net(x_t, _batched(t, x_t) - 1, eta).to(x_t.dtype)  # z_t = g_xi(eta, x_t, t), 002 Alg. 2 l. 5

    def predict(self, x_t, t, generator=None, eta=None):
        return self.read(x_t, t, self.raw(x_t, t, generator, eta))


class ProcessDenoiser(DenoiserBase):
    """A backbone on a continuous-time :class:`~diffprop.processes.Process`: ``out = net(c_in x_t, c_noise(t))``.

    With ``x~ = x_t / alpha`` (the variance-exploding view at noise level ``sigma~ = sigma / alpha``) the input is
    scaled by ``c_in = 1 / sqrt(sigma~^2 + sigma_data^2)`` (Karras et al. 2022 Tab. 1; ``= 1`` for VP data of unit
    variance) and ``c_noise`` is the process's ``net_time``. ``out`` is read as eps, x0, ``v = alpha eps - sigma
    x0`` (Salimans & Ho 2022; VP processes only) or, with ``edm``, as ``F`` in ``x0 = c_skip x~ + c_out F`` with
    ``c_skip = sigma_data^2 / (sigma~^2 + sigma_data^2)``, ``c_out = sigma~ sigma_data / sqrt(sigma~^2 +
    sigma_data^2)`` (Karras et al. Eq. 7, Tab. 1). :meth:`target` is what the denoising loss regresses ``out`` on.
    ``cm`` is a consistency model's ``f(x, t) = c_skip x~ + c_out F`` (Song et al. 2023 App. C, in the same VE view):
    ``c_skip = sigma_data^2 / ((sigma~ - sigma~_min)^2 + sigma_data^2)``, ``c_out = (sigma~ - sigma~_min) sigma_data
    / sqrt(sigma~^2 + sigma_data^2)`` with ``sigma~_min = sigma~(t_min)``, so ``f(x, t_min) = x / alpha(t_min)``
    exactly (``= x`` for VE and EDM); it is trained by the ``cd``/``ct`` losses
    (:mod:`diffprop.losses.consistency_models`).
    """

    schedule = None

    def __init__(self, net: nn.Module, process: Process, parameterization: str = "eps",
                 sigma_data: float | None = None):
        super().__init__()
        if parameterization not in PROCESS_PARAMETERIZATIONS:
            raise DiffpropError(f"unknown parameterization {parameterization!r}; "
                                f"allowed: {', '.join(PROCESS_PARAMETERIZATIONS)}")
        if parameterization == "v" and not process.vp:
            raise DiffpropError(f"the v parameterization needs a variance-preserving process, not {process.name}")
        self.net, self._process, self.parameterization = net, process, parameterization
        self.sigma_data = float(sigma_data if sigma_data is not None else getattr(process, "sigma_data", 1.0))

    @property
    def process(self) -> Process:
        return self._process

    def _scalings(self, t, x_t: torch.Tensor):
        """``(alpha, sigma~, c_in, c_skip, c_out)``, each broadcast against ``x_t``."""
        a2, s2 = self.process.coefficients(t, x_t)
        alpha, sd2 = a2.sqrt(), self.sigma_data ** 2
        st2 = s2 / a2  # sigma~^2
        return alpha, st2.sqrt(), (st2 + sd2).rsqrt(), sd2 / (st2 + sd2), st2.sqrt() * self.sigma_data * (
            st2 + sd2).rsqrt()

    def raw(self, x_t, t, generator=None):
        alpha, _, c_in, _, _ = self._scalings(t, x_t)
        c_noise = self.process.net_time(torch.as_tensor(t, dtype=torch.float64, device=x_t.device))
        return self.net(c_in * x_t / alpha, _batched(c_noise, x_t).to(x_t.dtype)).to(x_t.dtype)

    def predict(self, x_t, t, generator=None):
        out = self.raw(x_t, t, generator)
        if self.parameterization in ("eps", "x0"):
            return eps_x0(self.process, x_t, t, **{self.parameterization: out})
        alpha, st, _, c_skip, c_out = self._scalings(t, x_t)
        if self.parameterization == "v":
            sigma = st * alpha
            return Prediction(sigma * x_t + alpha * out, alpha * x_t - sigma * out)
        if self.parameterization == "cm":
            c_skip, c_out = self.cm_scalings(st, x_t)
        return eps_x0(self.process, x_t, t, x0=c_skip * x_t / alpha + c_out * out)

    def cm_scalings(self, st: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The consistency model's ``(c_skip, c_out)`` at ``sigma~ = st`` (Song et al. 2023 App. C, Eq. 19 shifted to
        ``sigma~_min``); ``sigma~_min`` is computed as ``st`` is, so both are exact at ``t_min``: 1 and 0."""
        st_min, sd = self._scalings(self.process.t_min, x[:1])[1], self.sigma_data
        return sd**2 / ((st - st_min) ** 2 + sd**2), (st - st_min) * sd * (st**2 + sd**2).rsqrt()

    def target(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """What ``raw`` should output at ``x_t = alpha x0 + sigma eps``: eps, x0, v, or EDM's ``F`` target
        ``(x0 - c_skip x~) / c_out`` (Karras et al. Eq. 8, whose weight ``lambda c_out^2 = 1`` makes it plain MSE)."""
        if self.parameterization == "cm":
            raise DiffpropError("the cm parameterization (a consistency model) has no denoising target; train it with "
                                "objective.loss = 'cd' or 'ct'")
        if self.parameterization == "eps":
            return eps
        if self.parameterization == "x0":
            return x0
        alpha, st, _, c_skip, c_out = self._scalings(t, x0)
        if self.parameterization == "v":
            return alpha * eps - st * alpha * x0
        return (x0 - c_skip * (x0 + st * eps)) / c_out
