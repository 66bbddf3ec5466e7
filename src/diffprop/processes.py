"""Noise processes in continuous time: ``x_t = alpha(t) x_0 + sigma(t) eps`` (004 Sec. 3; Karras et al. 2022 Tab. 1).

A :class:`Process` gives, for a time ``t`` (float, a 0-d tensor or one per sample):
- the marginal ``q(x_t|x_0) = N(alpha(t) x_0, sigma(t)^2 I)`` through ``alpha2`` = ``alpha^2`` and ``sigma2``;
- the forward SDE ``dx = f(x, t) dt + g(t) dw`` (004 Eq. 2.1) with ``f = (d log alpha / dt) x`` and
  ``g^2 = d sigma^2 / dt - 2 (d log alpha / dt) sigma^2`` (Kingma et al. 2021 App. A; Karras et al. Eq. 4 read
  backwards), from the exact derivatives ``dlog_alpha`` and ``dsigma2``;
- ``prior``: the distribution ``N(0, prior_std^2 I)`` samplers start from at ``t_max``;
- ``net_time``: what a backbone is fed (``t - 1`` for DDPM and diffusers checkpoints, ``999 t`` for score_sde-style
  VP models, ``log(sigma) / 4`` for EDM's ``c_noise``);
- ``grid(n, kind)``: ``n`` noisy times from ``t_max`` down to ``t_min``, then ``0``: the data, where ``alpha = 1`` and
  ``sigma = 0`` for every process, so a step to ``0`` is a step to the denoised sample.

:class:`DiscreteVP` is today's discrete chain (integer ``t = 0..T``, ``alpha^2 = abar_t``), exactly; between
integers ``log abar`` is linear, so ODE and SDE samplers can run on DDPM models too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import DiffpropError
from .names import SPACINGS
from .schedules import NoiseSchedule

GRIDS = ("uniform", "quadratic", "edm")  # every process; DiscreteVP adds the spacings of NoiseSchedule.spaced
EDM_RHO = 7.0  # Karras et al. 2022 Eq. 5


def _t(t, device=None) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64, device=device)


def at(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-time value (scalar or (B,)) in ``x``'s dtype and device, shaped to broadcast against ``x``."""
    v = v.to(device=x.device, dtype=x.dtype)
    return v if v.ndim == 0 else v.reshape(-1, *([1] * (x.ndim - 1)))


