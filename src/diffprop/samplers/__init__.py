"""Samplers over a denoiser, all with one signature (see :mod:`.base`), registered by name."""
from __future__ import annotations

import math

import torch

from ..errors import DiffpropError
from .base import SamplerOutput
from .ddim import ddim
from .ddpm import ddpm, ddpm_step

SAMPLERS = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise DiffpropError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample(denoiser, num: int, shape: tuple[int, ...], *, sampler: str = "ddpm", steps: int | None = None,
           seed: int = 0, device: str | torch.device = "cpu", batch_size: int | None = None, record=(),
           progress: bool = True, **options) -> SamplerOutput:
    """Draw ``num`` samples from ``x_T ~ N(0, I)`` in batches; deterministic given ``seed``, device and batch size."""
    fn = get_sampler(sampler)
    if num < 1:
        raise DiffpropError(f"number of samples must be >= 1, got {num}")
    generator = torch.Generator(device).manual_seed(seed)
    batch_size = batch_size or num
    nb = math.ceil(num / batch_size)
    xs, states = [], {}
    for i in range(nb):
        b = min(batch_size, num - i * batch_size)
        x_T = torch.randn(b, *shape, generator=generator, device=device)
        label = "sampling" if nb == 1 else f"sampling {i + 1}/{nb}"
        out = fn(denoiser, x_T, steps=steps, generator=generator, record=record,
                 progress=label if progress else False, **options)
        xs.append(out.x)
        for t, s in out.states.items():
            states.setdefault(t, []).append(s)
    return SamplerOutput(torch.cat(xs), {t: torch.cat(v) for t, v in states.items()})


__all__ = ["SAMPLERS", "SamplerOutput", "ddim", "ddpm", "ddpm_step", "get_sampler", "sample"]
