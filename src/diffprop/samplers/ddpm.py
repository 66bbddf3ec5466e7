"""DDPM ancestral sampling (Ho et al. 2020 Alg. 2; 000 Eq. 2, 4), on the full or a respaced chain of any process."""
from __future__ import annotations

import torch

from ..process import p_step
from ..processes import at
from .base import SamplerOutput, denoised, noise_like
from .driver import sample_from


def ddpm_step(denoiser, x, t, t_prev, generator=None, var_type: str | None = None, clip_x0=None):
    """One ancestral step ``x_t -> x_{t_prev} ~ N(mu_theta(x_t, t), sigma^2 I)`` (000 Eq. 2, 4): the Gaussian
    posterior ``q(x_{t_prev}|x_t, x_0)`` at the predicted ``x0_hat``, no noise when ``t_prev = 0`` (Ho et al. Alg. 2
    line 3). ``sigma^2`` is the denoiser's ``var_type`` unless given: ``beta`` = the forward transition's variance
    ``sigma_{t|s}^2``, ``beta_tilde`` = the posterior's; x0 is clipped with the denoiser's ``clip_x0`` unless
    given. On VP processes this is Ho et al. Eq. 6-7 respaced (Nichol & Dhariwal 2021 Eq. 19); on the others the
    posterior of Kingma et al. 2021 Eq. 3-4. ``t``, ``t_prev`` may be per-sample (B,) tensors (then noise is drawn
    unless every ``t_prev`` is 0, and masked where it is). Differentiable: callers choose ``torch.no_grad()``."""
    clip_x0 = denoiser.clip_x0 if clip_x0 is None else clip_x0
    x0 = denoised(denoiser, x, t, generator, clip_x0)
    noise = noise_like(x, generator) if bool((torch.as_tensor(t_prev) > 0).any()) else None
    if noise is not None and torch.is_tensor(t_prev) and t_prev.ndim:
        noise = noise * at((t_prev > 0).double(), x)
    var_type = var_type or denoiser.var_type
    proc = denoiser.process
    a2, s2 = proc.coefficients(t, x)
    a2_prev, s2_prev = proc.coefficients(t_prev, x)
    if proc.vp:
        return p_step(x, x0, a2, a2_prev, noise, var_type)
    tv = at(proc.transition_var(torch.as_tensor(t, dtype=torch.float64).cpu(),
                                torch.as_tensor(t_prev, dtype=torch.float64).cpu()), x)  # sigma_{t|s}^2
    mean = a2_prev.sqrt() * tv / s2 * x0 + (a2 / a2_prev).sqrt() * s2_prev / s2 * x
    if noise is None:
        return mean
    return mean + (tv if var_type == "beta" else tv * s2_prev / s2).sqrt() * noise


def ddpm(denoiser, x, *, steps=None, generator=None, record=(), progress=False, var_type=None,
         clip_x0=None, spacing=None, offset=0) -> SamplerOutput:
    """``x_{t_prev} ~ N(mu_theta(x_t, t), sigma_t^2 I)`` over the process's grid of ``steps`` times
    (default: every timestep of the discrete chain; ``spacing``, ``offset``: :meth:`DiscreteVP.grid`)."""
    times = denoiser.process.grid(steps, spacing, offset)
    return sample_from(denoiser, x, times, lambda d, y, t, s, g: ddpm_step(d, y, t, s, g, var_type, clip_x0),
                       generator=generator, record=record, progress=progress)
