"""The EPDM regularizer (000 Sec. 5, Eq. 15-17, App. F Alg. 1): the bootstrapped cumulative MMD error.

Per call, one pair of timesteps (an MMD compares *sets*, so the whole batch shares it):
``t ~ U{1..T-1}``, ``s ~ U{t+1..min(t+L, T)}``; a warm start ``x_s = q_sample(x_0', s)`` on the warm-start
examples ``S_0'`` (000 Eq. 16; ``init="random"``: ``x_s ~ N(0, I)``, the Table 2 ablation); ``s - t``
reparameterised model steps ``x_u -> x_{u-1}`` (000 Eq. 17, via :func:`~diffprop.samplers.ddpm_step`, sigma_t^2 from
``diffusion.var_type``) down to ``x~_t``; forward targets ``x_t^forw = q_sample(x_0, t)`` on the batch ``S_0``;
``L_t^reg = MMD^2(x~_t, x_t^forw)`` (000 Eq. 13) and the returned value ``w_t L_t^reg``. The objective multiplies it
by ``weight`` (lambda_reg) and adds ``objective.lambda_nl`` times the denoising loss.

Two presets fill every ``[epdm]`` field left at 0 / "preset"; a field set explicitly wins:

========== ========================================== =============================================
field      ``paper`` (000's text)                     ``official`` (the public code, louisli321/epdm)
========== ========================================== =============================================
weight     0.2 (lambda_reg)                           1.0 (``loss = mse + reg``)
L          5                                          5
rho        0.003                                      0.003 (unused by uniform weights)
time_wts   T_wt: ``T w_t``, mean 1 over t             uniform: 1
init       warm (000 Eq. 16)                          warm
kernel     rbf, median-distance bandwidth             rbf-mix, mean-distance bandwidth
estimator  unbiased (U-statistic)                     biased (000 Eq. 13 as printed, diagonal kept)
grad       all (through every chain step)             all
warm_batch second: an independent batch S_0'          half: first half warm-starts, second half
           of the same size (Alg. 1)                  gives the targets
========== ========================================== =============================================

The paper's other setting, ``lambda_nl = 0.8``, belongs to the objective: set ``objective.lambda_nl = 0.8``
(it is not part of this preset). ``weight = 0`` reads as "the preset's": to turn EPDM off, leave it out of
``objective.regularizers``.

Time weights (000 Eq. 15, ``w_t ∝ exp(rho (T - t))``): ``literal`` is the normalised ``w_t`` (summing to 1 over
t = 1..T); with one t per step it makes the term about 1/T of the loss, so ``T_wt`` uses ``T w_t``, the Monte
Carlo estimate of ``sum_t w_t L_t^reg`` under uniform t (mean weight 1); ``uniform`` is 1 (Table 2's ablation
``w_t = 1/T``, times T). Eq. 15 indexes t = 0..T-1 and ``D_t`` compares ``x_{t-1}``; here t is the index of the
compared state, ``t = 1..T-1``, and the weights are normalised over ``1..T``. The pair follows Sec. 5.2: Alg. 1
as printed reuses the denoising loss's t (here the denoising loss draws a t per example and EPDM its own) and
swaps the roles of s and t in its last lines (a backward sample at s given x_t); it also allows t = T, where
``U{t+1..min(t+L, T)}`` is empty.

Kernel strings: ``NAME`` (median bandwidth, as :func:`~diffprop.diagnostics.propagation.parse_kernel`),
``NAME@H`` (a fixed bandwidth H) or ``NAME@median`` / ``NAME@mean``; NAME is rbf, rbf-mix, laplace or imq.
So an explicit ``rbf-mix`` uses the median; the official rule is ``rbf-mix@mean``.

Where ``official`` still differs from the public code (which is lucidrains' denoising-diffusion-pytorch):
- its kernel is ``sum_c exp(-d^2 / (c b))``, ``c in {1/4, 1/2, 1, 2, 4}``, ``b`` the mean *squared* pairwise
  distance of the pooled sample (off-diagonal, detached). Ours (:mod:`~diffprop.diagnostics.mmd`) is
  ``sum_c exp(-d^2 / (2 (c h)^2))`` with ``h`` the mean distance; the public kernel is ours with multipliers
  ``sqrt(c)`` and ``h0 = sqrt(b / 2)``. Ours is wider-spread: for 2-D Gaussian-like data ``(mean d)^2 ≈
  (pi / 4) mean d^2``, i.e. effective ``c ≈ {0.10, 0.39, 1.6, 6.3, 25}`` on the public code's scale;
- it draws the pair the other way round: ``s`` uniform, then ``t = max(s - U{1..L}, 1)`` (more mass at t = 1);
- its chain steps use the posterior variance ``beta_tilde`` (set ``diffusion.var_type = "beta_tilde"``), and its
  network is a v-prediction U-Net on the sigmoid schedule (``diffusion.parameterization``, ``diffusion.schedule``).

``grad="last"`` runs the first ``s - t - 1`` steps under ``torch.no_grad()``: the same value (same draws), a
gradient only through the last step's network call, and about ``1 / (s - t)`` of the chain's backward cost.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..diagnostics.mmd import BANDWIDTH_RULES, ESTIMATORS, mean_bandwidth, median_bandwidth, mmd
from ..diagnostics.propagation import parse_kernel
from ..errors import DiffpropError
from ..process import VAR_TYPES, q_sample
from ..samplers import ddpm_step
from .objective import Term

PRESETS = {
    "paper": dict(weight=0.2, L=5, rho=0.003, time_weights="T_wt", init="warm", kernel="rbf", bandwidth="median",
                  estimator="unbiased", grad="all", warm_batch="second"),
    "official": dict(weight=1.0, L=5, rho=0.003, time_weights="uniform", init="warm", kernel="rbf-mix",
                     bandwidth="mean", estimator="biased", grad="all", warm_batch="half"),
}
TIME_WEIGHTS = ("T_wt", "literal", "uniform")
CHOICES = {"time_weights": TIME_WEIGHTS, "init": ("warm", "random"), "estimator": ESTIMATORS,
           "grad": ("all", "last"), "warm_batch": ("second", "half"), "var_type": VAR_TYPES}


def time_weight_table(kind: str, rho: float, T: int) -> torch.Tensor:
    """``w_t`` for t = 1..T (float64, shape (T,), entry ``t - 1``): see the module docstring."""
    if kind not in TIME_WEIGHTS:
        raise DiffpropError(f"unknown EPDM time weights {kind!r}; allowed: {', '.join(TIME_WEIGHTS)}")
    if kind == "uniform":
        return torch.ones(T, dtype=torch.float64)
    u = torch.arange(1, T + 1, dtype=torch.float64)
    w = torch.softmax(rho * (T - u), 0)  # exp(rho (T - t)) / sum_u exp(rho (T - u)), 000 Eq. 15
    return w if kind == "literal" else T * w


def parse_epdm_kernel(spec: str) -> tuple[str, str | float]:
    """``NAME``, ``NAME@H``, ``NAME@median`` or ``NAME@mean`` into ``(kernel, bandwidth)``."""
    name, _, rule = spec.partition("@")
    if rule in BANDWIDTH_RULES:
        return parse_kernel(name)[0], rule
    return parse_kernel(spec)


class EPDM:
    """``reg(denoiser, x0, generator) -> Term(w_t MMD^2(x~_t, x_t^forw), logs)``; build it with :meth:`from_config`.

    ``sample_data(n, generator) -> x0`` draws the independent warm-start batch of ``warm_batch="second"``;
    without it (None) the batch is split in halves as for ``"half"``. Logs: ``mmd`` (the raw MMD^2), ``t``, ``s``,
    ``w_t`` and ``bandwidth`` (the kernel's ``h``; for rbf-mix the base of its multipliers).
    """

    def __init__(self, *, T: int, weight: float, L: int, rho: float, time_weights: str, init: str, kernel: str,
                 bandwidth, estimator: str, grad: str, warm_batch: str, var_type: str = "beta",
                 sample_data=None, preset: str | None = None):
        given = dict(time_weights=time_weights, init=init, estimator=estimator, grad=grad, warm_batch=warm_batch,
                     var_type=var_type)
        for key, allowed in CHOICES.items():
            if given[key] not in allowed:
                raise DiffpropError(f"epdm: {key} = {given[key]!r} is not allowed; allowed: {', '.join(allowed)}")
        if T < 2:
            raise DiffpropError(f"epdm needs diffusion.T >= 2 (t in 1..T-1 and s > t), got {T}")
        if L < 1:
            raise DiffpropError(f"epdm: L must be >= 1, got {L}")
        if isinstance(bandwidth, str):
            if bandwidth not in BANDWIDTH_RULES:
                raise DiffpropError(f"epdm: bandwidth {bandwidth!r}; allowed: median, mean, or a positive number")
        elif not bandwidth > 0:
            raise DiffpropError(f"epdm: bandwidth must be > 0, got {bandwidth!r}")
        self.T, self.weight, self.L, self.rho = T, float(weight), int(L), float(rho)
        self.time_weights, self.init, self.kernel, self.bandwidth = time_weights, init, kernel, bandwidth
        self.estimator, self.grad, self.warm_batch, self.var_type = estimator, grad, warm_batch, var_type
        self.sample_data, self.preset = sample_data, preset
        self.w = time_weight_table(time_weights, self.rho, T)

    @classmethod
    def from_config(cls, cfg, sample_data=None) -> "EPDM":
        """The ``[epdm]`` section with its preset resolved; T and var_type come from ``[diffusion]``."""
        e = cfg.epdm
        opts = dict(PRESETS[e.preset])
        opts.update({k: getattr(e, k) for k in ("weight", "L", "rho") if getattr(e, k) is not None})
        opts.update({k: getattr(e, k) for k in ("time_weights", "init", "estimator", "grad", "warm_batch")
                     if getattr(e, k) != "preset"})
        if e.kernel != "preset":
            try:
                opts["kernel"], opts["bandwidth"] = parse_epdm_kernel(e.kernel)
            except DiffpropError as err:
                raise DiffpropError(f"config: epdm.kernel: {err}") from None
        return cls(T=cfg.diffusion.T, var_type=cfg.diffusion.var_type, sample_data=sample_data, preset=e.preset,
                   **opts)

    def _batches(self, x0: torch.Tensor, generator: torch.Generator):
        """``(x0_warm, x0_target)``: S_0' and S_0 (000 Alg. 1)."""
        if self.warm_batch == "half" or self.sample_data is None:
            n = len(x0) // 2
            if n < 2:
                raise DiffpropError(f"epdm splits the batch in halves and needs at least 4 examples, got {len(x0)}")
            return x0[:n], x0[n:]
        if len(x0) < 2:
            raise DiffpropError(f"epdm needs at least 2 examples per batch, got {len(x0)}")
        if self.init == "random":
            return x0, x0  # x_s ~ N(0, I): only the shape of S_0' matters, no batch is drawn
        return self.sample_data(len(x0), generator).to(x0), x0

    def __call__(self, denoiser, x0: torch.Tensor, generator: torch.Generator) -> Term:
        sched = denoiser.schedule
        if sched.T != self.T:
            raise DiffpropError(f"epdm was built for T = {self.T} but the denoiser's schedule has T = {sched.T}")
        x0_warm, x0_target = self._batches(x0, generator)
        gdev = generator.device
        t = int(torch.randint(1, self.T, (), generator=generator, device=gdev))
        s = t + int(torch.randint(1, min(self.L, self.T - t) + 1, (), generator=generator, device=gdev))

        x = torch.randn(x0_warm.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if self.init == "warm":
            x = q_sample(sched, x0_warm, s, x)  # x~_s, 000 Eq. 16
        for u in range(s, t, -1):  # x~_u -> x~_{u-1}, 000 Eq. 17
            frozen = self.grad == "last" and u > t + 1
            with torch.no_grad() if frozen else contextlib.nullcontext():
                x = ddpm_step(denoiser, x, u, u - 1, generator, self.var_type)  # u - 1 >= t >= 1: noise added
        eps = torch.randn(x0_target.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_forw = q_sample(sched, x0_target, t, eps).to(x.dtype)  # x_t^forw, 000 Eq. 1

        x, x_forw = x.flatten(1), x_forw.flatten(1)
        h = self.bandwidth
        if isinstance(h, str):  # the same rule mmd() applies, computed here once so that it can be logged
            h = float((median_bandwidth if h == "median" else mean_bandwidth)(x, x_forw))
        if math.isfinite(h) and h > 0:
            d = mmd(x, x_forw, self.kernel, h, self.estimator)  # L_t^reg, 000 Eq. 13
        else:  # a diverged (non-finite) chain: a NaN value, which the trainer reports
            d = torch.full((), math.nan, dtype=torch.float64, device=x.device)
        w_t = float(self.w[t - 1])
        return Term(w_t * d, {"mmd": d.detach(), "t": t, "s": s, "w_t": w_t, "bandwidth": h})
