"""The one sampling loop: walk a list of times with a step function, recording states and reporting progress."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .base import SamplerOutput


def as_times(times) -> list:
    """Times as Python numbers: ints where every one is an integer (the discrete chain), floats otherwise."""
    ts = [float(t) for t in (times.tolist() if torch.is_tensor(times) else times)]
    return [int(t) for t in ts] if all(t.is_integer() for t in ts) else ts


def key(t) -> int | float:
    """A time as a Python number: an int where it is an integer (the discrete chain's ``states[t]``, its CSV and
    JSON), a float otherwise."""
    return int(t) if float(t).is_integer() else float(t)


@torch.no_grad()
def sample_from(denoiser, x: torch.Tensor, times, step, *, generator=None, record=(), callback=None,
                progress: bool | str = False) -> SamplerOutput:
    """Walk ``x`` (a state at ``times[0]``) through ``times`` (decreasing, ending at 0) with
    ``x = step(denoiser, x, t, t_next, generator)``. ``states`` holds ``x`` at each visited time in ``record``
    (keyed by :func:`key`); ``callback(i, t_next, x)`` runs after step ``i``. ``nfe``: denoiser calls per sample."""
    ts = as_times(times)
    want = {key(t) for t in record}
    states: dict = {}
    calls = [0]
    predict, own = denoiser.predict, denoiser.__dict__.get("predict")

    def counted(*args, **kwargs):
        calls[0] += 1
        return predict(*args, **kwargs)

    pairs = list(zip(ts[:-1], ts[1:]))
    desc = progress if isinstance(progress, str) else "sampling"
    denoiser.predict = counted  # counts every evaluation, whatever the step does
    try:
        for i, (t, t_next) in enumerate(tqdm(pairs, desc=desc, disable=not progress, leave=False, unit="step",
                                             mininterval=0.5)):
            if key(t) in want:
                states[key(t)] = x.clone()
            x = step(denoiser, x, t, t_next, generator)
            if callback is not None:
                callback(i, t_next, x)
    finally:
        if own is None:
            del denoiser.predict
        else:
            denoiser.predict = own
    if key(ts[-1]) in want:
        states[key(ts[-1])] = x.clone()
    return SamplerOutput(x, states, calls[0])
