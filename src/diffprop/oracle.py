"""The exact denoiser of an isotropic Gaussian mixture, with knobs that emulate known model defects.

For data ``sum_k w_k N(mu_k, s_k^2 I)`` every quantity of the diffusion is in closed form
(002 Prop. 3.1; each method below states its formula), with ``v_k(t) = abar_t s_k^2 + 1 - abar_t``:
the noised marginal ``q(x_t)``, the responsibilities ``r_k(x_t)``, the optimal ``E[x_0|x_t]`` and
noise prediction, and the true backward transition ``q(x_{t-1}|x_t)``, itself a Gaussian mixture.
Under any :class:`~diffprop.processes.Process` the same holds with ``sqrt(abar_t)`` read as ``alpha(t)`` and
``1 - abar_t`` as ``sigma(t)^2``: component k of ``q(x_t)`` is ``N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)``.
All of it is computed in float64.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .denoisers import DenoiserBase, Prediction, eps_x0
from .errors import DiffpropError
from .mixtures import GaussianMixture
from .processes import DiscreteVP, Process
from .schedules import NoiseSchedule


class PosteriorMixture(NamedTuple):
    """``q(x_{t-1}|x_t) = sum_k weights[:, k] N(means[:, k], variances[:, k] I)``."""
    weights: torch.Tensor  # (B, K)
    means: torch.Tensor  # (B, K, D)
    variances: torch.Tensor  # (B, K)


class OracleDenoiser(DenoiserBase):
    """Exact ``eps``/``x0`` for Gaussian-mixture data; ``eps_scale``/``eps_bias`` perturb its noise prediction."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule | Process, eps_scale: float = 1.0,
                 eps_bias: float = 0.0, var_type: str = "beta"):
        """``schedule``: a beta schedule (the discrete chain) or any :class:`~diffprop.processes.Process`."""
        super().__init__()
        self.set_var_type(var_type)
        self.mixture = mixture
        if isinstance(schedule, DiscreteVP):
            schedule = schedule.schedule
        self._continuous = schedule if isinstance(schedule, Process) else None
        self.schedule = None if self._continuous else schedule
        self.eps_scale = float(eps_scale)
        self.eps_bias = float(eps_bias)

    @property
    def process(self) -> Process:
        return self._continuous or super().process

    def _coef(self, t, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha^2, sigma^2)`` as (B, 1) float64 columns, for scalar or per-sample ``t``."""
        a2, s2 = self.process.coefficients(t, x)
        return a2.reshape(-1, 1).expand(x.shape[0], 1), s2.reshape(-1, 1).expand(x.shape[0], 1)

    def _abar(self, t, x: torch.Tensor, name: str = "alpha_bars") -> torch.Tensor:
        """``abar`` of the discrete chain as a (B, 1) float64 column, for scalar or per-sample ``t``."""
        if self.schedule is None:
            raise DiffpropError(f"the backward transition q(x_(t-1)|x_t) is defined on the discrete chain, not on "
                                f"the {self.process.name} process")
        a = self.schedule.gather(name, t, x)
        return a.reshape(-1, 1).expand(x.shape[0], 1) if a.ndim else a.expand(x.shape[0], 1)

    def _log_components(self, x: torch.Tensor, a2: torch.Tensor, sigma2: torch.Tensor):
        """``log w_k N(x; alpha mu_k, v_k I)`` (B, K) and ``v_k = alpha^2 s_k^2 + sigma^2`` (B, K)."""
        mu, s2 = self.mixture.means.to(x.device), self.mixture.stds.to(x.device) ** 2
        v = a2 * s2 + sigma2
        # ||x - alpha mu_k||^2 expanded into matmuls (float64, so the cancellation is harmless)
        d2 = (x.pow(2).sum(1, keepdim=True) - 2 * a2.sqrt() * (x @ mu.T)
              + a2 * mu.pow(2).sum(1)).clamp(min=0)
        logw = torch.log(self.mixture.weights.to(x.device))
        return logw - 0.5 * d2 / v - 0.5 * x.shape[1] * torch.log(2 * math.pi * v), v

    def responsibilities(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``r_k(x_t) = q(k|x_t)``: (B, K)."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        logc, _ = self._log_components(x, *self._coef(t, x))
        return torch.softmax(logc, dim=1)

    def log_prob(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Exact ``log q(x_t)`` per sample (t = 0 is the data density): (B,)."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        return torch.logsumexp(self._log_components(x, *self._coef(t, x))[0], dim=1)

    def posterior_mean_x0(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``E[x_0|x_t] = sum_k r_k (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k))``, float64."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        abar, sigma2 = self._coef(t, x)
        logc, v = self._log_components(x, abar, sigma2)
        r = torch.softmax(logc, dim=1)
        mu, s2 = self.mixture.means.to(x.device), self.mixture.stds.to(x.device) ** 2
        gain = abar.sqrt() * s2 / v  # (B, K)
        # sum_k r_k (mu_k (1 - sqrt(abar) gain_k) + gain_k x), as two matmuls
        x0 = (r * (1 - abar.sqrt() * gain)) @ mu + (r * gain).sum(1, keepdim=True) * x
        return x0.reshape(x_t.shape)

    def predict(self, x_t, t, generator=None):  # exact: nothing to draw
        x = x_t.double()
        eps = eps_x0(self.process, x, t, x0=self.posterior_mean_x0(x, t)).eps
        eps, x0 = eps_x0(self.process, x, t, eps=self.eps_scale * eps + self.eps_bias)
        return Prediction(eps.to(x_t.dtype), x0.to(x_t.dtype))

    def posterior(self, x_t: torch.Tensor, t) -> PosteriorMixture:
        """The true backward transition ``q(x_{t-1}|x_t)`` as a Gaussian mixture (002 Prop. 3.1)."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        abar, abar_prev = self._abar(t, x), self._abar(t, x, "alpha_bars_prev")
        logc, v = self._log_components(x, abar, 1 - abar)
        s2 = self.mixture.stds.to(x.device) ** 2
        mu = self.mixture.means.to(x.device)
        v_prev = abar_prev * s2 + 1 - abar_prev
        alpha = abar / abar_prev
        gain = alpha.sqrt() * v_prev / v  # (B, K)
        means = abar_prev.sqrt()[:, :, None] * mu[None] + gain[:, :, None] * (
            x[:, None, :] - abar.sqrt()[:, :, None] * mu[None])
        return PosteriorMixture(torch.softmax(logc, dim=1), means, (1 - alpha) * v_prev / v)

    def sample_posterior(self, x_t: torch.Tensor, t, generator: torch.Generator | None = None) -> torch.Tensor:
        """One exact draw from ``q(x_{t-1}|x_t)`` per sample, float64, shaped like ``x_t``."""
        post = self.posterior(x_t, t)
        k = torch.multinomial(post.weights, 1, generator=generator).squeeze(1)
        idx = torch.arange(len(k), device=k.device)
        z = torch.randn(post.means.shape[0], post.means.shape[2], generator=generator,
                        dtype=torch.float64, device=post.means.device)
        return (post.means[idx, k] + post.variances[idx, k, None].sqrt() * z).reshape(x_t.shape)
