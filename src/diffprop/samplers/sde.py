"""Reverse-time SDE samplers (004 Sec. 2 and 6.3; Song et al. 2021, score SDE, Sec. 4.1-4.2).

The reverse SDE of ``dx = f dt + g dw`` is ``dx = [f - g^2 grad log q_t(x)] dt + g dw_bar`` (004 Eq. 2.6, 4.2),
with the score ``grad log q_t = -eps_hat / sigma(t)`` from the denoiser. Every step ends at ``t_next = 0``
with the denoised sample (:func:`.base.denoised`).
"""
from __future__ import annotations

import torch

from ..noise import BLOCK
from ..processes import _t, at
from .base import denoised, noise_like, time_arg


def em_step(denoiser, x, t, t_next, generator=None):
    """Euler-Maruyama on the reverse SDE (004 Eq. 6.17): ``x + (f - g^2 s) dt + g sqrt(|dt|) z`` with ``dt < 0``."""
    if t_next == 0:
        return denoised(denoiser, x, t, generator)
    f, g2 = denoiser.process.sde(x, t)
    dt = float(t_next) - float(t)
    score = denoiser.score(x, time_arg(t, x), generator)
    return x + (f - g2 * score) * dt + (g2 * -dt).sqrt() * noise_like(x, generator)


def reverse_diffusion_step(denoiser, x, t, t_next, generator=None):
    """The reverse-diffusion predictor (Song et al. 2021, score SDE, Sec. 4.2): discretise the forward SDE between
    ``t_next`` and ``t`` as ``x_t = a x_next + G z`` (``a = alpha_t / alpha_next``, ``G^2 = sigma_{t|next}^2``, i.e.
    ``f_i = (a - 1) x``) and step ``x_next = x - f_i + G^2 s + G z``. On VP this is their
    ``(2 - sqrt(1 - beta_i)) x + beta_i s + sqrt(beta_i) z``; on VE ``x + (sigma_i^2 - sigma_{i-1}^2) s + ...``."""
    if t_next == 0:
        return denoised(denoiser, x, t, generator)
    proc = denoiser.process
    tt, tn = _t(float(t)), _t(float(t_next))
    a = at((proc.alpha2(tt) / proc.alpha2(tn)).sqrt(), x)
    G2 = at(proc.transition_var(tt, tn), x)
    score = denoiser.score(x, time_arg(t, x), generator)
    return (2 - a) * x + G2 * score + G2.sqrt() * noise_like(x, generator)


def langevin_step(denoiser, x, t, t_next, generator=None, snr: float = 0.16, steps: int = 1):
    """``steps`` Langevin corrector moves at time ``t`` (004 Eq. 6.18; Song et al. 2021, score SDE, Sec. 4.2):
    ``x + e s + sqrt(2 e) z`` with
    ``e = 2 a (snr ||z|| / ||s||)^2``, ``a = alpha_t^2 / alpha_next^2`` (their ``alpha_i``; 1 on VE). The norms
    are averaged over groups of ``BLOCK`` consecutive samples: score_sde averages over the batch (one sample's own
    norms make ``e`` explode where its score vanishes, at a mode's centre), which would make a sample depend on
    its batch; :func:`~diffprop.samplers.sample` aligns batches to these groups."""
    proc = denoiser.process
    a = float(proc.alpha2(_t(float(t))) / proc.alpha2(_t(float(t_next))))
    for _ in range(steps):
        score = denoiser.score(x, time_arg(t, x), generator)
        z = noise_like(x, generator)
        e = 2 * a * (snr * _group_norm(z) / _group_norm(score).clamp(min=1e-30)) ** 2
        x = x + e * score + (2 * e).sqrt() * z
    return x


def _group_norm(v: torch.Tensor) -> torch.Tensor:
    """Each sample's L2 norm averaged over its group of ``BLOCK`` consecutive samples, broadcast against ``v``."""
    n = v.flatten(1).norm(dim=1)
    groups = torch.stack([c.mean() for c in n.split(BLOCK)])
    return groups.repeat_interleave(torch.tensor([len(c) for c in n.split(BLOCK)], device=v.device)).reshape(
        -1, *[1] * (v.ndim - 1))


def pc_step(denoiser, x, t, t_next, generator=None, snr: float = 0.16, corrector_steps: int = 1):
    """Predictor-corrector (004 Sec. 6.3; Song et al. 2021, score SDE, Sec. 4.2): Langevin corrector at ``t``, then
    the reverse-diffusion
    predictor to ``t_next``."""
    x = langevin_step(denoiser, x, t, t_next, generator, snr, corrector_steps)
    return reverse_diffusion_step(denoiser, x, t, t_next, generator)
