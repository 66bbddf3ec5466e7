"""Generated 2-D toy datasets: Gaussian mixtures (with exact parameters), swiss roll, two moons."""
from __future__ import annotations

import torch

from ..errors import DiffpropError
from ..mixtures import GaussianMixture, grid_mixture, ring_mixture

TOY_NAMES = ("gmm-grid", "gmm-ring", "swiss-roll", "moons")

SWISS_ROLL_NOISE = 0.5  # sklearn's noise, in the roll's own units
SWISS_ROLL_SCALE = 7.0  # (x, z) of the roll have std ~6.8; dividing by 7 gives roughly unit std
MOONS_NOISE = 0.05
MOONS_CENTER = (0.5, 0.25)  # the noiseless moons span [-1, 2] x [-0.5, 1]; subtracting this centres them


def load_toy(name: str, num_samples: int, seed: int) -> tuple[torch.Tensor, GaussianMixture | None]:
    """``num_samples`` float32 points of shape (N, 2), deterministic given ``seed``, and the mixture if any."""
    if num_samples < 1:
        raise DiffpropError(f"{name}: num_samples must be at least 1, got {num_samples}")
    if name in ("gmm-grid", "gmm-ring"):
        mixture = grid_mixture() if name == "gmm-grid" else ring_mixture()
        x = mixture.sample(num_samples, generator=torch.Generator().manual_seed(seed))
        return x.float(), mixture
    from sklearn.datasets import make_moons, make_swiss_roll

    if name == "swiss-roll":
        pts, _ = make_swiss_roll(num_samples, noise=SWISS_ROLL_NOISE, random_state=seed)
        return torch.from_numpy(pts[:, [0, 2]] / SWISS_ROLL_SCALE).float(), None
    pts, _ = make_moons(num_samples, noise=MOONS_NOISE, random_state=seed)
    return (torch.from_numpy(pts) - torch.tensor(MOONS_CENTER, dtype=torch.float64)).float(), None