class Process:
    """Base class; subclasses give ``alpha2``, ``sigma2``, ``dlog_alpha``, ``dsigma2`` (float64, shaped like ``t``)."""

    name = ""
    vp = False  # alpha^2 + sigma^2 = 1
    t_min: float
    t_max: float
    prior_std = 1.0
    default_grid = "uniform"
    default_steps = 1000

    def alpha2(self, t) -> torch.Tensor:
        raise NotImplementedError

    def sigma2(self, t) -> torch.Tensor:
        raise NotImplementedError

    def dlog_alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def dsigma2(self, t) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t) -> torch.Tensor:
        return self.alpha2(t).sqrt()

    def sigma(self, t) -> torch.Tensor:
        return self.sigma2(t).sqrt()

    def coefficients(self, t, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha^2, sigma^2)`` at ``t`` in ``x``'s dtype, shaped to broadcast against ``x``."""
        t = _t(t, x.device)
        return at(self.alpha2(t), x), at(self.sigma2(t), x)

    def transition_var(self, t, s) -> torch.Tensor:
        """``sigma_{t|s}^2`` of ``q(x_t|x_s) = N(alpha_t / alpha_s x_s, sigma_{t|s}^2 I)`` for ``s < t``
        (Kingma et al. 2021 Eq. 2-3): ``sigma_t^2 - alpha_t^2 / alpha_s^2 sigma_s^2``."""
        return self.sigma2(t) - self.alpha2(t) / self.alpha2(s) * self.sigma2(s)

    def marginal(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = alpha(t) x_0 + sigma(t) eps`` (000 Eq. 1 for VP)."""
        a2, s2 = self.coefficients(t, x0)
        return a2.sqrt() * x0 + s2.sqrt() * eps

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` and ``g(t)^2`` (broadcast against ``x``) of the forward SDE (004 Eq. 2.1)."""
        t = _t(t, x.device)
        dl = self.dlog_alpha(t)
        return at(dl, x) * x, at(self.dsigma2(t) - 2 * dl * self.sigma2(t), x)

    def log_snr(self, t) -> torch.Tensor:
        return torch.log(self.alpha2(t)) - torch.log(self.sigma2(t))

    def time_at_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """The time of each log-SNR ``lam`` (clamped to ``[t_min, t_max]``), by bisection: log-SNR falls with t."""
        lam = _t(lam)
        lo, hi = torch.full_like(lam, self.t_min), torch.full_like(lam, self.t_max)
        for _ in range(80):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam  # still too little noise: the time lies later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    def net_time(self, t) -> torch.Tensor:
        raise NotImplementedError

    def prior(self, noise: torch.Tensor) -> torch.Tensor:
        """``x_{t_max}`` from standard normal ``noise``: ``N(0, prior_std^2 I)``."""
        return self.prior_std * noise

    def grid(self, n: int | None = None, kind: str | None = None, offset: int = 0) -> torch.Tensor:
        """``n`` noisy times (default ``default_steps``), decreasing from ``t_max`` to ``t_min``, then 0 (float64,
        length ``n + 1``); ``kind`` defaults to ``default_grid``.

        ``uniform`` in t; ``quadratic`` uniform in ``sqrt(t)`` (as the DDIM paper's ``quad`` skip on its integer steps,
        Song et al. 2021, but on ``[t_min, t_max]``); ``edm`` uniform in
        ``sigma^(1/rho)`` with rho = 7 (Karras et al. 2022 Eq. 5), mapped back to times through the log-SNR."""
        n, kind = self.default_steps if n is None else n, kind or self.default_grid
        if n < 1:
            raise DiffpropError(f"steps must be >= 1, got {n}")
        if offset:
            raise DiffpropError(f"a steps offset applies to the discrete chain's leading spacing, not to {self.name}")
        u = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
        lo, hi = self.t_min, self.t_max
        if kind == "uniform":
            ts = hi + u * (lo - hi)
        elif kind == "quadratic":
            ts = (math.sqrt(hi) + u * (math.sqrt(lo) - math.sqrt(hi))) ** 2
        elif kind == "edm":  # sigma / alpha = exp(-log_snr / 2) spaced as Karras et al.
            r_hi, r_lo = (float(torch.exp(-self.log_snr(_t(v)) / 2)) ** (1 / EDM_RHO) for v in (hi, lo))
            ratio = (r_hi + u * (r_lo - r_hi)) ** EDM_RHO
            ts = self.time_at_log_snr(-2 * torch.log(ratio))
            ts[-1], ts[0] = lo, hi  # exact ends (one step: t_max)
        else:
            raise DiffpropError(f"unknown time grid {kind!r} for the {self.name} process; allowed: "
                                f"{', '.join(self.grid_kinds())}")
        return torch.cat([ts, ts.new_zeros(1)])

    def grid_kinds(self) -> tuple[str, ...]:
        return GRIDS

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class DiscreteVP(Process):
    """Today's discrete variance-preserving chain: ``alpha^2(t) = abar_t`` at ``t = 0..T`` (000 Eq. 1), with
    ``log abar`` linear between integers. At integer times every coefficient is the schedule's own value in the
    caller's dtype, so samplers on this process reproduce the discrete chain bit for bit."""

    name = "discrete"
    vp = True
    default_grid = "even"

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule
        self.T = schedule.T
        self.t_min, self.t_max, self.default_steps = 1.0, float(schedule.T), schedule.T
        self._log_abar = torch.log(schedule.alpha_bars)  # float64, log abar_0 = 0

    def _log_alpha2(self, t: torch.Tensor) -> torch.Tensor:
        t = _t(t).clamp(0, self.T)
        lo = t.floor().long().clamp(max=self.T - 1)
        la = self._log_abar.to(t.device)
        return la[lo] + (t - lo) * (la[lo + 1] - la[lo])

    def _slope(self, t: torch.Tensor) -> torch.Tensor:
        """``d log abar / dt`` on the interval ``(k - 1, k]`` holding t: ``log(1 - beta_k)``."""
        t = _t(t)
        k = t.ceil().long().clamp(1, self.T)
        la = self._log_abar.to(t.device)
        return la[k] - la[k - 1]

    @staticmethod
    def _integral(t: torch.Tensor) -> bool:
        return bool((t == t.round()).all())

    def alpha2(self, t):
        t = _t(t)
        if self._integral(t):
            return self.schedule.alpha_bars.to(t.device)[t.long()]
        return torch.exp(self._log_alpha2(t))

    def sigma2(self, t):
        return 1 - self.alpha2(t)

    def coefficients(self, t, x):
        tt = _t(t)
        if not self._integral(tt):
            return super().coefficients(t, x)
        abar = self.schedule.gather("alpha_bars", tt.long(), x)  # exactly the schedule's values
        return abar, 1 - abar

    def transition_var(self, t, s):  # 1 - abar_t / abar_s = the respaced beta (Nichol & Dhariwal 2021 Eq. 19)
        return 1 - self.alpha2(t) / self.alpha2(s)

    def dlog_alpha(self, t):
        return self._slope(t) / 2

    def dsigma2(self, t):
        return -self.alpha2(t) * self._slope(t)

    def net_time(self, t):
        return _t(t) - 1  # backbones see 0..T-1 (diffusers' indexing)

    def grid(self, n: int | None = None, kind: str | None = None, offset: int = 0) -> torch.Tensor:
        """The timesteps a respaced chain visits (:meth:`NoiseSchedule.spaced`: ``even`` and diffusers'
        ``linspace``/``leading``/``trailing``; ``offset`` is diffusers' ``steps_offset``), or a continuous grid
        (``uniform``, ``quadratic``, ``edm``) on ``[1, T]`` whose times need not be integers; decreasing, then 0."""
        n, kind = self.T if n is None else n, kind or self.default_grid
        if not 1 <= n <= self.T:
            raise DiffpropError(f"steps must be in 1..{self.T} (the schedule's T), got {n}")
        if kind not in SPACINGS:
            return super().grid(n, kind, offset)
        ts = self.schedule.spaced(n, kind, offset)
        return torch.tensor([*reversed(ts), 0], dtype=torch.float64)

    def grid_kinds(self):
        return (*SPACINGS, *GRIDS)


@dataclass
class VPSDEConfig:
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3


class VPSDE(Process):
    """Variance-preserving SDE ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw``, ``beta(t)`` linear from ``beta_min``
    to ``beta_max`` on ``[0, 1]`` (004 Eq. 3.8-3.10; Song et al. 2021, score SDE, Sec. 3.4): ``alpha^2 = exp(-B(t))``
    with ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``."""

    name = "vp-sde"
    vp = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not 0 < beta_min < beta_max or not 0 < t_min < 1:
            raise DiffpropError(f"vp-sde needs 0 < beta_min < beta_max and 0 < t_min < 1; got beta_min {beta_min}, "
                                f"beta_max {beta_max}, t_min {t_min}")
        self.beta_min, self.beta_max, self.t_min, self.t_max = float(beta_min), float(beta_max), float(t_min), 1.0

    def beta(self, t):
        return self.beta_min + _t(t) * (self.beta_max - self.beta_min)

    def _B(self, t):
        t = _t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha2(self, t):
        return torch.exp(-self._B(t))

    def sigma2(self, t):
        return -torch.expm1(-self._B(t))

    def transition_var(self, t, s):
        return -torch.expm1(self._B(s) - self._B(t))

    def dlog_alpha(self, t):
        return -self.beta(t) / 2

    def dsigma2(self, t):
        return self.beta(t) * self.alpha2(t)

    def net_time(self, t):
        return 999 * _t(t)  # score_sde's continuous VP labels (t in [0, 1] onto DDPM's 0..999)


class SubVPSDE(VPSDE):
    """Sub-VP SDE (004 Eq. 3.12-3.13; Song et al. 2021, score SDE, Sec. 3.4): VP's drift,
    ``g^2 = beta(t) (1 - exp(-2 B(t)))``, so ``sigma^2 = (1 - exp(-B(t)))^2`` lies below the VP's."""

    name = "subvp-sde"
    vp = False

    def sigma2(self, t):
        return torch.expm1(-self._B(t)) ** 2

    def transition_var(self, t, s):
        return Process.transition_var(self, t, s)

    def dsigma2(self, t):
        return -2 * torch.expm1(-self._B(t)) * self.beta(t) * self.alpha2(t)


@dataclass
class VESDEConfig:
    sigma_min: float = 0.01
    sigma_max: float | None = None  # None: the largest pairwise distance of the data (Song & Ermon 2020, Tech. 1)
    t_min: float = 1e-5


class VESDE(Process):
    """Variance-exploding SDE ``dx = sqrt(d sigma^2 / dt) dw`` with ``sigma(t) = sigma_min (sigma_max /
    sigma_min)^t`` (004 Eq. 3.5-3.7; Song et al. 2021, score SDE, Sec. 3.4): ``alpha = 1``. ``sigma_max`` should be
    about the largest pairwise distance of the data (Song & Ermon 2020, Technique 1; :func:`largest_distance`)."""

    name = "ve-sde"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5):
        if not 0 < sigma_min < sigma_max or not 0 < t_min < 1:
            raise DiffpropError(f"ve-sde needs 0 < sigma_min < sigma_max and 0 < t_min < 1; got sigma_min "
                                f"{sigma_min}, sigma_max {sigma_max}, t_min {t_min}")
        self.sigma_min, self.sigma_max, self.t_min, self.t_max = float(sigma_min), float(sigma_max), float(t_min), 1.
        self.prior_std = self.sigma_max

    def alpha2(self, t):
        return torch.ones_like(_t(t))

    def sigma2(self, t):
        t = _t(t)
        s2 = (self.sigma_min * (self.sigma_max / self.sigma_min) ** t) ** 2
        return torch.where(t > 0, s2, torch.zeros_like(s2))  # sigma(0) = 0: the data

    def dlog_alpha(self, t):
        return torch.zeros_like(_t(t))

    def dsigma2(self, t):
        return 2 * math.log(self.sigma_max / self.sigma_min) * self.sigma2(t)

    def net_time(self, t):
        return torch.log(self.sigma(t)) / 4  # the noise level, as EDM's c_noise


