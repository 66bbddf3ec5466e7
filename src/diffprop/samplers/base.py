"""What every sampler shares: its output type and the walk over a (possibly respaced) chain.

A sampler is ``fn(denoiser, x, *, steps, generator, record, progress, **options) -> SamplerOutput``:
it starts from ``x = x_T``, walks the timesteps ``steps`` picks from 1..T (``spacing``, ``offset``: see
:func:`chain`) downwards to 0, and returns
the final sample and the states it was asked to ``record`` (``states[t]`` is ``x_t``; ``T`` is the
start, ``0`` the output), so diagnostics can compare the chain with ``q(x_t)`` at any t it visits.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from tqdm.auto import tqdm


class SamplerOutput(NamedTuple):
    x: torch.Tensor
    states: dict[int, torch.Tensor]


def chain(schedule, steps: int | None, progress: bool | str, spacing: str = "even",
          offset: int = 0) -> Iterator[tuple[int, int]]:
    """``(t, t_prev)`` pairs from the last timestep down to ``(t_1, 0)`` over ``steps`` timesteps spaced by
    ``spacing`` (:meth:`~diffprop.schedules.NoiseSchedule.spaced`; ``offset``: diffusers' ``steps_offset``)."""
    ts = schedule.spaced(steps if steps is not None else schedule.T, spacing, offset)
    pairs = list(zip(reversed(ts), reversed([0] + ts[:-1])))
    desc = progress if isinstance(progress, str) else "sampling"
    return iter(tqdm(pairs, desc=desc, disable=not progress, leave=False, unit="step", mininterval=0.5))


def recorder(record) -> tuple[set[int], dict[int, torch.Tensor]]:
    return {int(t) for t in record}, {}


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
