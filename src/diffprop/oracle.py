"""The exact denoiser of an isotropic Gaussian mixture, with knobs that emulate known model defects.

For data ``sum_k w_k N(mu_k, s_k^2 I)`` every quantity of the diffusion is in closed form
(002 Prop. 3.1; each method below states its formula), with ``v_k(t) = abar_t s_k^2 + 1 - abar_t``:
the noised marginal ``q(x_t)``, the responsibilities ``r_k(x_t)``, the optimal ``E[x_0|x_t]`` and
noise prediction, and the true backward transition ``q(x_{t-1}|x_t)``, itself a Gaussian mixture.
All of it is computed in float64.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .denoisers import DenoiserBase, Prediction, x0_from_eps
from .mixtures import GaussianMixture
from .schedules import NoiseSchedule


class PosteriorMixture(NamedTuple):
    """``q(x_{t-1}|x_t) = sum_k weights[:, k] N(means[:, k], variances[:, k] I)``."""
    weights: torch.Tensor  # (B, K)
    means: torch.Tensor  # (B, K, D)
    variances: torch.Tensor  # (B, K)


class OracleDenoiser(DenoiserBase):
    """Exact ``eps``/``x0`` for Gaussian-mixture data; ``eps_scale``/``eps_bias`` perturb its noise prediction."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, eps_scale: float = 1.0,
                 eps_bias: float = 0.0, var_type: str = "beta"):
        super().__init__()
        self.set_var_type(var_type)
        self.mixture = mixture
        self.schedule = schedule
        self.eps_scale = float(eps_scale)
        self.eps_bias = float(eps_bias)

    def _abar(self, t, x: torch.Tensor, name: str = "alpha_bars") -> torch.Tensor:
        """``abar`` as a (B, 1) float64 column, for scalar or per-sample ``t``."""
        a = self.schedule.gather(name, t, x)
        return a.reshape(-1, 1).expand(x.shape[0], 1) if a.ndim else a.expand(x.shape[0], 1)

    def _log_components(self, x: torch.Tensor, abar: torch.Tensor):
        """``log w_k N(x; sqrt(abar) mu_k, v_k I)`` (B, K) and ``v_k`` (B, K)."""
        mu, s2 = self.mixture.means.to(x.device), self.mixture.stds.to(x.device) ** 2
        v = abar * s2 + 1 - abar
        # ||x - sqrt(abar) mu_k||^2 expanded into matmuls (float64, so the cancellation is harmless)
        d2 = (x.pow(2).sum(1, keepdim=True) - 2 * abar.sqrt() * (x @ mu.T)
              + abar * mu.pow(2).sum(1)).clamp(min=0)
        logw = torch.log(self.mixture.weights.to(x.device))
        return logw - 0.5 * d2 / v - 0.5 * x.shape[1] * torch.log(2 * math.pi * v), v

    def responsibilities(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``r_k(x_t) = q(k|x_t)``: (B, K)."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        logc, _ = self._log_components(x, self._abar(t, x))
        return torch.softmax(logc, dim=1)

    def log_prob(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Exact ``log q(x_t)`` per sample (t = 0 is the data density): (B,)."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        return torch.logsumexp(self._log_components(x, self._abar(t, x))[0], dim=1)

    def posterior_mean_x0(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """``E[x_0|x_t] = sum_k r_k (mu_k + sqrt(abar) s_k^2 / v_k (x_t - sqrt(abar) mu_k))``, float64."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        abar = self._abar(t, x)
        logc, v = self._log_components(x, abar)
        r = torch.softmax(logc, dim=1)
        mu, s2 = self.mixture.means.to(x.device), self.mixture.stds.to(x.device) ** 2
        gain = abar.sqrt() * s2 / v  # (B, K)
        # sum_k r_k (mu_k (1 - sqrt(abar) gain_k) + gain_k x), as two matmuls
        x0 = (r * (1 - abar.sqrt() * gain)) @ mu + (r * gain).sum(1, keepdim=True) * x
        return x0.reshape(x_t.shape)

    def predict(self, x_t, t, generator=None):  # exact: nothing to draw
        x = x_t.double()
        abar = self.schedule.gather("alpha_bars", t, x)
        eps = (x - abar.sqrt() * self.posterior_mean_x0(x, t)) / (1 - abar).sqrt()
        eps = self.eps_scale * eps + self.eps_bias
        return Prediction(eps.to(x_t.dtype), x0_from_eps(self.schedule, x, t, eps).to(x_t.dtype))

    def posterior(self, x_t: torch.Tensor, t) -> PosteriorMixture:
        """The true backward transition ``q(x_{t-1}|x_t)`` as a Gaussian mixture (002 Prop. 3.1)."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        abar, abar_prev = self._abar(t, x), self._abar(t, x, "alpha_bars_prev")
        logc, v = self._log_components(x, abar)
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
