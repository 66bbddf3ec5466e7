"""Denoising where the sampler goes: the data's own denoiser taught at the states of the model's sampling chain.

A trained DDPM's chain drifts into regions the forward samples ``q(x_t)`` seldom visit (between the modes of a
mixture, near t = 1): the denoising loss (000 Eq. 3) never trains the network there, so its error is largest
exactly where the chain needs it, and every later step carries the error on (the exposure bias of Ning et al.
2023; the error propagation of Li & van der Schaar 2024). This term trains the network at the chain's own states:

- ``x~_t``: the replay buffer of :class:`~diffprop.losses.chain_mmd.ChainMMD` (the model's DDPM chain from
  ``x_T ~ N(0, I)``, advanced ``L`` steps per training step, checkpointed), here entirely without gradients;
- the target at ``x~_t`` is what the denoising loss's minimiser outputs there, ``target(E_q[x_0 | x_t], t,
  E_q[eps | x_t])`` (eps, x0 or v: each is linear in ``(x_0, eps)`` at fixed ``x_t``), with the posterior mean of
  the empirical distribution of ``reference`` fresh training examples ``x_0^j`` (the ideal denoiser of a finite
  data set, as Karras et al. 2022 write it; the stable-target estimate of Xu et al. 2023)::

      E_q[x_0 | x_t] = sum_j w_j x_0^j,   w_j = softmax_j(-||x_t - alpha_t x_0^j||^2 / (2 sigma_t^2)),
      E_q[eps | x_t] = (x_t - alpha_t E_q[x_0 | x_t]) / sigma_t;

- the value is ``w(t) mean_i ||raw(x~_t^i, t) - target_i||^2`` (per dimension, like the denoising loss) with
  chain_mmd's importance weights ``w(t)`` toward small t (log-uniform by default).

Unlike the denoising loss, whose minimum is the conditional variance of its noisy target, this term is 0 at the
exact denoiser up to the reference's finite-sample error, and a bias ``b`` in the predicted eps raises it by about
``b^2`` (tests/test_chain_denoise.py). With a small ``sigma_t`` against the spacing of the reference set the
posterior mean snaps to the nearest reference example (the empirical denoiser memorises); a fresh reference per
step averages that out over steps only where the data are dense at the scale ``sigma_t`` (gmm-grid's modes). On
images it does not: a new sample's nearest training image is a different image, and the target ``E_q[eps | x_t]``
then teaches the network to pull its samples onto training images (for held-out digits at T = 100 the weights'
effective sample size ``ESS = 1 / sum_j w_j^2`` is 1.0 at t <= 10, and the target's eps differs from the true one by
a mean square of 0.7 at t = 10, 73 at t = 1; docs/results.md). ``min_ess`` drops the particles whose target averages
fewer than that many examples (1, the default, keeps all).
"""
from __future__ import annotations

import math

import torch

from ..errors import DiffpropError
from .chain_mmd import ChainMMD
from .denoising import regression_loss
from .objective import Term


def posterior_weights(x_t: torch.Tensor, a2: float, s2: float, reference: torch.Tensor) -> torch.Tensor:
    """The weights ``w_j`` of ``E[x_0 | x_t] = sum_j w_j x_0^j`` under the empirical distribution of ``reference``
    with ``x_t = alpha x_0 + sigma eps`` (``a2 = alpha^2``, ``s2 = sigma^2``): a softmax over the reference examples,
    (len(x_t), len(reference)), in float64."""
    x, ref = x_t.flatten(1).double(), reference.flatten(1).double()
    return torch.softmax(-torch.cdist(x, math.sqrt(a2) * ref).pow(2) / (2 * s2), dim=1)


def posterior_mean(x_t: torch.Tensor, a2: float, s2: float, reference: torch.Tensor,
                   w: torch.Tensor | None = None) -> torch.Tensor:
    """``E[x_0 | x_t]`` under the empirical distribution of ``reference`` (its weights ``w`` if already computed)."""
    w = posterior_weights(x_t, a2, s2, reference) if w is None else w
    return (w @ reference.flatten(1).double()).view_as(x_t).to(x_t.dtype)


def effective_sample_size(w: torch.Tensor) -> torch.Tensor:
    """Kish's ``1 / sum_j w_j^2`` per row of normalised weights: how many examples a posterior mean averages."""
    return 1.0 / w.pow(2).sum(1)


class ChainDenoise(ChainMMD):
    """``reg(denoiser, x0, generator) -> Term(w(t) ||raw(x~_t, t) - target*||^2)``; build it with
    :meth:`from_config`. Logs: ``mse`` (the raw mean square over the kept particles), ``kept`` (the fraction with
    ``ESS >= min_ess``), ``t``, ``w_t``, ``refreshed``."""
    NAME = "chain_denoise"

    def __init__(self, *, T: int, weight: float, L: int = 5, time_weights: str = "log_uniform",
                 particles: int | None = None, reference: int = 4096, min_ess: float = 1.0, var_type: str = "beta",
                 sample_data=None):
        super().__init__(T=T, weight=weight, L=L, grad="last", time_weights=time_weights, particles=particles,
                         var_type=var_type)
        if reference < 1:
            raise DiffpropError(f"{self.NAME}: reference must be >= 1, got {reference}")
        if not 1.0 <= min_ess <= reference:
            raise DiffpropError(f"{self.NAME}: min_ess must lie in [1, reference = {reference}], got {min_ess}")
        self.reference, self.min_ess, self.sample_data = int(reference), float(min_ess), sample_data

    @classmethod
    def from_config(cls, cfg, sample_data=None) -> "ChainDenoise":
        """The ``[chain_denoise]`` section; T and var_type come from ``[diffusion]``; the reference examples from
        the trainer's data (the batch itself without ``sample_data``)."""
        c = cfg.chain_denoise
        return cls(T=cfg.diffusion.T, weight=c.weight, L=c.L, time_weights=c.time_weights, particles=c.particles,
                   reference=c.reference, min_ess=c.min_ess, var_type=cfg.diffusion.var_type, sample_data=sample_data)

    def __call__(self, denoiser, x0: torch.Tensor, generator: torch.Generator) -> Term:
        x, t, refreshed = self.advance(denoiser, x0, generator, grad=False)
        ref = x0 if self.sample_data is None else self.sample_data(self.reference, generator).to(x0)
        a2, s2 = (float(c.flatten()[0]) for c in denoiser.process.coefficients(t, x0[:1]))
        w = posterior_weights(x, a2, s2, ref)
        x0_hat = posterior_mean(x, a2, s2, ref, w)  # E_q[x_0 | x~_t]
        eps_hat = (x - math.sqrt(a2) * x0_hat) / math.sqrt(s2)  # E_q[eps | x~_t]
        tt = torch.full((len(x),), t, device=x.device, dtype=torch.long)
        keep = (effective_sample_size(w) >= self.min_ess).to(x.dtype)
        per = regression_loss(denoiser, x, tt, denoiser.target(x0_hat, tt, eps_hat), generator)
        mse = (per * keep).sum() / keep.sum().clamp(min=1.0)  # 0, still in the graph, when none is kept
        w_t = float(self.w[t - 1])
        return Term(w_t * mse, {"mse": mse.detach(), "kept": float(keep.mean()), "t": t, "w_t": w_t,
                                "refreshed": int(refreshed)})
