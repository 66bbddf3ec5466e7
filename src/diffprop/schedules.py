"""Beta schedules and the quantities of the discrete forward process, precomputed in float64.

Indexing follows the papers: ``t = 1..T`` are the noisy states and index ``0`` is the data, so every
array has ``T + 1`` entries with ``beta_0 = 0`` and ``abar_0 = 1``. Backbones are called with
``t - 1`` (diffusers' indexing), which the :class:`~diffprop.denoisers.Denoiser` takes care of.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import DiffpropError
from .names import RENAMED, SPACINGS

SCHEDULES = ("linear", "cosine", "sigmoid_abar")
BETA_START, BETA_END = 1e-4, 0.02  # Ho et al. 2020's linear schedule at T = 1000
BETA_MAX = 0.999  # cap on any beta (Nichol & Dhariwal 2021), so that alpha_t > 0


def linear_range(T: int, beta_start: float | None = None, beta_end: float | None = None) -> tuple[float, float]:
    """The linear schedule's ``(beta_1, beta_T)``: the given values, or Ho et al.'s ``(1e-4, 0.02)`` scaled by
    ``1000 / T`` (Nichol & Dhariwal 2021, as improved-diffusion does) so that every T ends near ``N(0, I)``
    (``abar_T`` ~ 4e-5 for any T >= 50; unscaled, T = 100 would stop at ``abar_T = 0.36``). Scaled values are
    capped at 0.999, which T < 21 reaches."""
    scale = 1000 / T
    return (min(BETA_START * scale, BETA_MAX) if beta_start is None else beta_start,
            min(BETA_END * scale, BETA_MAX) if beta_end is None else beta_end)


def make_betas(kind: str, T: int, beta_start: float | None = None, beta_end: float | None = None) -> np.ndarray:
    """``beta_1..beta_T`` (float64, shape (T,)) for the named schedule.

    ``beta_start`` / ``beta_end`` apply to ``linear`` only: explicit values are used as given (diffusers'
    convention); ``None`` scales Ho et al.'s by ``1000 / T`` (:func:`linear_range`)."""
    if T < 1:
        raise DiffpropError(f"betas must be a non-empty 1-D array: T must be >= 1, got {T}")
    if kind == "linear":  # Ho et al. 2020; 000's default
        return np.linspace(*linear_range(T, beta_start, beta_end), T, dtype=np.float64)
    if kind == "cosine":  # Nichol & Dhariwal 2021, = diffusers' "squaredcos_cap_v2"
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / T) / f(i / T), BETA_MAX) for i in range(T)])
    if kind == "sigmoid_abar":  # Jabri et al. 2022, the EPDM/SMD public code's "sigmoid" (start -3, end 3, tau 1)
        s = lambda u: 1 / (1 + np.exp(-u))  # noqa: E731
        u = np.linspace(0, 1, T + 1, dtype=np.float64)
        abar = (s(3.0) - s(6 * u - 3)) / (s(3.0) - s(-3.0))
        return np.clip(1 - abar[1:] / abar[:-1], 0, BETA_MAX)
    why = f" ({RENAMED['diffusion.schedule'][kind][1]})" if kind in RENAMED["diffusion.schedule"] else ""
    raise DiffpropError(f"unknown beta schedule {kind!r}{why}; allowed: {', '.join(SCHEDULES)}")


class NoiseSchedule:
    """``beta_t``, ``alpha_t``, ``abar_t`` and the posterior ``q(x_{t-1}|x_t,x_0)`` coefficients, t = 0..T."""

    def __init__(self, betas: np.ndarray | torch.Tensor):
        b = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        if b.ndim != 1 or len(b) < 1 or not bool(((b > 0) & (b < 1)).all()):
            raise DiffpropError("betas must be a non-empty 1-D array with every value in (0, 1)")
        self.T = len(b)
        self.betas = torch.cat([b.new_zeros(1), b])  # beta_0 = 0
        self.alphas = 1 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)  # abar_0 = 1
        self.alpha_bars_prev = torch.cat([self.alpha_bars.new_ones(1), self.alpha_bars[:-1]])
        # beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (Ho et al. Eq. 7); 0 at t = 0 and t = 1
        self.betas_tilde = torch.zeros_like(self.betas)
        self.betas_tilde[1:] = (1 - self.alpha_bars_prev[1:]) / (1 - self.alpha_bars[1:]) * self.betas[1:]
        self._cache: dict = {}

    @classmethod
    def from_config(cls, kind: str = "linear", T: int = 1000, beta_start: float | None = None,
                    beta_end: float | None = None) -> "NoiseSchedule":
        return cls(make_betas(kind, T, beta_start, beta_end))

    def gather(self, name: str, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """``name[t]`` in ``x``'s dtype and device, shaped to broadcast against ``x`` (t per sample or scalar)."""
        key = (name, x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device=x.device, dtype=x.dtype)
        arr = self._cache[key]
        if isinstance(t, (int, np.integer)) or (torch.is_tensor(t) and t.ndim == 0):
            return arr[int(t)]
        return arr[t.to(x.device)].reshape(-1, *([1] * (x.ndim - 1)))

    def spaced(self, steps: int, spacing: str = "even", offset: int = 0) -> list[int]:
        """``steps`` timesteps of 1..T, increasing, that a respaced chain visits.

        ``even``: ``round(linspace(1, T, steps))``, always including 1 and T. The others are diffusers'
        ``timestep_spacing`` (``DDPMScheduler.set_timesteps``), its timesteps ``k`` read as ``t = k + 1``:
        ``linspace`` ``round(linspace(0, T - 1, steps))`` (= ``even`` but where numpy's half-to-even rounding
        differs), ``leading`` ``arange(steps) * (T // steps) + offset`` (diffusers' ``steps_offset``; its default),
        ``trailing`` ``round(arange(T, 0, -T / steps)) - 1`` (always includes T: Lin et al. 2024). Samplers step
        from each to the next one visited; diffusers' schedulers step from ``k`` to ``k - T // steps``, the same
        chain for ``leading`` (with ``offset < T // steps``) and for ``trailing`` when ``steps`` divides T."""
        if not 1 <= steps <= self.T:
            raise DiffpropError(f"steps must be in 1..{self.T} (the schedule's T), got {steps}")
        T = self.T
        if spacing == "even":
            return [T] if steps == 1 else sorted({int(round(v)) for v in np.linspace(1, T, steps)})
        if spacing == "linspace":
            k = np.linspace(0, T - 1, steps).round()
        elif spacing == "leading":
            k = np.arange(steps) * (T // steps) + offset
        elif spacing == "trailing":
            k = np.round(np.arange(T, 0, -T / steps)) - 1
        else:
            raise DiffpropError(f"unknown timestep spacing {spacing!r}; allowed: {', '.join(SPACINGS)}")
        ts = sorted({int(v) + 1 for v in k})
        if len(ts) != steps or not 1 <= ts[0] <= ts[-1] <= T:
            raise DiffpropError(f"{spacing} spacing with steps_offset {offset} does not give {steps} distinct "
                                f"timesteps in 1..{T}")
        return ts
