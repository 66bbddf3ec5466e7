"""Isotropic Gaussian mixtures: the exact parameters behind the toy datasets and the oracle.

A mixture is ``sum_k w_k N(mu_k, s_k^2 I)``. Its parameters are float64 tensors so that the
oracle's densities and responsibilities stay accurate at small noise levels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    means: torch.Tensor  # (K, D) mu_k
    stds: torch.Tensor  # (K,) s_k
    weights: torch.Tensor  # (K,) w_k, summing to one

    def __post_init__(self):
        K, _ = self.means.shape
        if self.stds.shape != (K,) or self.weights.shape != (K,):
            raise ValueError("GaussianMixture: stds and weights must have shape (K,)")
        object.__setattr__(self, "means", self.means.double())
        object.__setattr__(self, "stds", self.stds.double())
        object.__setattr__(self, "weights", (self.weights / self.weights.sum()).double())

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` float64 samples ``x = mu_k + s_k z`` with ``k ~ w``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def component_log_prob(self, x: torch.Tensor, loc_scale: float = 1.0, var_add: float = 0.0,
                           var_scale: float = 1.0) -> torch.Tensor:
        """``log w_k + log N(x; loc_scale mu_k, (var_scale s_k^2 + var_add) I)`` for every k: (N, K).

        With ``loc_scale = sqrt(abar_t)``, ``var_scale = abar_t`` and ``var_add = 1 - abar_t`` this is the
        component density of the noised marginal ``q(x_t)`` (002 Prop. 3.1).
        """
        x = x.double().reshape(x.shape[0], -1)
        var = var_scale * self.stds**2 + var_add  # (K,)
        d2 = torch.cdist(x, loc_scale * self.means.to(x.device)).pow(2)  # (N, K)
        var = var.to(x.device)
        return (torch.log(self.weights.to(x.device)) - 0.5 * d2 / var
                - 0.5 * self.dim * torch.log(2 * math.pi * var))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` per sample: (N,)."""
        return torch.logsumexp(self.component_log_prob(x), dim=1)


def grid_mixture(side: int = 7, spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """``side x side`` equal-weight components, means on {-3..3}^2 for the default (002 Sec. 5.1)."""
    c = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(c, c)
    K = means.shape[0]
    return GaussianMixture(means, torch.full((K,), std), torch.full((K,), 1.0 / K))


def ring_mixture(num: int = 8, radius: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """``num`` equal-weight components evenly spaced on a circle."""
    a = torch.arange(num, dtype=torch.float64) * (2 * math.pi / num)
    means = radius * torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    return GaussianMixture(means, torch.full((num,), std), torch.full((num,), 1.0 / num))
