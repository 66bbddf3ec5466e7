"""Where sampling noise comes from: one generator stream, or per-sample streams.

With a ``torch.Generator`` every draw takes the next numbers of one stream, so a sample depends on the batch it
was drawn in (this is how diffusers' pipelines draw, and what bit-equality with them needs). A
:class:`SampleNoise` gives each block of ``BLOCK`` consecutive sample indices its own generator, seeded by
``(seed, block)``, so sample ``i`` depends only on ``seed`` and ``i``: any batch size that is a multiple of
``BLOCK`` draws the same samples (:func:`diffprop.samplers.sample` rounds batches up to one).
"""
from __future__ import annotations

import math

import numpy as np
import torch

BLOCK = 64


class SampleNoise:
    """Standard normal draws for samples ``start .. start + count - 1`` (``start`` a multiple of ``BLOCK``)."""

    def __init__(self, seed: int, start: int, count: int, device: str | torch.device = "cpu"):
        if start % BLOCK:
            raise ValueError(f"SampleNoise: start {start} is not a multiple of {BLOCK}")
        self.count, self.device = int(count), torch.device(device)
        first = start // BLOCK
        self.generators = []
        for b in range(first, first + math.ceil(count / BLOCK)):
            state = np.random.SeedSequence([int(seed), b]).generate_state(2, dtype=np.uint32)
            self.generators.append(torch.Generator(self.device).manual_seed(int(state[0]) << 31 | int(state[1])))

    def randn(self, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
        """``(count, *shape)`` standard normals; each block draws a full ``BLOCK`` rows, so rows never shift."""
        rows = [torch.randn((BLOCK, *shape), generator=g, device=self.device, dtype=dtype) for g in self.generators]
        return torch.cat(rows)[:self.count]


def randn(shape: tuple[int, ...], generator, *, device, dtype=torch.float32) -> torch.Tensor:
    """``shape`` standard normals (``shape[0]`` samples) from ``generator``: a :class:`SampleNoise` (which must be
    asked for exactly its ``count`` samples), a ``torch.Generator`` (drawn on its own device), or None."""
    if isinstance(generator, SampleNoise):
        if shape[0] != generator.count:
            raise ValueError(f"SampleNoise holds {generator.count} samples, asked for {shape[0]}")
        return generator.randn(tuple(shape[1:]), dtype).to(device)
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    return randn(tuple(x.shape), generator, device=x.device, dtype=x.dtype)
