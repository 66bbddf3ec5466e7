"""Exact log-likelihood by the probability-flow ODE and the instantaneous change of variables.

The probability-flow ODE ``dx/dt = f~(x, t) = f(x, t) - g(t)^2 / 2 score(x, t)`` (Song et al. 2021, score SDE,
Sec. 4.3, Eq. 13; 004 Eq. 5.8; :func:`~diffprop.samplers.ode.ode_drift`) is a deterministic, invertible flow, so the
density it transports obeys ``d log p_t(x(t)) / dt = -div f~(x(t), t)`` (Chen et al. 2018, Thm 1). Integrating
``[x, delta]`` with ``d delta / dt = div f~`` from ``t_min`` to ``t_max`` gives

    log p_{t_min}(x) = log p_{t_max}(x(t_max)) + int_{t_min}^{t_max} div f~(x(t), t) dt      (score SDE, App. D.2)

with ``p_{t_max}`` the prior ``N(0, prior_std^2 I)``. **What is computed** is the density at ``t_min`` (the
process's ``t_min``: 1e-3 for the VP SDE, 1e-5 for the VE SDE, ``sigma_min`` for EDM, the first step ``t = 1``
of the discrete chain) of the model's flow, read at the data point ``x``: the data are taken as ``x(t_min)``, as
the score SDE's code does. ``t = 0`` itself is out of reach (the score blows up as ``sigma -> 0``). For the exact
denoiser the flow carries ``q_{t_min}`` to ``q_{t_max}`` exactly, so the result equals ``log q_{t_min}(x)`` up to
the ODE solver's error and the prior's mismatch ``log N(x_T; 0, prior_std^2) - log q_{t_max}(x_T)``; against
``log q_0(x)`` it also differs by the noise ``sigma(t_min)`` left at ``t_min``.

The divergence is exact (the sum of ``d f~_i / d x_i``, from ``D`` one-hot vector-Jacobian products) in low
dimension, or Hutchinson's estimate ``v^T (d f~ / d x) v`` with one probe ``v`` per sample (Rademacher or
Gaussian), drawn once and kept for the whole trajectory (Hutchinson 1989; Grathwohl et al. 2019, FFJORD, Sec. 3):
unbiased for the log-likelihood, since the trajectory does not depend on ``v``.

Bits per dimension: continuous data, ``-log p / (D ln 2)``. Images in ``[-1, 1]`` made of ``L`` integer levels
(pixel ``k`` at ``x_k = 2 k / (L - 1) - 1``; 8-bit images ``L = 256``, sklearn digits ``L = 17``) are dequantised
uniformly (Theis et al. 2016, Sec. 3.1): each value is spread over its bin of width
``Delta = 2 / (L - 1)`` centred on it, ``y = x + Delta (u - 1/2)`` with ``u ~ U[0, 1)^D``. Jensen's inequality
gives ``log P(k) >= E_u log p(y) + D log Delta``, so

    bits/dim = -(log p(y) + D log Delta) / (D ln 2) = -(log p(y) / D - log((L - 1) / 2)) / ln 2,

in expectation over ``u`` an upper bound on the bits/dim of the discrete model ``P(k) = int_bin p(y) dy`` (one
draw of ``u`` per point: an unbiased estimate of that bound). For ``L = 256`` the offset is ``log2(127.5) = 6.9944``.
The score SDE's code uses ``y = (k + u) / 128 - 1`` (bins tiling ``[-1, 1]``, width ``1/128``) and so adds
``7 = log2(128)``: 0.0056 bits/dim more for the same ``log p`` (its pixels sit at ``(k + u) / 128 - 1``, ours at
``k / 127.5 - 1`` as the data loaders place them).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DiffpropError
from ..samplers.ode import ode_drift

TRACES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
MAX_EXACT_DIM = 64  # "auto": the exact trace up to this dimension (D backward passes per drift evaluation)
LEVELS = (256, 17)  # 8-bit images; sklearn digits (0..16)
EXACT_ROWS = 8192  # the exact trace runs the drift on up to this many rows at once (copies of the batch)


@dataclass
class Likelihood:
    """Per data point (N,) float64 tensors and what produced them.

    ``logp`` = ``prior_logp + delta_logp`` (nats): ``log p_{t_min}`` of the model's flow at ``x``, the evaluated
    points (dequantised when ``levels`` is set); ``z``: the points carried to ``t_max``."""

    logp: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    bits_per_dim: torch.Tensor
    x: torch.Tensor
    z: torch.Tensor
    nfe: int  # drift evaluations (each over a whole batch), summed over batches
    batches: int
    t_min: float
    t_max: float
    trace: str  # "exact" or "hutchinson"
    probe: str | None
    levels: int | None
    seconds: float = 0.0
    options: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(np.prod(self.x.shape[1:]))

    def summary(self) -> dict:
        """Means and standard errors (std / sqrt(N)) in nats and bits/dim, and how they were computed."""
        return {"num": len(self.logp), "dim": self.dim, "nats": mean_se(self.logp),
                "bits_per_dim": mean_se(self.bits_per_dim), "prior_logp": mean_se(self.prior_logp),
                "delta_logp": mean_se(self.delta_logp), "nfe": self.nfe, "batches": self.batches,
                "t_min": self.t_min, "t_max": self.t_max, "trace": self.trace, "probe": self.probe,
                "dequantization": None if self.levels is None else {
                    "levels": self.levels, "bin_width": 2 / (self.levels - 1),
                    "convention": "y = x + bin_width (u - 1/2), u ~ U[0,1)^D; bits/dim = -(log p(y) + D log "
                                  "bin_width) / (D ln 2)"},
                "seconds": round(self.seconds, 3), **self.options}


def mean_se(v: torch.Tensor) -> dict:
    v = v.double()
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se}


def gaussian_log_prob(x: torch.Tensor, std: float) -> torch.Tensor:
    """``log N(x; 0, std^2 I)`` per sample: the prior's log-density (score SDE, ``prior_logp``)."""
    x = x.reshape(len(x), -1).double()
    d = x.shape[1]
    return -0.5 * x.pow(2).sum(1) / std**2 - 0.5 * d * math.log(2 * math.pi * std**2)


