"""Probability-flow ODE samplers (004 Thm 5.1, Eq. 5.8; Song et al. 2021, score SDE, Sec. 4.3; Karras et al. 2022
Alg. 1-2).

``dx/dt = f(x, t) - g(t)^2 / 2 grad log q_t(x)`` has the same marginals ``q_t`` as the SDE. With the score
``-eps_hat / sigma`` this is ``d log alpha/dt x + g^2 eps_hat / (2 sigma)``; for EDM (``alpha = 1, sigma = t``)
it is ``(x - D(x; t)) / t``. Every step ends at ``t_next = 0`` with the denoised sample.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import denoised, noise_like, time_arg


def ode_drift(denoiser, x, t, generator=None) -> torch.Tensor:
    """``dx/dt`` of the probability-flow ODE at ``(x, t)`` (004 Eq. 5.1, 5.8)."""
    f, g2 = denoiser.process.sde(x, t)
    return f - 0.5 * g2 * denoiser.score(x, time_arg(t, x), generator)


def euler_step(denoiser, x, t, t_next, generator=None):
    """One Euler step of the probability-flow ODE."""
    if t_next == 0:
        return denoised(denoiser, x, t, generator)
    return x + (float(t_next) - float(t)) * ode_drift(denoiser, x, t, generator)


def churn(denoiser, x, t, generator, gamma: float, s_tmin: float = 0.0, s_tmax: float = math.inf,
          s_noise: float = 1.0):
    """EDM's stochastic churn (Karras et al. Alg. 2 lines 5-7), for any process: where ``s_tmin <= sigma/alpha <=
    s_tmax``, move to the time ``t_hat`` whose noise-to-signal ratio is ``(1 + gamma)`` times ``t``'s by the forward
    transition ``x_hat = alpha_hat / alpha x + sigma_{hat|t} s_noise z``. Returns ``(x_hat, t_hat)``."""
    proc = denoiser.process
    tt = torch.tensor(float(t), dtype=torch.float64)
    ratio = float(torch.exp(-proc.log_snr(tt) / 2))
    if gamma <= 0 or not s_tmin <= ratio <= s_tmax:
        return x, t
    t_hat = float(proc.time_at_log_snr(proc.log_snr(tt) - 2 * math.log1p(gamma)))
    if t_hat <= float(t):
        return x, t
    th = torch.tensor(t_hat, dtype=torch.float64)
    a = float((proc.alpha2(th) / proc.alpha2(tt)).sqrt())
    std = float(proc.transition_var(th, tt).clamp(min=0).sqrt())
    return a * x + std * s_noise * noise_like(x, generator), t_hat


def heun_step(denoiser, x, t, t_next, generator=None, gamma: float = 0.0, s_tmin: float = 0.0,
              s_tmax: float = math.inf, s_noise: float = 1.0):
    """Heun's second-order step of the probability-flow ODE (Karras et al. Alg. 1; with ``gamma > 0`` Alg. 2's
    churn first): an Euler step, then the trapezoidal correction; the step to ``t_next = 0`` is the denoised
    sample (Alg. 1's last Euler step, exactly, for EDM)."""
    x, t = churn(denoiser, x, t, generator, gamma, s_tmin, s_tmax, s_noise)
    if t_next == 0:
        return denoised(denoiser, x, t, generator)
    h = float(t_next) - float(t)
    d = ode_drift(denoiser, x, t, generator)
    x_euler = x + h * d
    return x + h / 2 * (d + ode_drift(denoiser, x_euler, t_next, generator))


def rk45_step(denoiser, x, t, t_next, generator=None, rtol: float = 1e-5, atol: float = 1e-5,
              method: str = "RK45"):
    """The probability-flow ODE from ``t`` to ``t_next`` by ``scipy.integrate.solve_ivp`` (adaptive; Song et al.
    2021 (score SDE) use RK45 with ``rtol = atol = 1e-5``), the whole batch as one system; to 0, the denoised sample."""
    from scipy.integrate import solve_ivp

    if t_next == 0:
        return denoised(denoiser, x, t, generator)
    shape, dtype, device = x.shape, x.dtype, x.device

    def fun(s, y):
        xs = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        return ode_drift(denoiser, xs, float(s), generator).double().cpu().numpy().ravel()

    sol = solve_ivp(fun, (float(t), float(t_next)), x.double().cpu().numpy().ravel(), method=method,
                    rtol=rtol, atol=atol)
    return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape).to(device=device, dtype=dtype)
