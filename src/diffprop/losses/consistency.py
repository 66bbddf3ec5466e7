"""Consistent Diffusion Models (003, Daras et al. 2023): the martingale (consistency) loss of Sec. 4.

Lemma 3.1: a denoiser ``D(x, t) = E[x_0 | x_t = x]`` that is consistent with its own reverse process
is a reverse martingale, ``E_theta[D(x_{t'}, t') | x_t = x] = D(x, t)`` for all ``t' < t``. Sec. 4
penalises ``|E_theta[D(x_{t'}, t') | x_t] - D(x_t, t)|^2`` through the unbiased two-sample product
``(D(x'_1, t') - D(x_t, t)) . (D(x'_2, t') - D(x_t, t))`` with ``x'_1, x'_2`` two independent
reverse trajectories from ``x_t`` down to ``t'``, gradients into both ``D(x'_i, t')`` and
``D(x_t, t)`` but not through the trajectories (the "first summand" of Sec. 4; the public code,
giannisdaras/cdm, does the same with a few stochastic EDM steps over a short sigma window).

Here on the discrete DDPM chain: ``t`` drawn at the public code's noise levels (``t_dist = "edm"``: EDM's
``sigma ~ logN(-1.2, 1.2)`` in x0 units, and the first t with ``sigma_t = sqrt((1 - abar_t) / abar_t) >= sigma``)
or ``t ~ U{2..T}`` (``t_dist = "uniform"``), ``x_t = q_sample(x_0, t)``, ``t' ~ U{max(1, t - window) .. t - 1}``,
and each trajectory is ``steps`` ancestral DDPM steps (000 Eq. 2, 4) on the evenly spaced integer sub-chain from
``t`` to ``t'`` (fewer, at most ``t - t'``, when the window is shorter than ``steps``).

The weight ``lambda`` (``consistency.weight``) is 1.0 with the default ``t_dist = "edm"``; the public code's
value does not carry over. Per element and in units of the data's std (EDM: images in [-1, 1], ``sigma_data =
0.5``; gmm-grid: std S = 2), EDM's objective is ``(1 + 1 / sigma^2) e^2 + 10 sigma_data^2 c = ... + 2.5 c`` and
ours (the eps-MSE is the SNR-weighted x0-MSE) is ``e^2 / sigma^2 + 4 lambda c``: units alone say lambda ~ 0.6.

Why the noise levels matter: an eps-model's x0-prediction ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)`` magnifies
eps errors up to ``sqrt((1 - abar_T) / abar_T) ~ 158`` at t = T = 1000, where EDM's preconditioned ``D`` stays
bounded; EDM's log-normal rarely reaches sigma > 10, but ``t ~ U{2..T}`` puts 10 % of the draws at t > 900,
where the term lives. Measured with ``t_dist = "uniform"`` on gmm-grid (default MLP 256x4, T = 1000, batch 256,
lr 1e-3, 2000 steps; term / denoising loss of the live weights, 40 batches): lambda = 0 gives 0.25 / 0.366 (|grad|
15 vs 0.46; per t-band 1e-4, 3e-3, 0.10, 2.2 for t in [2, 100], [100, 500], [500, 900], [900, 1000]); lambda =
0.01: 0.10 / 0.371; lambda = 0.1: 0.029 / 0.380; lambda = 1: training diverges (denoising loss 23); the exact
oracle: 3e-4 +- 5e-4 / 0.315. So with uniform t, 0.1 is the largest decade that trains stably; but trained for
4000 steps (gmm-ring and gmm-grid, MLP 128x3, batch 256, cosine LR 2e-3) it still smears the modes into a ring
(KL estimate 33 vs 0.30 for DDPM, 0.28-0.32 of samples within 4 std of a mode vs 0.99). With the public code's
noise levels (``edm``), same gmm-ring recipe, seed 0: lambda = 0.1 gives KL 0.35, 98.3 % within 4 std, final term
1.8e-4; lambda = 1: KL 0.20, 99.0 %, term 1.1e-4 (DDPM: 0.30 +- 0.11 over 3 seeds). Hence edm and lambda = 1.
"""
from __future__ import annotations

import torch

from ..errors import DiffpropError
from ..process import q_sample
from ..samplers.ddpm import ddpm_step
from .objective import Term

T_DISTS = ("edm", "uniform")
P_MEAN, P_STD = -1.2, 1.2  # EDM's (Karras et al. 2022) training noise levels, used by the public CDM code


