"""DDIM sampling (Song et al. 2021 Eq. 12) on any subsequence of timesteps, with stochasticity ``eta``."""
from __future__ import annotations

import torch

from .base import SamplerOutput, chain, noise_like, recorder


@torch.no_grad()
def ddim(denoiser, x, *, steps=50, generator=None, record=(), progress=False, eta=0.0,
         clip_x0=None, clipped_eps=False, spacing="even", offset=0) -> SamplerOutput:
    """``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z`` with
    ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``.

    ``clip_x0`` (default: the denoiser's own) clips ``x0_hat`` to ``[-clip_x0, clip_x0]``. ``eps_hat`` is then
    the model's unclipped noise prediction (diffusers' default), or with ``clipped_eps`` the noise implied by the
    clipped x0, ``(x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)`` (diffusers' ``use_clipped_model_output``,
    as GLIDE does); without clipping the two coincide."""
    abar = denoiser.schedule.alpha_bars.to(x.device, x.dtype)
    clip = denoiser.clip_x0 if clip_x0 is None else clip_x0
    want, states = recorder(record)
    for t, t_prev in chain(denoiser.schedule, steps, progress, spacing, offset):
        if t in want:
            states[t] = x.clone()
        eps, x0 = denoiser.predict(x, torch.tensor(t, device=x.device), generator)
        a, a_prev = abar[t], abar[t_prev]
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            if clipped_eps:
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_prev > 0:
            x = x + sigma * noise_like(x, generator)
    if 0 in want:
        states[0] = x.clone()
    return SamplerOutput(x, states)
