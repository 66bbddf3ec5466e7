"""Training times: small callables ``sampler(process, n, generator, device) -> t``, one time per example.

Each entry of :data:`TIME_SAMPLERS` is a dataclass whose fields are its options and whose call draws ``n`` times
for a :class:`~diffprop.processes.Process` from ``generator``:

- ``uniform-int``: ``t ~ U{1..T}`` on the discrete chain (Ho et al. 2020 Alg. 1 line 3; 000 Eq. 3), the draw
  :class:`~diffprop.losses.DenoisingLoss` has always made (``torch.randint`` on the generator, bit for bit);
- ``uniform``: ``t ~ U[t_min, t_max]`` (Song et al. 2021, score SDE, Eq. 7, their continuous-time objective);
- ``log-normal``: ``ln sigma ~ N(p_mean, p_std^2)`` with ``sigma`` the noise-to-signal ratio ``sigma(t) / alpha(t)``
  (Karras et al. 2022 Sec. 5 and Tab. 1: ``P_mean = -1.2``, ``P_std = 1.2``);
- ``log-uniform``: ``ln sigma ~ U[ln sigma_min, ln sigma_max]`` (default: the process's range).

A noise level ``sigma`` becomes a time through the log-SNR ``-2 ln sigma`` (:meth:`Process.time_at_log_snr`,
clamped to ``[t_min, t_max]``); for EDM, where ``sigma(t) = t``, it is the time itself. On the discrete chain every
draw is an integer timestep: the first ``t`` in ``1..T`` whose noise-to-signal ratio reaches the drawn one (so a
discrete model is only ever trained, as it is sampled, at integer times).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .errors import DiffpropError
from .processes import EDM, DiscreteVP, Process


def _ratios(process: DiscreteVP, device) -> torch.Tensor:
    """The discrete chain's noise-to-signal ratios ``sqrt((1 - abar_t) / abar_t)`` at t = 1..T (increasing)."""
    abar = process.schedule.alpha_bars[1:].to(device=device, dtype=torch.float64)
    return ((1 - abar) / abar).sqrt()


def time_at_sigma(process: Process, sigma: torch.Tensor) -> torch.Tensor:
    """The time whose noise-to-signal ratio ``sigma(t) / alpha(t)`` is ``sigma``: an integer timestep on the discrete
    chain (the first that reaches it), ``sigma`` itself for EDM, else by the log-SNR ``-2 ln sigma``."""
    if isinstance(process, DiscreteVP):
        return (torch.searchsorted(_ratios(process, sigma.device), sigma) + 1).clamp(1, process.T)
    if isinstance(process, EDM):
        return sigma
    return process.time_at_log_snr(-2 * sigma.log()).to(sigma.device)


def _sigma_range(process: Process) -> tuple[float, float]:
    """The process's noise-to-signal ratios at ``t_min`` and ``t_max``."""
    lo, hi = (float(torch.exp(-process.log_snr(torch.tensor(v, dtype=torch.float64)) / 2))
              for v in (process.t_min, process.t_max))
    return lo, hi


def _continuous_time(process_name: str) -> DiffpropError:
    return DiffpropError(f"time sampler uniform-int draws the discrete chain's integer timesteps; the {process_name} "
                         f"process has continuous time (use uniform, log-normal or log-uniform)")


@dataclass
class UniformInt:
    """``t ~ U{1..T}``: the discrete chain's integer timesteps (Ho et al. 2020 Alg. 1 line 3)."""

    def __call__(self, process: Process, n: int, generator: torch.Generator, device) -> torch.Tensor:
        if not isinstance(process, DiscreteVP):
            raise _continuous_time(process.name)
        return torch.randint(1, process.T + 1, (n,), generator=generator, device=device)


@dataclass
class Uniform:
    """``t ~ U[t_min, t_max]`` (Song et al. 2021, score SDE, Eq. 7); None: the process's range (on the discrete chain
    ``(0, T]``, read as the integer timestep ``ceil(t)``)."""
    t_min: float | None = None
    t_max: float | None = None

    def __call__(self, process, n, generator, device):
        discrete = isinstance(process, DiscreteVP)
        lo = (0.0 if discrete else process.t_min) if self.t_min is None else self.t_min
        hi = process.t_max if self.t_max is None else self.t_max
        if not lo < hi:
            raise DiffpropError(f"time sampler uniform needs t_min < t_max, got {lo} and {hi}")
        t = lo + (hi - lo) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return t.ceil().long().clamp(1, process.T) if discrete else t


@dataclass
class LogNormal:
    """``ln sigma ~ N(p_mean, p_std^2)`` (Karras et al. 2022 Tab. 1, "Training": P_mean = -1.2, P_std = 1.2)."""
    p_mean: float = -1.2
    p_std: float = 1.2

    def __call__(self, process, n, generator, device):
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        return time_at_sigma(process, (self.p_mean + self.p_std * z).exp())


@dataclass
class LogUniform:
    """``ln sigma ~ U[ln sigma_min, ln sigma_max]``; None: the process's noise-to-signal ratio at ``t_min`` /
    ``t_max``."""
    sigma_min: float | None = None
    sigma_max: float | None = None

    def __call__(self, process, n, generator, device):
        lo, hi = _sigma_range(process)
        lo, hi = lo if self.sigma_min is None else self.sigma_min, hi if self.sigma_max is None else self.sigma_max
        if not 0 < lo < hi:
            raise DiffpropError(f"time sampler log-uniform needs 0 < sigma_min < sigma_max, got {lo} and {hi}")
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return time_at_sigma(process, (math.log(lo) + u * (math.log(hi) - math.log(lo))).exp())


TIME_SAMPLERS = {"uniform-int": UniformInt, "uniform": Uniform, "log-normal": LogNormal, "log-uniform": LogUniform}
# the preset of each process (a config's diffusion.time_sampler left out)
DEFAULT_TIME_SAMPLERS = {"discrete": "uniform-int", "edm": "log-normal"}


def default_time_sampler(process_name: str) -> str:
    """``uniform-int`` on the discrete chain, ``log-normal`` for EDM, ``uniform`` for the SDEs."""
    return DEFAULT_TIME_SAMPLERS.get(process_name, "uniform")


def build_time_sampler(name: str | None = None, process_name: str = "discrete", **options):
    """The named time sampler (None: the process's preset) with its options (unknown ones refused)."""
    name = name or default_time_sampler(process_name)
    if name not in TIME_SAMPLERS:
        raise DiffpropError(f"unknown time sampler {name!r}; allowed: {', '.join(TIME_SAMPLERS)}")
    cls = TIME_SAMPLERS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    if bad := sorted(set(options) - fields):
        raise DiffpropError(f"time sampler {name}: unknown option(s) {', '.join(bad)}; allowed: "
                            f"{', '.join(sorted(fields)) or 'none'}")
    if name == "uniform-int" and process_name != "discrete":
        raise _continuous_time(process_name)
    return cls(**options)


def time_sampler_for(cfg):
    """The time sampler of a run's config (``diffusion.time_sampler``, None: the process's preset)."""
    return build_time_sampler(cfg.diffusion.time_sampler, cfg.diffusion.process)
