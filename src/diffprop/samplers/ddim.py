"""DDIM sampling (Song et al. 2021, DDIM, Eq. 12) on any grid of times of any process, with stochasticity ``eta``."""
from __future__ import annotations

import torch

from ..processes import at
from .base import SamplerOutput, noise_like, time_arg
from .driver import sample_from


def ddim_step(denoiser, x, t, t_prev, generator=None, eta: float = 0.0, clip_x0=None, clipped_eps: bool = False):
    """``x_prev = alpha_prev x0_hat + sqrt(sigma_prev^2 - s^2) eps_hat + s z`` with
    ``s^2 = eta^2 sigma_prev^2 / sigma_t^2 sigma_{t|prev}^2`` (Song et al. 2021, DDIM, Eq. 12, 16; 004 Eq. 6.20; on VP
    processes
    ``alpha^2 = abar``, ``sigma^2 = 1 - abar``, ``sigma_{t|prev}^2 = 1 - abar_t / abar_prev``).

    ``clip_x0`` (default: the denoiser's own) clips ``x0_hat`` to ``[-clip_x0, clip_x0]``. ``eps_hat`` is then
    the model's unclipped noise prediction (diffusers' default), or with ``clipped_eps`` the noise implied by the
    clipped x0, ``(x_t - alpha_t x0_hat) / sigma_t`` (diffusers' ``use_clipped_model_output``, as GLIDE does);
    without clipping the two coincide."""
    clip = denoiser.clip_x0 if clip_x0 is None else clip_x0
    eps, x0 = denoiser.predict(x, time_arg(t, x), generator)
    proc = denoiser.process
    a, s2 = proc.coefficients(t, x)
    a_prev, s2_prev = proc.coefficients(t_prev, x)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        if clipped_eps:
            eps = (x - a.sqrt() * x0) / s2.sqrt()
    # sigma_{t|prev}^2 in x's dtype (process.transition_var is float64): the discrete chain's exact arithmetic
    transition = 1 - a / a_prev if proc.vp else s2 - a / a_prev * s2_prev
    sigma = eta * (s2_prev / s2 * transition).sqrt()
    x = a_prev.sqrt() * x0 + (s2_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0 and bool((torch.as_tensor(t_prev) > 0).any()):
        noise = noise_like(x, generator)
        if torch.is_tensor(t_prev) and t_prev.ndim:  # per-sample times: no noise where the chain reaches the data
            noise = noise * at((t_prev > 0).double(), x)
        x = x + sigma * noise
    return x


def ddim(denoiser, x, *, steps=50, generator=None, record=(), progress=False, eta=0.0,
         clip_x0=None, clipped_eps=False, spacing=None, offset=0) -> SamplerOutput:
    """:func:`ddim_step` over the process's grid of ``steps`` times (``spacing``, ``offset``: its ``grid``)."""
    times = denoiser.process.grid(steps, spacing, offset)
    return sample_from(denoiser, x, times,
                       lambda d, y, t, s, g: ddim_step(d, y, t, s, g, eta, clip_x0, clipped_eps),
                       generator=generator, record=record, progress=progress)