def sub_chain(t: torch.Tensor, t_prev: torch.Tensor, steps: int) -> torch.Tensor:
    """``(steps + 1, B)`` integer timesteps ``round(t - k (t - t') / steps)``, k = 0..steps, per sample.

    Rounding repeats a timestep when ``t - t' < steps``; a step between equal timesteps is the
    identity in :func:`~diffprop.process.p_step` (``beta = 0``), so at most ``t - t'`` steps act.
    """
    k = torch.arange(steps + 1, device=t.device, dtype=torch.float64)[:, None]
    return torch.round(t.double() - k * (t - t_prev).double() / steps).long()


class Consistency:
    """003 Sec. 4: ``mean((D(x'_1, t') - D(x_t, t)) * (D(x'_2, t') - D(x_t, t)))``, ``D`` the x0-prediction."""

    def __init__(self, steps: int = 5, window: int = 20, weight: float = 1.0, var_type: str = "beta",
                 t_dist: str = "edm"):
        if t_dist not in T_DISTS:
            raise DiffpropError(f"consistency t_dist must be one of {', '.join(T_DISTS)}, got {t_dist!r}")
        self.steps, self.window, self.weight, self.var_type = int(steps), int(window), float(weight), var_type
        self.t_dist = t_dist

    @classmethod
    def from_config(cls, cfg, sample_data=None) -> "Consistency":
        c = cfg.consistency
        return cls(steps=c.steps, window=c.window, weight=c.weight, var_type=cfg.diffusion.var_type, t_dist=c.t_dist)

    def draw_t(self, schedule, B: int, generator: torch.Generator, device) -> torch.Tensor:
        """``t`` in ``2..T``: uniform, or (``edm``) the first t whose ``sigma_t = sqrt((1 - abar_t) / abar_t)``
        reaches ``sigma ~ logN(P_MEAN, P_STD)``, the noise levels of the public code's martingale loss."""
        T = schedule.T
        if self.t_dist == "uniform":
            return torch.randint(2, T + 1, (B,), generator=generator, device=device)
        abar = schedule.alpha_bars[1:].to(device=device, dtype=torch.float64)
        sigmas = ((1 - abar) / abar).sqrt()  # increasing in t = 1..T
        sigma = (P_MEAN + P_STD * torch.randn(B, generator=generator, device=device, dtype=torch.float64)).exp()
        return (torch.searchsorted(sigmas, sigma) + 1).clamp(2, T)

    @torch.no_grad()
    def reverse(self, denoiser, x_t: torch.Tensor, chain: torch.Tensor, generator: torch.Generator):
        """Ancestral DDPM steps along ``chain`` (``(K + 1, B)`` timesteps, all >= 1), no gradient (003 Sec. 4): the
        sampler's own step, x0 clipped as the denoiser's sampler clips it."""
        x = x_t
        for t_cur, t_next in zip(chain[:-1], chain[1:]):
            x = ddpm_step(denoiser, x, t_cur, t_next, generator, self.var_type)
        return x

    def __call__(self, denoiser, x0: torch.Tensor, generator: torch.Generator) -> Term:
        T, B, dev = denoiser.schedule.T, x0.shape[0], x0.device
        if T < 2:
            raise DiffpropError("consistency needs diffusion.T >= 2 (a reverse step from t to t' < t)")
        t = self.draw_t(denoiser.schedule, B, generator, dev)
        lo = (t - self.window).clamp(min=1)
        t_prev = lo + (torch.rand(B, generator=generator, device=dev, dtype=torch.float64)
                       * (t - lo)).long()  # U{lo .. t - 1}
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        x_t = q_sample(denoiser.schedule, x0, t, eps)
        # two independent trajectories, run as one batch of 2B
        chain = sub_chain(t, t_prev, self.steps).repeat(1, 2)
        x_prev = self.reverse(denoiser, x_t.repeat(2, *[1] * (x0.ndim - 1)), chain, generator)
        d_t = denoiser.predict(x_t, t, generator).x0
        d1, d2 = denoiser.predict(x_prev, t_prev.repeat(2), generator).x0.chunk(2)
        value = ((d1 - d_t) * (d2 - d_t)).mean()  # 003 Sec. 4, two-sample estimate of L^2_{t,t',x}
        return Term(value, {"gap": (t - t_prev).double().mean()})
