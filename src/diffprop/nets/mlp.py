"""Residual MLP with a sinusoidal time embedding, for low-dimensional data."""

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps t (shape (B,)) as in the transformer / DDPM.

    With half = dim // 2 and f_i = max_period ** (-i / half), i = 0..half-1, returns
    [cos(t f_0), ..., cos(t f_{half-1}), sin(t f_0), ..., sin(t f_{half-1})], zero-padded to dim.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(emb, (0, dim % 2))


class _Block(nn.Module):
    """Pre-norm residual block; the time embedding is added after the first Linear."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width))
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(width, width))
        self.out = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width))

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.out(self.inp(h) + self.time(temb))


class TimeMLP(nn.Module):
    """net(x, t) -> same shape as x, for x of shape (B, *data_shape) flattened to (B, dim).

    Time conditioning: sinusoidal embedding (time_dim) -> Linear-SiLU-Linear to width; each
    residual block adds its own Linear(width, width) projection of SiLU(embedding) (additive
    shift, as in DDPM's ResNet blocks).
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 4, time_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtype = self.inp.weight.dtype  # inputs follow the weights' precision (float64 data, float32 net)
        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(dtype))
        h = self.inp(x.reshape(x.shape[0], -1).to(dtype))
        for block in self.blocks:
            h = block(h, temb)
        return self.out(h).reshape(x.shape)