def bits_per_dim(logp: torch.Tensor, dim: int, levels: int | None = None) -> torch.Tensor:
    """Nats per sample -> bits per dimension; with ``levels``, of the dequantised discrete data (module docstring:
    ``-(log p / D - log((L - 1) / 2)) / ln 2``)."""
    offset = 0.0 if levels is None else math.log((levels - 1) / 2)  # -log Delta, Delta = 2 / (L - 1)
    return -(logp.double() / dim - offset) / math.log(2)


def pixel_levels(x: torch.Tensor, candidates=LEVELS) -> int | None:
    """The number of levels ``L`` whose grid ``2 k / (L - 1) - 1`` holds every value of ``x`` (within float32
    rounding), trying ``candidates`` in order; None if none does."""
    x = x.double()
    if x.numel() == 0 or float(x.min()) < -1 - 1e-6 or float(x.max()) > 1 + 1e-6:
        return None
    for L in candidates:
        k = (x + 1) * (L - 1) / 2
        if float((k - k.round()).abs().max()) < 1e-3:
            return L
    return None


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + Delta (u - 1/2)``, ``u ~ U[0, 1)`` per value, ``Delta = 2 / (levels - 1)``: uniform over each bin."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    return x.double() + 2 / (levels - 1) * (u - 0.5)


