"""DDPM ancestral sampling (Ho et al. 2020 Alg. 2; 000 Eq. 2, 4), on the full or a respaced chain."""
from __future__ import annotations

import torch

from ..process import p_step
from .base import SamplerOutput, chain, noise_like, recorder


@torch.no_grad()
def ddpm(denoiser, x, *, steps=None, generator=None, record=(), progress=False, var_type="beta",
         clip_x0=None) -> SamplerOutput:
    """``x_{t_prev} ~ N(mu_theta(x_t, t), sigma_t^2 I)``; with fewer steps than T the chain is respaced
    (``beta = 1 - abar_t / abar_prev``, Nichol & Dhariwal 2021). No noise is added on the last step."""
    abar = denoiser.schedule.alpha_bars.to(x.device, x.dtype)
    want, states = recorder(record)
    for t, t_prev in chain(denoiser.schedule, steps, progress):
        if t in want:
            states[t] = x.clone()
        x0 = denoiser.predict(x, torch.tensor(t, device=x.device)).x0
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        noise = noise_like(x, generator) if t_prev > 0 else None  # Ho et al. Alg. 2 line 3
        x = p_step(x, x0, abar[t], abar[t_prev], noise, var_type)  # 000 Eq. 4
    if 0 in want:
        states[0] = x.clone()
    return SamplerOutput(x, states)
