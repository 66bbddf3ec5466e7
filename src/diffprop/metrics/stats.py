"""Streaming float64 mean and covariance of feature batches.

Batches are merged with Chan, Golub and LeVeque's pairwise update (1979): for a running ``(n_a, mu_a, M_a)``
and a batch ``(n_b, mu_b, M_b)``, with ``M`` the sum of outer products of deviations from the mean and
``delta = mu_b - mu_a``: ``mu = mu_a + delta n_b / n``, ``M = M_a + M_b + delta delta^T n_a n_b / n``. Unlike
accumulating ``sum x x^T``, this loses no precision when the mean is large against the spread.
"""
from __future__ import annotations

import torch

from ..errors import DiffpropError


class StreamingMoments:
    """Mean and covariance (``1 / (n - 1)`` normalization) of rows seen in batches, accumulated in float64."""

    def __init__(self) -> None:
        self.n = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> "StreamingMoments":
        """Add the rows of ``x`` (B, D)."""
        x = x.detach().reshape(len(x), -1).to("cpu", torch.float64)
        if len(x) == 0:
            return self
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise DiffpropError(f"feature batch has dimension {x.shape[1]}, earlier batches {self._mean.shape[0]}")
        nb, mb = len(x), x.mean(0)
        xc = x - mb
        m2b = xc.T @ xc
        if self._mean is None:
            self.n, self._mean, self._m2 = nb, mb, m2b
            return self
        n = self.n + nb
        delta = mb - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2b + torch.outer(delta, delta) * (self.n * nb / n)
        self.n = n
        return self

    @property
    def mean(self) -> torch.Tensor:
        if self._mean is None:
            raise DiffpropError("no features were accumulated")
        return self._mean

    @property
    def cov(self) -> torch.Tensor:
        if self.n < 2:
            raise DiffpropError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        return self._m2 / (self.n - 1)


__all__ = ["StreamingMoments"]