@dataclass
class EDMConfig:
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float | None = None  # None: the data's standard deviation (Karras et al. use 0.5 for images)


class EDM(Process):
    """Karras et al. 2022 (EDM): ``alpha = 1``, ``sigma(t) = t`` (their Eq. 1 with ``s(t) = 1``, Tab. 1), so the
    probability-flow ODE is ``dx/dt = (x - D(x; t)) / t``. ``sigma_data`` is the data's std, used by the EDM
    preconditioning of a :class:`~diffprop.denoisers.ProcessDenoiser` and by the log-normal time sampler."""

    name = "edm"
    default_grid = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        if not 0 < sigma_min < sigma_max or not sigma_data > 0:
            raise DiffpropError(f"edm needs 0 < sigma_min < sigma_max and sigma_data > 0; got {sigma_min}, "
                                f"{sigma_max}, {sigma_data}")
        self.t_min, self.t_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.prior_std = self.t_max

    @property
    def sigma_min(self) -> float:
        return self.t_min

    @property
    def sigma_max(self) -> float:
        return self.t_max

    def alpha2(self, t):
        return torch.ones_like(_t(t))

    def sigma2(self, t):
        return _t(t) ** 2

    def dlog_alpha(self, t):
        return torch.zeros_like(_t(t))

    def dsigma2(self, t):
        return 2 * _t(t)

    def net_time(self, t):
        return torch.log(_t(t)) / 4  # c_noise (Karras et al. Tab. 1)


