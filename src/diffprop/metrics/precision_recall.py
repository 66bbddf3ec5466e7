"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
Generative Models", Sec. 2) on features, and their harmonic mean ``f1`` (the "F1 score" 002 Fig. 3 plots).

Each set's manifold is the union of balls around its points, a point's radius being the distance to its k-th
nearest neighbour within the set (itself excluded). ``precision`` is the fraction of samples inside the
reference manifold (how many samples look real), ``recall`` the fraction of reference points inside the samples'
manifold (how much of the data the samples cover). At most ``MAX_POINTS`` per side, a random subset beyond.
"""
from __future__ import annotations

import torch

from ..errors import DiffpropError

MAX_POINTS = 10000


def _kth_radius(a: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of every point of ``a`` to its k-th nearest neighbour in ``a`` other than itself."""
    return torch.cat([torch.cdist(a[i:i + chunk], a).kthvalue(k + 1, dim=1).values for i in range(0, len(a), chunk)])


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Whether each of ``points`` lies in some ball ``|p - centres_j| <= radii_j``."""
    return torch.cat([(torch.cdist(points[i:i + chunk], centres) <= radii).any(1)
                      for i in range(0, len(points), chunk)])


def precision_recall(samples: torch.Tensor, reference: torch.Tensor, k: int = 3, seed: int = 0) -> dict:
    """``precision``, ``recall`` and ``f1`` of feature sets ``samples`` (N, D) against ``reference`` (M, D)."""
    if min(len(samples), len(reference)) <= k:
        raise DiffpropError(f"precision/recall with k = {k} needs more than {k} points on each side, got "
                            f"{len(samples)} samples and {len(reference)} reference points")
    g = torch.Generator().manual_seed(seed)
    x, y = (a[torch.randperm(len(a), generator=g)[:MAX_POINTS]].double() for a in (samples, reference))
    precision = float(_covered(x, y, _kth_radius(y, k)).double().mean())
    recall = float(_covered(y, x, _kth_radius(x, k)).double().mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "pr_k": k}


__all__ = ["precision_recall"]
