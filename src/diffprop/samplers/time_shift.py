"""Time-shift sampling (Li et al. 2024, "Alleviating exposure bias in diffusion models through sampling with shifted
time steps"; their TS-DDPM and TS-DDIM) on the discrete chain: DDPM's and DDIM's option ``shift_window``.

Exposure bias leaves a state ``x_t`` of the sampling chain with a noise level other than ``t``'s. Before each step the
time-shift sampler reads the state's variance and treats it as the state of the timestep ``tau``, within a window of
``window`` timesteps centred on the scheduled ``t``, whose forward marginal has the closest variance; the network is
evaluated at ``tau`` and the step goes from ``tau`` to the scheduled next time (their Time-Shift Sampler:
``t_s = argmin_tau |sigma^2(x) - (1 - abar_tau)|`` over the window). Shifting stops at the ``cutoff`` timestep (the
variance of a sample near the data says nothing about its noise level) and never happens from ``t = T`` (the prior is
exact there).

The published rule compares the per-sample variance over pixels with ``1 - abar_tau``, the variance of the noise
alone, which suits images (many pixels per sample). ``data_var`` adds the data's share, ``abar_tau data_var + 1 -
abar_tau`` (the exact marginal variance of coordinates of variance ``data_var``), and ``variance="group"`` pools the
variance over each group of ``BLOCK`` consecutive samples (as the Langevin corrector pools its norms): in two
dimensions one sample's variance over its coordinates is no estimate of anything.
"""
from __future__ import annotations

import torch

from ..errors import DiffpropError
from ..noise import BLOCK

VARIANCES = ("sample", "group")
# (window, cutoff) of Li et al.'s official ADM code's example (5 DDIM steps on CIFAR-10); their DDIM-backbone code runs
# (5, 550) at 100 PNDM steps and (30, 300) at 5 DPM-solver steps: the window depends on the step size (`diffprop tune`)
WINDOW, CUTOFF = 80, 300  # the cutoff on their T = 1000 chain; CUTOFF / 1000 of T on others


def state_variance(x: torch.Tensor, variance: str = "sample") -> torch.Tensor:
    """The variance of each state (B,): over its own coordinates (``sample``, Li et al.'s ``var(x.view(B, -1))``), or
    over all coordinates of its group of ``BLOCK`` consecutive samples (``group``)."""
    flat = x.flatten(1).double()
    if variance == "sample":
        return flat.var(dim=1)
    sizes = [len(c) for c in flat.split(BLOCK)]
    v = torch.stack([c.var() for c in flat.split(BLOCK)])
    return v.repeat_interleave(torch.tensor(sizes, device=x.device))


def shifted_time(denoiser, x: torch.Tensor, t, t_next, window: int = WINDOW, cutoff: int | None = None,
                 data_var: float | None = None, variance: str = "sample"):
    """The time ``tau`` (per sample, a (B,) float64 tensor) among ``t + j``, ``|j| <= window // 2`` an integer, in
    ``(t_next, T]``, whose marginal variance ``abar_tau data_var + 1 - abar_tau`` is closest to the state's (Li et
    al. 2024, the Time-Shift Sampler's ``t_s = argmin``); ``t`` itself where no shift applies (``window = 0``,
    ``t <= cutoff`` or ``t = T``; ``cutoff`` None: the published 300 of 1000 timesteps, as the same share of T)."""
    proc = denoiser.process
    T = getattr(proc, "T", None)
    if T is None:
        raise DiffpropError(f"time-shift sampling picks among the timesteps of the discrete chain; the {proc.name} "
                            f"process has none")
    cutoff = round(CUTOFF * T / 1000) if cutoff is None else cutoff
    if window == 0 or float(t) <= cutoff or float(t) >= T:
        return t
    taus = float(t) + torch.arange(-(window // 2), window // 2 + 1, dtype=torch.float64, device=x.device)
    taus = taus[(taus > float(t_next)) & (taus >= 1) & (taus <= T)]  # t itself is always among them
    a2 = proc.alpha2(taus).to(x.device)
    target = (1 - a2) + a2 * (data_var or 0.0)
    v = state_variance(x, variance)
    return taus[(v[:, None] - target[None]).abs().argmin(dim=1)]


def time_shifted(step, window: int | None = None, cutoff: int | None = None, data_var: float | None = None,
                 variance: str | None = None):
    """``step`` (DDPM's or DDIM's, which take per-sample times) taken from the shifted time :func:`shifted_time`
    instead of the scheduled one: TS-DDPM and TS-DDIM (Li et al. 2024). ``None``: the defaults (window 0 = off,
    cutoff :data:`CUTOFF` of T = 1000, the published rule, as the same share of other T)."""
    if not window:
        return step
    variance = variance or "sample"

    def shifted(denoiser, x, t, t_next, generator=None):
        return step(denoiser, x, shifted_time(denoiser, x, t, t_next, window, cutoff, data_var, variance), t_next,
                    generator)
    return shifted


def check_time_shift(window: int | None, cutoff: int | None, data_var: float | None, variance: str | None) -> None:
    """Refuse options the time shift cannot use (one line each)."""
    if (window or 0) < 0 or (cutoff or 0) < 0:
        raise DiffpropError(f"time shift: window and cutoff must be >= 0 timesteps, got {window} and {cutoff}")
    if data_var is not None and not data_var >= 0:
        raise DiffpropError(f"time shift: data_var must be >= 0, got {data_var}")
    if variance is not None and variance not in VARIANCES:
        raise DiffpropError(f"time shift: unknown variance {variance!r}; allowed: {', '.join(VARIANCES)}")


__all__ = ["CUTOFF", "VARIANCES", "WINDOW", "check_time_shift", "shifted_time", "state_variance", "time_shifted"]
