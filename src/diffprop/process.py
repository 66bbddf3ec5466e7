"""Forward process ``q`` and one backward step ``p_theta`` of discrete diffusion.

Functions take ``abar_t`` / ``abar_prev`` as tensors broadcastable to ``x`` (use
:meth:`NoiseSchedule.gather`), so the same code serves the full chain, respaced chains (DDPM with
fewer steps, DDIM) and per-sample timesteps during training.
"""
from __future__ import annotations

import torch

from .errors import DiffpropError
from .schedules import NoiseSchedule

VAR_TYPES = ("beta", "beta_tilde")


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (000 Eq. 1)."""
    abar = schedule.gather("alpha_bars", t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def posterior_coefficients(abar_t: torch.Tensor, abar_prev: torch.Tensor):
    """``q(x_prev|x_t,x_0) = N(c0 x_0 + ct x_t, beta_tilde)`` for a step from ``abar_t`` to ``abar_prev``.

    With ``beta = 1 - abar_t / abar_prev`` this is Ho et al. Eq. 6-7 and reduces to it for adjacent steps.
    Returns ``(c0, ct, beta, beta_tilde)``.
    """
    beta = 1 - abar_t / abar_prev
    c0 = abar_prev.sqrt() * beta / (1 - abar_t)
    ct = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)
    beta_tilde = (1 - abar_prev) / (1 - abar_t) * beta
    return c0, ct, beta, beta_tilde


def q_posterior(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean and variance of ``q(x_{t-1}|x_t, x_0)`` (Ho et al. Eq. 6-7)."""
    c0, ct, _, var = posterior_coefficients(schedule.gather("alpha_bars", t, x_t),
                                            schedule.gather("alpha_bars_prev", t, x_t))
    return c0 * x0 + ct * x_t, var


def p_step(x_t: torch.Tensor, x0_hat: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor,
           noise: torch.Tensor | None, var_type: str = "beta") -> torch.Tensor:
    """One ancestral step ``x_prev ~ p_theta(x_prev|x_t) = N(mu_theta, sigma_t^2 I)`` (000 Eq. 2, 4).

    ``mu_theta`` is the posterior mean at the predicted ``x0_hat``, which for an eps-model equals
    000 Eq. 4's ``(x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)``. ``sigma_t^2`` is ``beta_t``
    (000's choice) or ``beta_tilde_t``; ``noise=None`` gives the mean (the last step of Ho et al. Alg. 2).
    """
    if var_type not in VAR_TYPES:
        raise DiffpropError(f"unknown backward variance {var_type!r}; allowed: {', '.join(VAR_TYPES)}")
    c0, ct, beta, beta_tilde = posterior_coefficients(abar_t, abar_prev)
    mean = c0 * x0_hat + ct * x_t
    if noise is None:
        return mean
    var = beta if var_type == "beta" else beta_tilde
    return mean + var.sqrt() * noise
