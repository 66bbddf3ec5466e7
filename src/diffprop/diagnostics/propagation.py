"""Error-propagation profile of a denoiser along any sampler's chain: cumulative, modular and bootstrapped MMD errors.

The chain is drawn with a sampler's step function (:mod:`diffprop.samplers`) over its own times
``t_max = t_0 > t_1 > ... > t_K = 0``. Indexing follows 000: module ``t`` is the step from ``t`` to the next time the
chain visits, ``t'`` (on DDPM's full chain ``t' = t - 1``: 000's ``p_theta(x_{t-1}|x_t)``), so for each step time ``t``
- ``cumulative`` ``D_t^cumu`` (000 Eq. 12-13): MMD^2 between the chain's ``x_{t'}`` (N chains started at the
  process's prior) and M forward samples of ``q(x_{t'})`` (:meth:`~diffprop.processes.Process.marginal` at that exact
  time, integer or not);
- ``modular`` ``D_t^mod``: MMD^2 between the same step function applied to forward samples of ``q(x_t)`` and forward
  samples of ``q(x_{t'})`` (the error of module t alone, its input being exact);
- ``amplification`` ``mu_t = (D_t^cumu - D_t^mod) / D_{t+1}^cumu`` (000 Eq. 6), ``t + 1`` read as the step before
  ``t`` in the chain's times, defined only where ``D_{t+1}^cumu`` is above its permutation noise floor;
- ``bootstrapped``: the cheap estimate of 000 Sec. 5.2 / Eq. 16-17: warm start from ``q`` at the time L steps
  earlier in the chain's own times (or ``t_max``) and the sampler's L steps down to ``x_{t'}``.
``floor`` is the 95 % quantile of the permutation null of the cumulative MMD, ``p_value`` its p-value; ``t_next``
is ``t'``.

Two exposure-bias measures from the literature, per t, for comparison:
- ``delta`` (Ning et al. 2023): one step from ``x_t = alpha(t) x_0 + sigma(t) eps``; the per-coordinate std over
  samples of ``x_hat_{t'} - alpha(t') x_0``, averaged over coordinates, against its value ``sigma(t')`` under the
  forward process: ``delta = (std - sigma(t'))^2``;
- ``eps_norm_chain`` / ``eps_norm_forward``: RMS of the predicted noise on the chain's ``x_t`` and on
  forward samples of ``q(x_t)`` (the training inputs); a gap is the chain's drift seen by the network.

With the exact ``oracle`` of Gaussian-mixture data, the KL errors themselves (see :mod:`.exact`):
``cumulative_kl`` ``E_t^cumu`` (000 Def. 3.2) on the chain's ``x_{t'}`` against ``log q_{t'}`` exactly, for every
sampler, less ``kl_floor``, the kNN estimator's reading on fresh exact samples of ``q`` (its bias), with
``cumulative_kl_se`` the standard error of the difference; ``kl_T`` ``KL(p_{t_max} || q_{t_max})`` (Monte Carlo, both
densities known). On DDPM's full discrete chain, where every step is Gaussian (000 Eq. 2; so at t = 1 on
``x_0 = mu_theta(x_1) + sigma_1 z``, the sampler's last step adding no noise), also ``modular_kl`` ``E_t^mod``
(000 Def. 3.1, averaged over the chain's ``x_t``), ``modular_kl_sum`` ``sum_{u >= t} E_u^mod`` over every module u
(not only the grid's), ``propagation_bound = kl_T + modular_kl_sum`` and ``propagation_bound_se`` its standard error
over chains. The chain rule of KL gives ``E_t^cumu <= propagation_bound``; 000 Thm 3.1, summed over u >= t, claims
``E_t^cumu >= modular_kl_sum`` (see :mod:`.gaussian_chain`). ``inf`` where ``sigma_u = 0`` (beta_tilde at u = 1).
For other samplers and respaced chains a step is no Gaussian against the one-step posterior of 002 Prop. 3.1 (DDIM,
the ODE solvers: a point mass; EM, PC, respaced DDPM: a Gaussian against a posterior over several timesteps or a
continuous-time move), so these columns are NaN and ``Propagation.meta["modular_kl"]`` says why.

Forward samples are drawn anew for every estimator and hold no duplicates (which the kNN estimator reads as
concentration and the MMD as similarity): with an ``oracle``, ``x_0`` comes fresh from its mixture; otherwise
without replacement from ``data``, which must then hold at least ``num`` samples (fewer is refused).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DiffpropError
from ..processes import DiscreteVP
from ..samplers import make_step, sample, sample_from, sampler_times
from ..samplers.base import time_arg
from ..samplers.driver import as_times, key
from .exact import cumulative_kl_estimate, modular_kl
from .mmd import mmd, mmd_test

KERNEL_NAMES = ("rbf", "laplace", "imq", "rbf-mix")


def parse_kernel(spec: str) -> tuple[str, str | float]:
    """``"rbf"`` (median bandwidth) or ``"rbf@0.1"`` (a fixed bandwidth) into ``(kernel, bandwidth)``."""
    name, _, bw = spec.partition("@")
    if name not in KERNEL_NAMES:
        raise DiffpropError(f"unknown kernel {spec!r}; allowed: {', '.join(KERNEL_NAMES)}, optionally with "
                            f"@BANDWIDTH (e.g. rbf@0.1)")
    if not bw:
        return name, "median"
    try:
        h = float(bw)
    except ValueError:
        raise DiffpropError(f"kernel {spec!r}: bandwidth {bw!r} is not a number") from None
    if not h > 0:
        raise DiffpropError(f"kernel {spec!r}: bandwidth must be > 0")
    return name, h


def parse_grid(spec: str, times) -> list:
    """``"20"`` (that many log-spaced points among ``times``) or ``"1,10,100"`` (explicit times), where ``times`` are
    the times a chain steps from (:func:`step_times`; on the full discrete chain, the modules 1..T)."""
    times = sorted(key(t) for t in times)
    try:
        values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise DiffpropError(f"--grid {spec!r}: expected a number of points or a comma list of timesteps") from None
    if len(values) == 1 and "," not in spec:
        if not values[0].is_integer():
            raise DiffpropError(f"--grid {spec!r}: a number of points is a whole number")
        return chain_grid(times, int(values[0]))
    if not values:
        raise DiffpropError(f"--grid {spec!r}: expected a number of points or a comma list of timesteps")
    if times == list(range(1, len(times) + 1)):  # every module of a discrete chain
        bad = [key(v) for v in values if not (v.is_integer() and 1 <= v <= len(times))]
        if bad:
            raise DiffpropError(f"--grid {spec!r}: timesteps must lie in 1..{len(times)} (the model's T), got {bad}")
        return sorted({int(v) for v in values})
    picked = [match_time(v, times) for v in values]
    bad = [key(v) for v, m in zip(values, picked) if m is None]
    if bad:
        shown = ", ".join(f"{t:.6g}" for t in times[:12]) + (", ..." if len(times) > 12 else "")
        raise DiffpropError(f"--grid {spec!r}: {bad} are not times this chain steps from ({len(times)} times: "
                            f"{shown})")
    return sorted(set(picked))


def match_time(v: float, times) -> int | float | None:
    """The time of ``times`` equal to ``v`` up to rounding (1e-6 relative), or None."""
    for t in times:
        if math.isclose(v, t, rel_tol=1e-6, abs_tol=1e-12):
            return t
    return None


def time_grid(T: int, points: int) -> list[int]:
    """``points`` module indices in 1..T, denser near t = 1 where errors pile up (log-spaced), always with 1 and T."""
    if points < 2:
        raise DiffpropError(f"the grid needs at least 2 points, got {points}")
    ts = np.unique(np.round(np.geomspace(1, T, min(points, T))).astype(int))
    return sorted(int(t) for t in ts)


def chain_grid(times, points: int) -> list:
    """``points`` of the step times ``times`` (increasing): all of them if there are no more, else log-spaced in
    their index (dense near the data, where errors pile up) with the first and the last, as :func:`time_grid`."""
    times = sorted(times)
    if points >= len(times) and points >= 2:
        return times
    return [times[i - 1] for i in time_grid(len(times), points)]


def step_times(times) -> list:
    """The times a chain takes a step from: all of its visited times but the last (0, the data), increasing."""
    return sorted(as_times(times)[:-1])


@dataclass
class Propagation:
    """One row per (t, kernel); ``rows`` are dicts with the CSV's columns; ``meta`` describes the chain (sampler,
    steps, nfe) and why a column is NaN."""
    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def column(self, kernel: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        sel = [r for r in self.rows if r["kernel"] == kernel]
        return np.array([r["t"] for r in sel]), np.array([r[name] for r in sel], dtype=float)

    @property
    def kernels(self) -> list[str]:
        return list(dict.fromkeys(r["kernel"] for r in self.rows))


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def _model_steps(denoiser, x, times, step, generator) -> torch.Tensor:
    """The sampler's own steps along ``times`` (decreasing) from ``x`` at ``times[0]``, by the shared driver."""
    return sample_from(denoiser, x, times, step, generator=generator).x


