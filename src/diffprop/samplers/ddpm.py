"""DDPM ancestral sampling (Ho et al. 2020 Alg. 2; 000 Eq. 2, 4), on the full or a respaced chain."""
from __future__ import annotations

import torch

from ..process import p_step
from .base import SamplerOutput, chain, noise_like, recorder


def ddpm_step(denoiser, x, t: int, t_prev: int, generator=None, var_type: str | None = None, clip_x0=None):
    """One ancestral step ``x_t -> x_{t_prev} ~ N(mu_theta(x_t, t), sigma^2 I)`` (000 Eq. 2, 4); no noise when
    ``t_prev = 0`` (Ho et al. Alg. 2 line 3); ``sigma^2`` is the denoiser's ``var_type`` and x0 is clipped to
    ``[-clip_x0, clip_x0]`` with the denoiser's ``clip_x0``, unless given. Differentiable: callers choose
    ``torch.no_grad()`` themselves."""
    sched = denoiser.schedule
    x0 = denoiser.predict(x, torch.tensor(t, device=x.device), generator).x0
    clip_x0 = denoiser.clip_x0 if clip_x0 is None else clip_x0
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    noise = noise_like(x, generator) if t_prev > 0 else None
    return p_step(x, x0, sched.gather("alpha_bars", t, x), sched.gather("alpha_bars", t_prev, x), noise,
                  var_type or denoiser.var_type)


@torch.no_grad()
def ddpm(denoiser, x, *, steps=None, generator=None, record=(), progress=False, var_type=None,
         clip_x0=None, spacing="even", offset=0) -> SamplerOutput:
    """``x_{t_prev} ~ N(mu_theta(x_t, t), sigma_t^2 I)``; with fewer steps than T the chain is respaced
    (``beta = 1 - abar_t / abar_prev``, Nichol & Dhariwal 2021). No noise is added on the last step.
    ``var_type`` (default: the denoiser's own) chooses ``sigma^2``: ``beta`` or ``beta_tilde``; ``clip_x0``
    (default: the denoiser's own) clips the predicted x0 before the posterior mean, as diffusers' ``clip_sample``."""
    want, states = recorder(record)
    for t, t_prev in chain(denoiser.schedule, steps, progress, spacing, offset):
        if t in want:
            states[t] = x.clone()
        x = ddpm_step(denoiser, x, t, t_prev, generator, var_type, clip_x0)
    if 0 in want:
        states[0] = x.clone()
    return SamplerOutput(x, states)