def draw_probe(shape, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hutchinson probes with ``E[v v^T] = I``: Rademacher (+-1) or standard Gaussian (float64, CPU)."""
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator).double() * 2 - 1
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    raise DiffpropError(f"unknown Hutchinson probe {kind!r}; allowed: {', '.join(PROBES)}")


def drift_and_divergence(denoiser, x: torch.Tensor, t: float, probe: torch.Tensor | None = None,
                         max_rows: int = EXACT_ROWS):
    """``f~(x, t)`` and its divergence per sample. Hutchinson (``probe`` given): ``v^T (d f~ / d x) v`` from one
    vector-Jacobian product. Exact (``probe`` None): the Jacobian's diagonal ``d f~_i / d x_i`` summed over i, from
    copies of the batch, copy i back-propagating the one-hot ``e_i``: as many coordinates per pass as fit in
    ``max_rows`` rows. Samples must not interact in the denoiser (no batch statistics)."""
    n = len(x)
    with torch.enable_grad():
        if probe is not None:
            x = x.detach().requires_grad_(True)
            f = ode_drift(denoiser, x, t)
            (vjp,) = torch.autograd.grad(f, x, grad_outputs=probe)
            return f.detach(), (vjp * probe).reshape(n, -1).sum(1).detach()
        d = x[0].numel()
        per = max(1, min(d, max_rows // n))
        f, div = None, 0
        for lo in range(0, d, per):
            c = min(per, d - lo)
            xr = x.detach().repeat(c, *([1] * (x.ndim - 1))).requires_grad_(True)  # c copies, (c n, ...)
            fr = ode_drift(denoiser, xr, t)
            f = fr[:n].detach() if f is None else f
            i = torch.arange(c, device=x.device)
            onehot = torch.zeros(c, n, d, dtype=fr.dtype, device=fr.device)
            onehot[i, :, lo + i] = 1
            (g,) = torch.autograd.grad(fr, xr, grad_outputs=onehot.reshape(fr.shape))
            div = div + g.reshape(c, n, d)[i, :, lo + i].sum(0)
    return f, div.detach()


def _model_dtype(denoiser) -> torch.dtype:
    p = next(iter(denoiser.parameters()), None)
    return torch.float64 if p is None or not p.is_floating_point() else p.dtype


def ode_likelihood(denoiser, x: torch.Tensor, *, trace: str = "auto", probe: str = "rademacher",
                   max_exact_dim: int = MAX_EXACT_DIM, rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45",
                   t_min: float | None = None, t_max: float | None = None, levels: int | None = None,
                   generator: torch.Generator | None = None, batch_size: int | None = None,
                   progress: bool | str = False) -> Likelihood:
    """``log p_{t_min}(x)`` of each data point under ``denoiser``'s probability-flow ODE (module docstring).

    ``[x, delta]`` is integrated by ``scipy.integrate.solve_ivp`` (``method``, ``rtol``, ``atol``; the score SDE's
    likelihood uses RK45 at 1e-5), each batch of ``batch_size`` points (default: all) as one system. ``trace``:
    ``exact``, ``hutchinson``, or ``auto`` (exact up to ``max_exact_dim`` dimensions); ``generator`` draws the
    probes and the dequantisation noise (``levels``: dequantise data made of that many levels). Times default to the
    process's ``t_min`` and ``t_max``. Runs in the denoiser's parameter dtype (float64 for the oracle)."""
    from scipy.integrate import solve_ivp
    from tqdm.auto import tqdm

    if trace not in TRACES:
        raise DiffpropError(f"unknown trace {trace!r}; allowed: {', '.join(TRACES)}")
    if probe not in PROBES:
        raise DiffpropError(f"unknown Hutchinson probe {probe!r}; allowed: {', '.join(PROBES)}")
    if not (rtol > 0 and atol > 0):
        raise DiffpropError(f"rtol and atol must be > 0, got {rtol}, {atol}")
    if len(x) < 1:
        raise DiffpropError("no data points to evaluate")
    if levels is not None and levels < 2:
        raise DiffpropError(f"levels must be >= 2, got {levels}")
    if getattr(denoiser, "stochastic", False):
        raise DiffpropError("the probability-flow ODE needs a deterministic denoiser; this one (SMD) draws fresh "
                            "latent noise at every call, so its flow and its likelihood are not defined")
    proc = denoiser.process
    t0 = float(proc.t_min if t_min is None else t_min)
    t1 = float(proc.t_max if t_max is None else t_max)
    if not 0 < t0 < t1:
        raise DiffpropError(f"the ODE runs over 0 < t_min < t_max; got t_min {t0}, t_max {t1}")
    dim = int(np.prod(x.shape[1:]))
    kind = trace if trace != "auto" else ("exact" if dim <= max_exact_dim else "hutchinson")
    dtype, device = _model_dtype(denoiser), x.device
    y = dequantize(x, levels, generator) if levels is not None else x.double()
    batch_size = batch_size or len(y)
    logps, priors, deltas, zs, nfe, batches = [], [], [], [], 0, 0
    start = time.perf_counter()
    nb = math.ceil(len(y) / batch_size)
    bar = tqdm(total=1000 * nb, desc="likelihood (ODE time)" if progress is True else (progress or None),
               disable=not progress, bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]")  # per mille of [t_min, t_max]
    for b0 in range(0, len(y), batch_size):
        xb = y[b0:b0 + batch_size].to(device=device, dtype=dtype)
        shape, n = xb.shape, len(xb)
        v = draw_probe(tuple(shape), probe, generator).to(device=device, dtype=dtype) if kind == "hutchinson" \
            else None
        count = [0]

        def fun(s, state, shape=shape, n=n, v=v, count=count):
            xs = torch.from_numpy(state[:-n]).reshape(shape).to(device=device, dtype=dtype)
            f, div = drift_and_divergence(denoiser, xs, float(s), v)
            count[0] += 1
            done = int(1000 * (batches + (min(float(s), t1) - t0) / (t1 - t0)))
            if progress and done > bar.n:  # solve_ivp may try a step and reject it: the bar only moves forward
                bar.update(done - bar.n)
            return np.concatenate([f.double().cpu().numpy().ravel(), div.double().cpu().numpy()])

        init = np.concatenate([xb.double().cpu().numpy().ravel(), np.zeros(n)])
        sol = solve_ivp(fun, (t0, t1), init, method=method, rtol=rtol, atol=atol)
        if not sol.success:
            raise DiffpropError(f"the probability-flow ODE failed to integrate: {sol.message}")
        end = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1]))
        z, delta = end[:-n].reshape(shape), end[-n:]
        prior = gaussian_log_prob(z, float(proc.prior_std))
        zs.append(z), deltas.append(delta), priors.append(prior), logps.append(prior + delta)
        nfe, batches = nfe + count[0], batches + 1
    bar.close()
    logp = torch.cat(logps)
    return Likelihood(logp=logp, prior_logp=torch.cat(priors), delta_logp=torch.cat(deltas),
                      bits_per_dim=bits_per_dim(logp, dim, levels), x=y.cpu(), z=torch.cat(zs), nfe=nfe,
                      batches=batches, t_min=t0, t_max=t1, trace=kind, probe=probe if kind == "hutchinson" else None,
                      levels=levels, seconds=time.perf_counter() - start,
                      options={"rtol": rtol, "atol": atol, "method": method, "process": proc.name})
