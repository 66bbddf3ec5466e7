"""Consistency sampling (Song et al. 2023 Alg. 1): one step ``x0 = f(x_T, T)``, or several, re-noising in between.

A step maps ``x_t`` to ``x0 = f(x_t, t)`` (the denoiser's x0 prediction: a consistency model's ``f_theta``; any other
denoiser's ``E[x0|x_t]``) and then, unless ``t_next = 0``, draws ``x_{t_next}`` around it at noise level
``sqrt(sigma~(t_next)^2 - sigma~(t_min)^2)`` (Alg. 1 line 5, ``x = x0 + sqrt(tau^2 - eps^2) z``), read in the VE view
``x~ = x / alpha`` so that every process works. Its time list (``samplers.sampler_times``) holds ``t_max``, the
``K - 1`` chosen intermediate times and 0, never ``t_min``, where ``f`` is the identity.
"""
from __future__ import annotations

import torch

from .base import denoised, noise_like


def consistency_step(denoiser, x, t, t_next, generator=None):
    """``x0 = f(x, t)``; then ``x_{t_next} = alpha(t_next) (x0 + sqrt(sigma~(t_next)^2 - sigma~(t_min)^2) z)``."""
    x0 = denoised(denoiser, x, t, generator)  # Song et al. 2023 Alg. 1 lines 2, 6
    if t_next == 0:
        return x0
    proc = denoiser.process
    ts = torch.tensor([float(t_next), proc.t_min], dtype=torch.float64)
    st2 = proc.sigma2(ts) / proc.alpha2(ts)
    alpha = float(proc.alpha2(ts[0]).sqrt())
    return alpha * (x0 + float((st2[0] - st2[1]).clamp(min=0).sqrt()) * noise_like(x0, generator))  # Alg. 1 line 5
