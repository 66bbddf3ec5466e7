"""Epsilon scaling (Ning et al. 2024, "Elucidating the exposure bias in diffusion models"): a training-free fix of
exposure bias that divides the predicted noise by ``lambda(t) = b + k t`` at sampling time.

Their analysis: a sample ``x_t`` on the sampling chain drifts from the training marginal ``q(x_t)``, and the network
then over-predicts the noise norm; sampling with ``eps_theta(x_t, t) / lambda_t``, ``lambda_t > 1``, shrinks it back
(their linear schedule ``lambda_t = k t + b``; the "uniform" one, ``k = 0``, is their code's default, with ``b`` in
1.004 .. 1.017 for ADM at 100 steps). :class:`EpsScaled` wraps any denoiser so every sampler, diagnostic and loss
sees the scaled prediction, with ``x0`` and the score kept coherent (``x_t = alpha x0 + sigma eps``); ``make_step``'s
``eps_scaling`` applies it inside any sampler step (:func:`scaled_step`). ``t`` in ``lambda(t)`` is the process's
time as the denoiser is called with it (timesteps 1..T on the discrete chain).

Not to be confused with the oracle's ``eps_scale`` (:class:`~diffprop.oracle.OracleDenoiser`), which *multiplies* the
exact noise prediction by ``c`` to emulate a defect; scaling that oracle by ``lambda = c`` undoes it exactly.
"""
from __future__ import annotations

import math

import torch

from .denoisers import DenoiserBase, Prediction, eps_x0
from .errors import DiffpropError
from .processes import Process, at


def check_eps_scaling(b: float, k: float = 0.0, t_max: float | None = None) -> None:
    """Refuse a schedule ``lambda(t) = b + k t`` that is not finite and positive at both ends of ``[0, t_max]``."""
    if not (math.isfinite(b) and math.isfinite(k)):
        raise DiffpropError(f"epsilon scaling b = {b}, k = {k}: must be finite numbers")
    ends = (b,) if t_max is None else (b, b + k * t_max)
    if min(ends) <= 0:
        where = "" if t_max is None else f" in 0..{t_max:g}"
        raise DiffpropError(f"epsilon scaling lambda(t) = {b:g} {'-' if k < 0 else '+'} {abs(k):g} t must be > 0 for "
                            f"every t{where}; the published values are slightly above 1 (b = 1.017 for ADM on "
                            f"CIFAR-10 at 100 steps, k = 0)")


class EpsScaled(DenoiserBase):
    """``denoiser`` with its noise prediction divided by ``lambda(t) = b + k t`` (Ning et al. 2024) and its
    ``x0`` recomputed from it. ``b = 1, k = 0`` is ``denoiser`` itself, bit for bit."""

    def __init__(self, denoiser: DenoiserBase, b: float = 1.0, k: float = 0.0):
        super().__init__()
        check_eps_scaling(b, k, getattr(denoiser.process, "t_max", None))
        self.inner, self.b, self.k = denoiser, float(b), float(k)
        self.stochastic = denoiser.stochastic
        self.var_type, self.clip_x0 = denoiser.var_type, denoiser.clip_x0

    @property
    def process(self) -> Process:
        return self.inner.process

    @property
    def schedule(self):
        return self.inner.schedule

    def lam(self, t, x: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = b + k t`` in ``x``'s dtype, shaped to broadcast against ``x``."""
        return at(self.b + self.k * torch.as_tensor(t, dtype=torch.float64), x)

    def predict(self, x_t, t, generator=None) -> Prediction:
        pred = self.inner.predict(x_t, t, generator)
        if self.b == 1.0 and self.k == 0.0:
            return pred
        return eps_x0(self.process, x_t, t, eps=pred.eps / self.lam(t, x_t))  # Ning et al. 2024: eps_theta / lambda_t


def scaled_step(step, eps_scaling):
    """A sampler step ``step(denoiser, x, t, t_next, generator)`` that sees ``EpsScaled(denoiser, b, k)`` for
    ``eps_scaling`` = ``b`` or ``(b, k)``; ``step`` itself for None."""
    if eps_scaling is None:
        return step
    b, k = (float(eps_scaling), 0.0) if isinstance(eps_scaling, (int, float)) else tuple(eps_scaling)
    check_eps_scaling(b, k)

    def scaled(denoiser, x, t, t_next, generator=None):
        return step(EpsScaled(denoiser, b, k), x, t, t_next, generator)
    return scaled


def parse_eps_scaling(text: str) -> tuple[float, float]:
    """``"B"`` or ``"B,K"`` (the CLI's ``--eps-scaling``) as ``(b, k)``."""
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise DiffpropError(f"--eps-scaling {text[:40]!r}: expected B or B,K (numbers; lambda(t) = B + K t)")
    b, k = values[0], values[1] if len(values) == 2 else 0.0
    check_eps_scaling(b, k)
    return b, k


__all__ = ["EpsScaled", "check_eps_scaling", "parse_eps_scaling", "scaled_step"]
