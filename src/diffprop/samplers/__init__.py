"""Samplers: step functions over a denoiser behind one driver, registered by name with their options.

A step is ``step(denoiser, x, t, t_next, generator) -> x`` (:mod:`.base`); :func:`.driver.sample_from` walks a
list of times with it; :func:`sample` draws ``num`` samples from the process's prior in batches. Each entry of
:data:`SAMPLERS` names the step, its options (a dataclass: the only keys a caller may pass), and its default number
of steps and time grid (``None``: the process's own, i.e. every timestep of a discrete chain, 1000 otherwise).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from ..eps_scaling import scaled_step
from ..errors import DiffpropError
from ..noise import BLOCK, SampleNoise
from .base import SamplerOutput
from .consistency import consistency_step
from .ddim import ddim, ddim_step
from .ddpm import ddpm, ddpm_step
from .driver import sample_from
from .ode import euler_step, heun_step, rk45_step
from .sde import em_step, langevin_step, pc_step, reverse_diffusion_step
from .time_shift import check_time_shift, time_shifted


@dataclass
class TimeShiftOptions:  # the time-shift sampler (Li et al. 2024; samplers.time_shift), in timesteps
    shift_window: int | None = None  # None: off (the plain sampler)
    shift_cutoff: int | None = None  # None: 0.3 T, the official code's example (300 of 1000)
    shift_data_var: float | None = None  # None: the published rule, the noise's variance 1 - abar alone
    shift_variance: str | None = None  # None: "sample"; "group": pooled over BLOCK consecutive samples

    def __post_init__(self):
        check_time_shift(self.shift_window, self.shift_cutoff, self.shift_data_var, self.shift_variance)


SHIFT_OPTIONS = tuple(f.name for f in dataclasses.fields(TimeShiftOptions))


@dataclass
class DDPMOptions(TimeShiftOptions):
    var_type: str | None = None  # None: the denoiser's own
    clip_x0: float | None = None  # None: the denoiser's own


@dataclass
class DDIMOptions(TimeShiftOptions):
    eta: float = 0.0
    clip_x0: float | None = None
    clipped_eps: bool = False


@dataclass
class NoOptions:
    pass


@dataclass
class PCOptions:
    snr: float = 0.16  # the score SDE paper's (Song et al. 2021) default
    corrector_steps: int = 1


@dataclass
class HeunOptions:
    churn: float = 0.0  # Karras et al.'s S_churn: gamma = min(S_churn / steps, sqrt(2) - 1)
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0


ODE_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")  # scipy.integrate.solve_ivp's


@dataclass
class ODEOptions:
    rtol: float = 1e-5
    atol: float = 1e-5
    method: str = "RK45"


@dataclass(frozen=True)
class Sampler:
    step: Callable
    options: type
    default_steps: int | None  # None: the process's
    default_grid: str | dict | None  # None: the process's; a dict by process name, "*" for the others
    about: str
    skip_t_min: bool = False  # its grid: steps + 1 times with t_min left out (t_max, ..., 0: consistency sampling)
    needs_cm: bool = False  # draws the data only from a consistency model (other denoisers: means E[x0|x_t])

    def grid_for(self, process) -> str | None:
        g = self.default_grid
        return g.get(process.name, g.get("*")) if isinstance(g, dict) else g


SAMPLERS = {
    "ddpm": Sampler(ddpm_step, DDPMOptions, None, None, "DDPM ancestral (Ho et al. 2020; respaced below T steps)"),
    "ddim": Sampler(ddim_step, DDIMOptions, 50, {"ve-sde": "edm", "edm": "edm", "*": "quadratic"},
                    "DDIM (Song et al. 2021), eta = 0 deterministic; quadratic grid, EDM's on VE and EDM"),
    "em": Sampler(em_step, NoOptions, None, None, "Euler-Maruyama on the reverse SDE (Song et al. 2021)"),
    "pc": Sampler(pc_step, PCOptions, None, None, "reverse-diffusion predictor + Langevin corrector "
                  "(Song et al. 2021)"),
    "euler": Sampler(euler_step, NoOptions, 250, "edm", "Euler on the probability-flow ODE"),
    "heun": Sampler(heun_step, HeunOptions, 25, "edm", "Heun on the probability-flow ODE (Karras et al. 2022), "
                    "2 steps - 1 evaluations"),
    "ode": Sampler(rk45_step, ODEOptions, 2, "uniform", "adaptive RK45 on the probability-flow ODE (scipy), "
                   "t_max to t_min then denoise"),
    "consistency": Sampler(consistency_step, NoOptions, 1, "edm", "consistency sampling (Song et al. 2023 Alg. 1): "
                           "x0 = f(x, t), re-noised to the next time; 1 step or several on the rho = 7 grid",
                           skip_t_min=True, needs_cm=True),
}
# the samplers that draw the data from any exact denoiser (the consistency sampler needs a consistency model)
GENERAL = tuple(k for k, v in SAMPLERS.items() if not v.needs_cm)
NOISE = ("sample", "stream")


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise DiffpropError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def make_step(name: str, steps: int | None = None, eps_scaling=None, **options) -> Callable:
    """The named step with its options bound (unknown options refused); Heun's ``churn`` becomes EDM's per-step
    ``gamma = min(churn / steps, sqrt(2) - 1)``. ``eps_scaling`` (any sampler): ``b`` or ``(b, k)``, the step then
    sees the denoiser's noise prediction divided by ``b + k t`` (:mod:`diffprop.eps_scaling`, Ning et al. 2024);
    DDPM's and DDIM's ``shift_*`` options step from the shifted time of :mod:`.time_shift` (Li et al. 2024)."""
    spec = get_sampler(name)
    fields = {f.name for f in dataclasses.fields(spec.options)}
    bad = sorted(set(options) - fields)
    if bad:
        raise DiffpropError(f"sampler {name}: unknown option(s) {', '.join(bad)}; allowed: "
                            f"{', '.join(sorted(fields)) or 'none'}")
    opts = dataclasses.asdict(spec.options(**options))
    if opts.get("method", ODE_METHODS[0]) not in ODE_METHODS:
        raise DiffpropError(f"sampler {name}: unknown method {opts['method']!r}; allowed: {', '.join(ODE_METHODS)}")
    if name == "heun":
        s_churn = opts.pop("churn")
        opts["gamma"] = min(s_churn / max(steps or spec.default_steps, 1), math.sqrt(2) - 1) if s_churn > 0 else 0.0
    shift = {k.removeprefix("shift_"): opts.pop(k) for k in SHIFT_OPTIONS if k in opts}
    return scaled_step(time_shifted(partial(spec.step, **opts), **shift), eps_scaling)


def sampler_times(denoiser, name: str, steps: int | None = None, grid: str | None = None,
                  offset: int = 0) -> torch.Tensor:
    """The times ``name`` visits on the denoiser's process: ``steps`` noisy times then 0 (a sampler with
    ``skip_t_min``: the grid of ``steps + 1`` noisy times without its last, ``t_min``)."""
    spec = get_sampler(name)
    proc = denoiser.process
    kind = grid or spec.grid_for(proc)
    if kind is not None and kind not in proc.grid_kinds():
        raise DiffpropError(f"time grid {kind!r} does not apply to the {proc.name} process; allowed: "
                            f"{', '.join(proc.grid_kinds())}")
    n = spec.default_steps if steps is None else steps
    if spec.skip_t_min:
        ts = proc.grid(n + 1, kind, offset)
        return torch.cat([ts[:-2], ts[-1:]])
    return proc.grid(n, kind, offset)


def sample(denoiser, num: int, shape: tuple[int, ...], *, sampler: str = "ddpm", steps: int | None = None,
           seed: int = 0, device: str | torch.device = "cpu", batch_size: int | None = None, record=(),
           progress: bool = True, spacing: str | None = None, offset: int = 0, noise: str = "sample",
           callback=None, **options) -> SamplerOutput:
    """Draw ``num`` samples from the process's prior ``x_{t_max}`` with the named sampler, in batches.

    ``noise="sample"`` (default): sample ``i`` depends only on ``seed`` and ``i`` (:class:`~diffprop.noise.SampleNoise`;
    batches are rounded up to a multiple of its block). ``noise="stream"``: one generator in batch order, as
    diffusers' pipelines draw (a sample then depends on the batch size too). ``spacing``: the time grid
    (:meth:`~diffprop.processes.Process.grid`; default: the sampler's, else the process's). ``nfe`` is per sample
    (the adaptive ODE's: its mean over batches, rounded)."""
    step = make_step(sampler, steps, **options)
    if num < 1:
        raise DiffpropError(f"number of samples must be >= 1, got {num}")
    if noise not in NOISE:
        raise DiffpropError(f"unknown noise {noise!r}; allowed: {', '.join(NOISE)}")
    times = sampler_times(denoiser, sampler, steps, spacing, offset)
    stream = torch.Generator(device).manual_seed(seed) if noise == "stream" else None
    batch_size = batch_size or num
    if noise == "sample" and batch_size < num:
        batch_size = math.ceil(batch_size / BLOCK) * BLOCK
    nb = math.ceil(num / batch_size)
    xs, states, nfe = [], {}, 0
    for i in range(nb):
        b = min(batch_size, num - i * batch_size)
        gen = stream or SampleNoise(seed, i * batch_size, b, device)
        z = torch.randn(b, *shape, generator=gen, device=device) if stream is not None else gen.randn(tuple(shape))
        label = "sampling" if nb == 1 else f"sampling {i + 1}/{nb}"
        out = sample_from(denoiser, denoiser.process.prior(z), times, step, generator=gen, record=record,
                          callback=callback, progress=label if progress else False)
        xs.append(out.x)
        nfe += out.nfe * b  # the adaptive ODE's count differs by batch: its mean over samples
        for t, s in out.states.items():
            states.setdefault(t, []).append(s)
    return SamplerOutput(torch.cat(xs), {t: torch.cat(v) for t, v in states.items()}, round(nfe / num))


__all__ = ["GENERAL", "SAMPLERS", "Sampler", "SamplerOutput", "ddim", "ddim_step", "ddpm", "ddpm_step", "em_step",
           "consistency_step", "euler_step", "get_sampler", "heun_step", "langevin_step", "make_step", "pc_step",
           "reverse_diffusion_step", "rk45_step", "sample", "sample_from", "sampler_times"]
