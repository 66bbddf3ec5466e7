"""A cumulative-error regularizer started from the model's own chain: a replay buffer of sampling states.

000's EPDM warm-starts its L-step chain at the exact marginal (``x_s ~ q(x_s)``, 000 Eq. 16), so its MMD sees at
most L steps of one-step error, never what the chain accumulates from ``x_T``. Here the chain is the model's
sampling chain itself, advanced a few steps per training iteration:

- a buffer holds ``n`` detached particles ``x_s`` of one DDPM chain (000 Eq. 2, 4; :func:`~diffprop.samplers.ddpm_step`,
  sigma^2 from ``diffusion.var_type``) at a common time ``s``, started at ``x_T ~ N(0, I)``;
- each call advances it ``s -> t = s - L`` with the *current* model (the first steps under ``torch.no_grad()`` for
  ``grad = "last"``, all differentiable for ``"all"``), compares ``x~_t`` with forward samples ``x_t^forw =
  q_sample(x_0, t)`` of the batch by ``MMD^2`` (000 Eq. 13, unbiased), and stores ``x~_t`` detached;
- the first stride after a refresh is ``U{1..L}`` (so every t is visited over many traversals), the last is cut
  short at t = 1, after which the buffer restarts from fresh ``x_T ~ N(0, I)``.

So the term sees ``p_theta(x_t)`` of the sampling chain, up to staleness: a traversal of ``T / L`` iterations mixes the
parameters of that many optimizer steps. The buffer (particles and ``s``) is part of the checkpoint
(:meth:`state_dict`), so a resumed run continues bit-exactly.

Time weights. Every t in 2..T-1 is visited with probability ``pi(t) = 1 / L`` per traversal and t = 1 always (the
short last stride): the visit law is fixed by the chain. ``time_weights = "log_uniform"`` targets ``p(t) ∝ 1 / t``
(a trained model's cumulative error lives at small t, docs/results.md), ``"uniform"``
``p(t) = 1 / (T - 1)``; the returned value is ``w(t) MMD^2_t`` with the importance weight ``w(t) = N p(t) / pi(t)``,
``N = sum_t pi(t)`` the expected visits per traversal, so that its mean over visits is ``sum_t p(t) MMD^2_t``.

Kernel: a mix of ``scales`` RBF kernels (mean of their MMD^2), bandwidths geometric from the mode scale of t to the
median distance between the chain's particles and the forward samples. The mode scale is the median
nearest-neighbour distance of the forward samples ``x_t^forw`` (detached): for mixture data with within-mode std
``s`` it scales like ``sqrt(abar_t s^2 + 1 - abar_t)`` at small t without ``s`` being known, and it assumes nothing
about the data. A median-distance RBF alone is blind inside modes; ``scales = 1`` is the mode scale alone.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..diagnostics.mmd import KERNELS, _combine
from ..errors import DiffpropError
from ..process import VAR_TYPES, q_sample
from ..samplers import ddpm_step
from .objective import Term

TIME_WEIGHTS = ("log_uniform", "uniform")
GRADS = ("last", "all")


def visit_probabilities(T: int, L: int) -> torch.Tensor:
    """``pi(t)`` for t = 1..T-1 (entry ``t - 1``): the probability that a traversal of the buffer visits t."""
    pi = torch.full((T - 1,), 1.0 / L, dtype=torch.float64)
    pi[0] = 1.0
    return pi


def importance_weights(kind: str, T: int, L: int) -> torch.Tensor:
    """``w(t) = N p(t) / pi(t)`` for t = 1..T-1 (float64, entry ``t - 1``): see the module docstring."""
    pi = visit_probabilities(T, L)
    t = torch.arange(1, T, dtype=torch.float64)
    p = 1.0 / t if kind == "log_uniform" else torch.ones_like(t)
    p = p / p.sum()
    return pi.sum() * p / pi


def multiscale_mmd(x: torch.Tensor, y: torch.Tensor, scales: int) -> tuple[torch.Tensor, list[float]]:
    """Mean over ``scales`` RBF bandwidths of the unbiased ``MMD^2(x, y)`` (000 Eq. 13 without its ``i = j`` terms),
    from one pooled distance matrix; and the bandwidths, geometric from the mode scale (the median nearest-neighbour
    distance within ``y``) to the median distance between ``x`` and ``y``, both detached (the mode scale alone when
    ``scales = 1`` or that median is not larger). The upper end follows the chain: a chain far from the data (early
    in training) still gets a gradient, where a bandwidth set by the data alone would have all its kernel values
    underflow."""
    n, m = len(x), len(y)
    d2 = torch.cdist(torch.cat([x, y]), torch.cat([x, y])).pow(2).fill_diagonal_(0)  # cdist's diagonal is not 0
    with torch.no_grad():
        d = d2.detach().double().clamp(min=0).sqrt()
        lo = float(d[n:, n:].fill_diagonal_(math.inf).min(1).values.median())
        hi = float(d[:n, n:].median())
    hs = [lo] if scales == 1 or not hi > lo else [lo * (hi / lo) ** (k / (scales - 1)) for k in range(scales)]
    total = x.new_zeros((), dtype=torch.float64)
    for h in hs:
        k = KERNELS["rbf"](d2, torch.tensor(h, dtype=d2.dtype, device=d2.device)).double()
        total = total + _combine(k[:n, :n].sum(), k[n:, n:].sum(), k[:n, n:].sum(), n, m, 1.0, "unbiased")
    return total / len(hs), hs


class ChainMMD:
    """``reg(denoiser, x0, generator) -> Term(w(t) MMD^2(x~_t, x_t^forw), logs)``; build it with :meth:`from_config`.

    Logs: ``mmd`` (the raw MMD^2, mean over the kernel's scales), ``t``, ``w_t``, ``bandwidth`` (the mode scale) and
    ``refreshed`` (1 when this call started a new chain from ``x_T``).
    """
    NAME = "chain_mmd"  # its config section, in messages

    def __init__(self, *, T: int, weight: float, L: int = 5, grad: str = "last", time_weights: str = "log_uniform",
                 scales: int = 4, particles: int | None = None, var_type: str = "beta"):
        for key, value, allowed in (("grad", grad, GRADS), ("time_weights", time_weights, TIME_WEIGHTS),
                                    ("var_type", var_type, VAR_TYPES)):
            if value not in allowed:
                raise DiffpropError(f"{self.NAME}: {key} = {value!r} is not allowed; allowed: {', '.join(allowed)}")
        if T < 2:
            raise DiffpropError(f"{self.NAME} needs diffusion.T >= 2 (it compares states at t in 1..T-1), got {T}")
        if not 1 <= L < T:
            raise DiffpropError(f"{self.NAME}: L must be in 1..T-1 = 1..{T - 1}, got {L}")
        if scales < 1:
            raise DiffpropError(f"{self.NAME}: scales must be >= 1, got {scales}")
        if particles is not None and particles < 2:
            raise DiffpropError(f"{self.NAME}: particles must be >= 2 (an MMD compares sets), got {particles}")
        self.T, self.weight, self.L, self.grad, self.scales = T, float(weight), int(L), grad, int(scales)
        self.time_weights, self.particles, self.var_type = time_weights, particles, var_type
        self.w = importance_weights(time_weights, T, self.L)
        self.x: torch.Tensor | None = None  # the buffer: n particles at time s (None: not started)
        self.s = T

    @classmethod
    def from_config(cls, cfg, sample_data=None) -> "ChainMMD":
        """The ``[chain_mmd]`` section; T and var_type come from ``[diffusion]``."""
        c = cfg.chain_mmd
        return cls(T=cfg.diffusion.T, weight=c.weight, L=c.L, grad=c.grad, time_weights=c.time_weights,
                   scales=c.scales, particles=c.particles, var_type=cfg.diffusion.var_type)

    # -- the buffer, checkpointed by the trainer -------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The buffer's particles and time (empty before the first call)."""
        if self.x is None:
            return {}
        return {"x": self.x.detach().cpu().contiguous(), "s": torch.tensor([self.s], dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor], device=None) -> None:
        """Restore :meth:`state_dict` (an empty one: a chain not yet started)."""
        if not state:
            self.x, self.s = None, self.T
            return
        x, s = state.get("x"), state.get("s")
        if x is None or s is None or s.shape != (1,) or not 1 <= int(s) <= self.T or x.ndim < 2 \
                or not x.is_floating_point() or (self.particles is not None and len(x) != self.particles):
            shape = None if x is None else tuple(x.shape)
            raise DiffpropError(f"{self.NAME}: the checkpoint's buffer does not fit this run (x {shape}, s "
                                f"{None if s is None else s.tolist()}; T = {self.T}, particles = {self.particles})")
        self.x, self.s = x.to(device) if device is not None else x, int(s)

    def _refresh(self, like: torch.Tensor, n: int, generator: torch.Generator) -> None:
        self.x = torch.randn((n, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype)
        self.s = self.T  # x_T ~ N(0, I): the prior of the VP chain

    def advance(self, denoiser, x0: torch.Tensor, generator: torch.Generator,
                grad: bool = True) -> tuple[torch.Tensor, int, bool]:
        """Advance the buffer's chain one stride with the current model (the steps that carry gradients: the last
        with ``grad = "last"``, all with ``"all"``, none with ``grad=False``); returns ``(x~_t, t, refreshed)``, the
        buffer keeping ``x~_t`` detached."""
        sched = denoiser.schedule
        if sched is None or sched.T != self.T:
            raise DiffpropError(f"{self.NAME} was built for the discrete chain with T = {self.T}; the denoiser's is "
                                f"{'continuous' if sched is None else f'T = {sched.T}'}")
        if len(x0) < 2:
            raise DiffpropError(f"{self.NAME} needs at least 2 examples per batch, got {len(x0)}")
        n = self.particles or max(2, len(x0) // 4)
        refreshed = self.x is None or self.s <= 1
        if refreshed:
            self._refresh(x0, n, generator)
        elif self.x.shape[1:] != x0.shape[1:]:
            raise DiffpropError(f"{self.NAME}: the buffer holds states of shape {tuple(self.x.shape[1:])}, the data "
                                f"{tuple(x0.shape[1:])}")
        gdev = generator.device
        stride = int(torch.randint(1, self.L + 1, (), generator=generator, device=gdev)) if refreshed else self.L
        s = self.s
        t = max(s - stride, 1)
        x = self.x.to(x0.device, x0.dtype)
        for u in range(s, t, -1):  # x~_u -> x~_{u-1}, the sampling chain (000 Eq. 2, 4)
            frozen = not grad or (self.grad == "last" and u > t + 1)
            with torch.no_grad() if frozen else contextlib.nullcontext():
                x = ddpm_step(denoiser, x, u, u - 1, generator, self.var_type)
        self.x, self.s = x.detach(), t
        return x, t, refreshed

    def __call__(self, denoiser, x0: torch.Tensor, generator: torch.Generator) -> Term:
        x, t, refreshed = self.advance(denoiser, x0, generator)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_forw = q_sample(denoiser.schedule, x0, t, eps).to(x.dtype).flatten(1)  # x_t^forw, 000 Eq. 1
        x = x.flatten(1)
        if not bool(torch.isfinite(x).all()):  # a diverged chain: a NaN value, which the trainer reports
            d, hs = torch.full((), math.nan, dtype=torch.float64, device=x.device), [math.nan]
        else:
            d, hs = multiscale_mmd(x, x_forw, self.scales)
        w_t = float(self.w[t - 1])
        return Term(w_t * d, {"mmd": d.detach(), "t": t, "w_t": w_t, "bandwidth": hs[0],
                              "refreshed": int(refreshed)})