def largest_distance(x: torch.Tensor, max_points: int = 2000) -> float:
    """The largest pairwise distance among (up to ``max_points`` of) the data ``x``: VE's ``sigma_max``."""
    x = x.reshape(len(x), -1)[:max_points].double()
    return float(torch.cdist(x, x).max())


PROCESSES = {"discrete": None, "vp-sde": VPSDE, "subvp-sde": SubVPSDE, "ve-sde": VESDE, "edm": EDM}
PROCESS_CONFIGS = {"vp-sde": VPSDEConfig, "subvp-sde": VPSDEConfig, "ve-sde": VESDEConfig, "edm": EDMConfig}


def build_process(name: str, *, schedule: NoiseSchedule | None = None, data: torch.Tensor | None = None,
                  **options) -> Process:
    """The named process; ``discrete`` wraps ``schedule``. ``None`` options take their defaults, and VE's
    ``sigma_max`` / EDM's ``sigma_data`` default from ``data`` (its largest pairwise distance; its std)."""
    if name not in PROCESSES:
        raise DiffpropError(f"unknown process {name!r}; allowed: {', '.join(PROCESSES)}")
    if name == "discrete":
        if schedule is None:
            raise DiffpropError("the discrete process needs a beta schedule")
        return DiscreteVP(schedule)
    options = {k: v for k, v in options.items() if v is not None}
    if name == "ve-sde" and "sigma_max" not in options and data is not None:
        options["sigma_max"] = largest_distance(data)
    if name == "edm" and "sigma_data" not in options and data is not None:
        options["sigma_data"] = float(data.double().std())
    return PROCESSES[name](**options)
