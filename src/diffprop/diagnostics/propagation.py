"""Error-propagation profile of a denoiser: cumulative, modular and bootstrapped MMD errors along the chain.

Indexing follows 000: module ``t`` is the backward step ``p_theta(x_{t-1}|x_t)``, so for each ``t``
- ``cumulative`` ``D_t^cumu`` (000 Eq. 12-13): MMD^2 between ``x_{t-1}`` from N full chains started at
  ``x_T ~ N(0, I)`` and M forward samples of ``q(x_{t-1})``;
- ``modular`` ``D_t^mod``: MMD^2 between one model step applied to forward samples of ``q(x_t)`` and
  forward samples of ``q(x_{t-1})`` (the error of module t alone, its input being exact);
- ``amplification`` ``mu_t = (D_t^cumu - D_t^mod) / D_{t+1}^cumu`` (000 Eq. 6), defined only where
  ``D_{t+1}^cumu`` is distinguishable from zero (above its permutation noise floor);
- ``bootstrapped``: the cheap estimate of 000 Sec. 5.2 / Eq. 16-17: warm start at ``s = min(t - 1 + L, T)``
  from ``q(x_s)`` and ``s - t + 1`` model steps down to ``x_{t-1}``.
``floor`` is the 95 % quantile of the permutation null of the cumulative MMD, ``p_value`` its p-value.

Two exposure-bias measures from the literature, per t, for comparison:
- ``delta`` (Ning et al. 2023): one model step from ``x_t = q_sample(x_0, t)``; the per-coordinate std over
  samples of ``x_hat_{t-1} - sqrt(abar_{t-1}) x_0``, averaged over coordinates, against its value
  ``sqrt(1 - abar_{t-1})`` under the forward process: ``delta = (std - sqrt(1 - abar_{t-1}))^2``;
- ``eps_norm_chain`` / ``eps_norm_forward``: RMS of the predicted noise on the chain's ``x_t`` and on
  forward samples of ``q(x_t)`` (the training inputs); a gap is the chain's drift seen by the network.

With the exact ``oracle`` of Gaussian-mixture data, the KL errors themselves (see :mod:`.exact`), on 000's chain
(Eq. 2: every step Gaussian, so at t = 1 on ``x_0 = mu_theta(x_1) + sigma_1 z``; the sampler's last step adds no noise):
``cumulative_kl`` ``E_t^cumu`` (000 Def. 3.2) on the chain's ``x_{t-1}``, less ``kl_floor``, the kNN estimator's
reading on fresh exact samples of ``q`` (its bias), with ``cumulative_kl_se`` the standard error of the difference;
``modular_kl`` ``E_t^mod`` (000 Def. 3.1, averaged over the chain's ``x_t``); ``kl_T`` ``KL(p_T || q_T)`` (Monte Carlo,
both densities known); ``modular_kl_sum`` ``sum_{u >= t} E_u^mod`` over every module u (not only the grid's), and
``propagation_bound = kl_T + modular_kl_sum`` with ``propagation_bound_se`` its standard error over chains. The chain
rule of KL gives ``E_t^cumu <= propagation_bound``; 000 Thm 3.1, summed over u >= t, claims
``E_t^cumu >= modular_kl_sum`` (see :mod:`.gaussian_chain`). ``inf`` where ``sigma_u = 0`` (beta_tilde at u = 1).

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
from ..process import q_sample
from ..samplers import ddpm_step, sample
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


def parse_grid(spec: str, T: int) -> list[int]:
    """``"20"`` (that many log-spaced points) or ``"1,10,100"`` (explicit module indices in 1..T)."""
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise DiffpropError(f"--grid {spec!r}: expected a number of points or a comma list of timesteps") from None
    if len(values) == 1 and "," not in spec:
        return time_grid(T, values[0])
    bad = [v for v in values if not 1 <= v <= T]
    if bad or not values:
        raise DiffpropError(f"--grid {spec!r}: timesteps must lie in 1..{T} (the model's T), got {bad or spec}")
    return sorted(set(values))


def time_grid(T: int, points: int) -> list[int]:
    """``points`` module indices in 1..T, denser near t = 1 where errors pile up (log-spaced), always with 1 and T."""
    if points < 2:
        raise DiffpropError(f"the grid needs at least 2 points, got {points}")
    ts = np.unique(np.round(np.geomspace(1, T, min(points, T))).astype(int))
    return sorted(int(t) for t in ts)


@dataclass
class Propagation:
    """One row per (t, kernel); ``rows`` are dicts with the CSV's columns."""
    rows: list[dict] = field(default_factory=list)

    def column(self, kernel: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        sel = [r for r in self.rows if r["kernel"] == kernel]
        return np.array([r["t"] for r in sel]), np.array([r[name] for r in sel], dtype=float)

    @property
    def kernels(self) -> list[str]:
        return list(dict.fromkeys(r["kernel"] for r in self.rows))


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def _model_steps(denoiser, x, t_from: int, t_to: int, generator, var_type: str) -> torch.Tensor:
    """Ancestral steps ``x_{t_from} -> x_{t_to}``, the same steps the DDPM sampler takes."""
    for t in range(t_from, t_to, -1):
        x = ddpm_step(denoiser, x, t, t - 1, generator, var_type)
    return x


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
    out = Propagation()
    for rows in zip(*(r.rows for r in runs)):
        merged = dict(rows[0])
        for key, v in rows[0].items():
            if isinstance(v, float):
                vals = np.array([row[key] for row in rows], dtype=float)
                merged[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
                if key in UNCERTAIN:
                    merged[f"{key}_std"] = float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else float("nan")
        out.rows.append(merged)
    return out


@torch.no_grad()
def propagation_once(denoiser, data: torch.Tensor, *, num: int = 1000, grid: list[int] | None = None,
                     kernels=("rbf", "laplace", "imq"), bootstrap_steps: int = 5, var_type: str | None = None,
                     num_permutations: int = 100, seed: int = 0, device="cpu", batch_size: int | None = None,
                     progress: bool = True, oracle=None) -> Propagation:
    """One measurement with one seed (see the module docstring for the columns); ``oracle`` (the exact
    denoiser of the data, Gaussian mixtures only) adds the exact KL columns. ``var_type`` (default: the
    denoiser's own) is the backward variance of every ancestral step. Forward samples of ``q`` come from ``data``
    (at least ``num`` of them) or, given an ``oracle``, from its mixture."""
    T = denoiser.schedule.T
    grid = grid or time_grid(T, 20)
    if grid[0] < 1 or grid[-1] > T:
        raise DiffpropError(f"grid timesteps must lie in 1..{T}")
    if oracle is None and len(data) < num:
        raise DiffpropError(f"the data hold {len(data)} samples, fewer than num={num}: forward samples are drawn "
                            "without replacement (duplicates bias the estimators); lower --num or give more data")
    var_type = var_type or denoiser.var_type
    specs = [(k, *parse_kernel(k)) for k in kernels]
    g = torch.Generator(device).manual_seed(seed)
    gx = torch.Generator().manual_seed(seed * 7919)  # x_0 draws and the exact estimators' own samples
    shape = tuple(data.shape[1:])
    wanted = sorted({t for u in grid for t in (u - 1, u)})  # x_{t-1} for D_t, x_t for D_{t+1}
    back = sample(denoiser, num, shape, sampler="ddpm", seed=seed, device=device, batch_size=batch_size,
                  record=range(T + 1) if oracle is not None else wanted, progress=progress and "full chains",
                  var_type=var_type).states

    def draw(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_0, x_t)``: ``num`` distinct data and a forward sample of ``q(x_t)`` from them (000 Eq. 1)."""
        if oracle is not None:
            x0 = oracle.mixture.sample(num, gx).to(data.dtype)
        else:
            x0 = data[torch.randperm(len(data), generator=gx)[:num]]
        x0 = x0.to(device)
        return x0, q_sample(denoiser.schedule, x0, torch.tensor(t), torch.randn(x0.shape, generator=g, device=device))

    def forward(t: int) -> torch.Tensor:
        return draw(t)[1]

    cache: dict = {}

    def cumulative(t: int, name: str, bw) -> tuple[float, float, float]:
        """D_t^cumu on x_{t-1} (000 Eq. 13) with its permutation noise floor and p-value."""
        if (t, name, bw) not in cache:
            test = mmd_test(back[t - 1], forward(t - 1), name, bw, num_permutations=num_permutations, generator=g)
            cache[t, name, bw] = test.value, test.null_q95, test.p_value
        return cache[t, name, bw]

    if oracle is not None:
        sched = oracle.schedule
        var = (sched.betas if var_type == "beta" else sched.betas_tilde).tolist()
        # E_u^mod per chain at every u (000 Eq. 7); tail[u - 1] = sum_{v >= u}, per chain. 16 Monte-Carlo draws:
        # on gmm-ring the sum agrees with 64 draws' to 1e-3 nats, at a quarter of the time
        mods = torch.stack([modular_kl(denoiser, oracle, u, back[u], var_type, 16, g).cpu() if var[u] > 0
                            else torch.full((num,), math.inf, dtype=torch.float64) for u in range(1, T + 1)])
        tail = mods.flip(0).cumsum(0).flip(0)
        z = torch.randn(max(100_000, num), oracle.mixture.dim, generator=gx, dtype=torch.float64)  # p_T = N(0, I)
        log_p = -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
        kl_T = float((log_p - oracle.log_prob(z, T)).mean())
        # 000 Eq. 2's last step: the sampler's x_0 = mu_theta(x_1), plus sigma_1 z
        x0_chain = back[0] + math.sqrt(var[1]) * torch.randn(back[0].shape, generator=g, device=device)

    out = Propagation()
    for t in tqdm(grid[::-1], desc="measuring t", disable=not progress, leave=False):
        target = forward(t - 1)  # q(x_{t-1}), independent of the chains' inputs below
        x0_t, x_t = draw(t)  # exact input of module t: for the modular error, delta and the eps norm
        one_step = _model_steps(denoiser, x_t, t, t - 1, g, var_type)
        s = min(t - 1 + bootstrap_steps, T)
        boot = _model_steps(denoiser, forward(s), s, t - 1, g, var_type)
        extra = {}
        if oracle is not None:
            est = cumulative_kl_estimate(x0_chain if t == 1 else back[t - 1], oracle, t - 1, generator=gx)
            total = tail[t - 1]
            extra = {"cumulative_kl": est.reading, "kl_floor": est.floor, "cumulative_kl_se": est.se,
                     "modular_kl": float(mods[t - 1].mean()), "kl_T": kl_T,
                     "modular_kl_sum": float(total.mean()), "propagation_bound": kl_T + float(total.mean()),
                     "propagation_bound_se": float(total.std() / math.sqrt(num))}
        abar_prev = denoiser.schedule.alpha_bars[t - 1].item()
        std = float((one_step - abar_prev**0.5 * x0_t).double().flatten(1).std(0).mean())
        tt = torch.tensor(t, device=device)
        extra.update(delta=(std - (1 - abar_prev) ** 0.5) ** 2,  # Ning et al. 2023
                     eps_norm_chain=_rms(denoiser.predict(back[t], tt, g).eps),
                     eps_norm_forward=_rms(denoiser.predict(x_t, tt, g).eps))
        for spec, name, bw in specs:
            d_cumu, floor, p = cumulative(t, name, bw)
            d_next, floor_next, _ = cumulative(t + 1, name, bw) if t < T else (float("nan"), float("nan"), 1.0)
            d_mod = float(mmd(one_step, target, name, bw))
            mu = (d_cumu - d_mod) / d_next if t < T and d_next > floor_next else float("nan")  # 000 Eq. 6
            out.rows.append({"t": t, "kernel": spec, "cumulative": d_cumu, "modular": d_mod, "amplification": mu,
                             "bootstrapped": float(mmd(boot, target, name, bw)), "floor": floor, "p_value": p,
                             **extra})
    out.rows.sort(key=lambda r: (r["kernel"], r["t"]))
    return out