UNCERTAIN = ("cumulative", "modular", "amplification", "bootstrapped")


def propagation(denoiser, data: torch.Tensor, *, repeats: int = 1, seed: int = 0, **options) -> Propagation:
    """Measure the error-propagation profile of ``denoiser`` against ``data`` (x_0 samples, model units).

    With ``repeats > 1`` everything (chains, forward samples, permutations) is drawn again with seeds
    ``seed, seed + 1, ...``; each numeric column is the mean over repeats, and ``cumulative_std``,
    ``modular_std``, ``amplification_std``, ``bootstrapped_std`` give the spread (NaN-aware).
    Options: see :func:`propagation_once`.
    """
    if repeats < 1:
        raise DiffpropError(f"repeats must be >= 1, got {repeats}")
    runs = [propagation_once(denoiser, data, seed=seed + r, **options) for r in range(repeats)]
    if repeats == 1:
        return runs[0]
    out = Propagation(meta=runs[0].meta)
    for rows in zip(*(r.rows for r in runs)):
        merged = dict(rows[0])
        for name, v in rows[0].items():
            if isinstance(v, float) and name not in ("t", "t_next"):
                vals = np.array([row[name] for row in rows], dtype=float)
                merged[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
                if name in UNCERTAIN:
                    merged[f"{name}_std"] = (float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1
                                             else float("nan"))
        out.rows.append(merged)
    return out


NOT_GAUSSIAN = {"ddim": "a DDIM step is a point mass at eta = 0 (infinite KL) and no one-step posterior otherwise",
                "euler": "an ODE step is a point mass", "heun": "an ODE step is a point mass",
                "ode": "an ODE step is a point mass"}


def exact_modular_reason(sampler: str, times: list, process) -> str | None:
    """None where 000's exact modular KL is defined (DDPM over every step of the discrete chain), else why not."""
    if sampler == "ddpm" and isinstance(process, DiscreteVP) and times == list(range(process.T, -1, -1)):
        return None
    why = NOT_GAUSSIAN.get(sampler) or (
        "a respaced or continuous-time DDPM step is a Gaussian against the posterior over more than one timestep"
        if sampler == "ddpm" else f"one {sampler} step is no Gaussian move of one timestep of the discrete chain")
    # user-facing (summary.json, the CLI): papers by author and year; 000 Def. 3.1 against 002 Prop. 3.1
    return (f"modular_kl (Li & van der Schaar 2024, Def. 3.1) and the summed chain-rule bound are defined for the "
            f"Gaussian steps of DDPM's full discrete chain (against the one-step posterior of Li, van Breugel & van "
            f"der Schaar 2024, Prop. 3.1); here NaN: {why}")


@torch.no_grad()
def propagation_once(denoiser, data: torch.Tensor, *, num: int = 1000, grid: list | None = None,
                     kernels=("rbf", "laplace", "imq"), bootstrap_steps: int = 5, var_type: str | None = None,
                     num_permutations: int = 100, seed: int = 0, device="cpu", batch_size: int | None = None,
                     progress: bool = True, oracle=None, sampler: str = "ddpm", steps: int | None = None,
                     spacing: str | None = None, sampler_options: dict | None = None) -> Propagation:
    """One measurement with one seed (see the module docstring for the columns) along the chain of ``sampler``
    (a name of :data:`~diffprop.samplers.SAMPLERS`) with ``steps`` steps on the time grid ``spacing`` (defaults:
    the sampler's; :func:`~diffprop.samplers.sampler_times`) and its ``sampler_options``. ``grid``: the step times
    measured, each one the chain steps from (default: 20 of them, :func:`chain_grid`). ``oracle`` (the exact
    denoiser of the data, Gaussian mixtures only) adds the exact KL columns. ``var_type`` (default: the
    denoiser's own) is the backward variance of DDPM's steps. Forward samples of ``q`` come from ``data``
    (at least ``num`` of them) or, given an ``oracle``, from its mixture."""
    proc = denoiser.process
    times = as_times(sampler_times(denoiser, sampler, steps, spacing))
    starts = step_times(times)
    grid = [match_time(float(t), starts) for t in grid] if grid else chain_grid(starts, 20)
    if any(t is None for t in grid):
        raise DiffpropError(f"grid timesteps must lie in 1..{len(starts)}" if starts == list(range(1, len(starts) + 1))
                            else f"grid times must be times the {sampler} chain steps from: {len(starts)} times in "
                            f"{starts[0]:.6g} .. {starts[-1]:.6g}")
    if oracle is None and len(data) < num:
        raise DiffpropError(f"the data hold {len(data)} samples, fewer than num={num}: forward samples are drawn "
                            "without replacement (duplicates bias the estimators); lower --num or give more data")
    var_type = var_type or denoiser.var_type
    options = {**({"var_type": var_type} if sampler == "ddpm" else {}), **(sampler_options or {})}
    step = make_step(sampler, steps, **options)
    index = {key(t): i for i, t in enumerate(times)}
    specs = [(k, *parse_kernel(k)) for k in kernels]
    g = torch.Generator(device).manual_seed(seed)
    gx = torch.Generator().manual_seed(seed * 7919)  # x_0 draws and the exact estimators' own samples
    shape = tuple(data.shape[1:])
    no_modular = exact_modular_reason(sampler, times, proc) if oracle is not None else None
    exact_modular = oracle is not None and no_modular is None
    # x_{t'} for D_t, x_t for D_{t+1}; every state for the exact modular errors
    wanted = sorted({key(u) for t in grid for u in (t, times[index[key(t)] + 1])})
    chain = sample(denoiser, num, shape, sampler=sampler, steps=steps, spacing=spacing, seed=seed, device=device,
                   batch_size=batch_size, record=times if exact_modular else wanted,
                   progress=progress and "full chains", **options)
    back = chain.states

    def draw(t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_0, x_t)``: ``num`` distinct data and a forward sample of ``q(x_t)`` from them (000 Eq. 1)."""
        if oracle is not None:
            x0 = oracle.mixture.sample(num, gx).to(data.dtype)
        else:
            x0 = data[torch.randperm(len(data), generator=gx)[:num]]
        x0 = x0.to(device)
        return x0, proc.marginal(x0, t, torch.randn(x0.shape, generator=g, device=device))

    def forward(t) -> torch.Tensor:
        return draw(t)[1]

    cache: dict = {}

    def cumulative(t, name: str, bw) -> tuple[float, float, float]:
        """The chain's x_t against q(x_t) (000 Eq. 13: D^cumu of the module ending at t) with its permutation
        noise floor and p-value."""
        if (t, name, bw) not in cache:
            test = mmd_test(back[key(t)], forward(t), name, bw, num_permutations=num_permutations, generator=g)
            cache[t, name, bw] = test.value, test.null_q95, test.p_value
        return cache[t, name, bw]

    if oracle is not None:
        if exact_modular:
            sched, T = oracle.schedule, proc.T
            var = (sched.betas if var_type == "beta" else sched.betas_tilde).tolist()
            # E_u^mod per chain at every u (000 Eq. 7); tail[u - 1] = sum_{v >= u}, per chain. 16 Monte-Carlo
            # draws: on gmm-ring the sum agrees with 64 draws' to 1e-3 nats, at a quarter of the time
            mods = torch.stack([modular_kl(denoiser, oracle, u, back[u], var_type, 16, g).cpu() if var[u] > 0
                                else torch.full((num,), math.inf, dtype=torch.float64) for u in range(1, T + 1)])
            tail = mods.flip(0).cumsum(0).flip(0)
        z = torch.randn(max(100_000, num), oracle.mixture.dim, generator=gx, dtype=torch.float64)  # p_T = the prior
        log_p = (-0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
                 - z.shape[1] * math.log(proc.prior_std))
        kl_T = float((log_p - oracle.log_prob(proc.prior(z), times[0])).mean())
        if exact_modular:  # 000 Eq. 2's last step: the sampler's x_0 = mu_theta(x_1), plus sigma_1 z
            x0_chain = back[0] + math.sqrt(var[1]) * torch.randn(back[0].shape, generator=g, device=device)

    nan = float("nan")
    out = Propagation(meta={"sampler": sampler, "steps": len(times) - 1, "process": proc.name, "nfe": chain.nfe,
                            "options": {k: v for k, v in options.items() if k != "var_type"}, "modular_kl": no_modular})
    for t in tqdm(sorted(grid, reverse=True), desc="measuring t", disable=not progress, leave=False):
        i = index[key(t)]
        t_next = times[i + 1]
        target = forward(t_next)  # q(x_{t'}), independent of the chains' inputs below
        x0_t, x_t = draw(t)  # exact input of module t: for the modular error, delta and the eps norm
        one_step = _model_steps(denoiser, x_t, times[i:i + 2], step, g)
        j = max(i + 1 - bootstrap_steps, 0)  # L steps earlier in the chain's own times (000 Eq. 16)
        boot = _model_steps(denoiser, forward(times[j]), times[j:i + 2], step, g)
        extra = {}
        if oracle is not None:
            est = cumulative_kl_estimate(x0_chain if exact_modular and t_next == 0 else back[key(t_next)], oracle,
                                         t_next, generator=gx)
            extra = {"cumulative_kl": est.reading, "kl_floor": est.floor, "cumulative_kl_se": est.se,
                     "modular_kl": nan, "kl_T": kl_T, "modular_kl_sum": nan, "propagation_bound": nan,
                     "propagation_bound_se": nan}
            if exact_modular:
                total = tail[t - 1]
                extra.update({"modular_kl": float(mods[t - 1].mean()), "modular_kl_sum": float(total.mean()),
                              "propagation_bound": kl_T + float(total.mean()),
                              "propagation_bound_se": float(total.std() / math.sqrt(num))})
        a2_next = float(proc.alpha2(t_next))
        std = float((one_step - a2_next**0.5 * x0_t).double().flatten(1).std(0).mean())
        tt = time_arg(t, x_t)
        extra.update(delta=(std - (1 - a2_next) ** 0.5 if proc.vp else std - float(proc.sigma(t_next))) ** 2,
                     eps_norm_chain=_rms(denoiser.predict(back[key(t)], tt, g).eps),  # Ning et al. 2023
                     eps_norm_forward=_rms(denoiser.predict(x_t, tt, g).eps))
        for spec, name, bw in specs:
            d_cumu, floor, p = cumulative(t_next, name, bw)
            d_next, floor_next, _ = cumulative(t, name, bw) if i > 0 else (nan, nan, 1.0)
            d_mod = float(mmd(one_step, target, name, bw))
            mu = (d_cumu - d_mod) / d_next if i > 0 and d_next > floor_next else nan  # 000 Eq. 6
            out.rows.append({"t": t, "kernel": spec, "cumulative": d_cumu, "modular": d_mod, "amplification": mu,
                             "bootstrapped": float(mmd(boot, target, name, bw)), "floor": floor, "p_value": p,
                             **extra, "t_next": t_next})
    out.rows.sort(key=lambda r: (r["kernel"], r["t"]))
    return out
