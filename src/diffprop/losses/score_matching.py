"""Score-matching objectives over a denoiser's score ``s_theta(x, t) = denoiser.score(x, t)`` (004 Sec. 4), for any
backbone, parameterization and :class:`~diffprop.processes.Process`.

At a time ``t`` drawn by the run's time sampler (:mod:`diffprop.time_sampling`), with ``x_t = alpha(t) x_0 + sigma(t)
eps``, each objective is an estimate of explicit score matching (004 Eq. 4.3), ``ESM = E ||s_theta(x_t) - grad log
q_t(x_t)||^2``, up to a constant that does not depend on the model, in 004's convention (no factor 1/2):

- ``dsm`` (Vincent 2011; 004 Eq. 4.9-4.11): ``||s_theta(x_t) + eps / sigma(t)||^2``, the regression on the conditional
  score ``grad log q(x_t|x_0) = -eps / sigma``; ``= ESM + E ||grad log q(x_t|x_0) - grad log q_t(x_t)||^2``;
- ``ism`` (Hyvarinen 2005; 004 Thm 4.1, Eq. 4.4): ``||s_theta||^2 + 2 tr(ds_theta/dx)``, the trace exact (one
  backward pass per dimension); ``= ESM - E ||grad log q_t||^2``;
- ``ssm`` (Song et al. 2019; 004 Eq. 4.7-4.8): ``(v . s_theta)^2 + 2 v . (ds_theta/dx) v`` averaged over ``m``
  projections ``v`` (Gaussian or Rademacher, ``E v v^T = I``), unbiased for ``ism`` at one backward pass per
  projection;
- ``ssm-vr`` (Song et al. 2019 Eq. 8, the variance-reduced form; 004 Eq. 4.8 as printed): ``||s_theta||^2 + 2 v .
  (ds_theta/dx) v``, with ``E (v . s)^2 = ||s||^2`` taken analytically.

Song et al. 2019 write the implicit objectives with a factor 1/2 (``v^T J v + (v . s)^2 / 2``); here every one is
twice that, so that all four share ESM's scale. Each value is multiplied by a weighting ``lambda(t)`` (004 Eq. 4.5-4.6):
``sigma2`` = ``sigma(t)^2`` (004 Eq. 4.13; with an eps-parameterised denoiser ``dsm`` is then the eps loss, Ho et al.
2020 Eq. 14), ``g2`` = ``g(t)^2`` of the forward SDE (the likelihood weighting of Song et al. 2021, maximum likelihood
training), or ``uniform`` = 1, and divided by the data's dimension ``D`` (a mean over coordinates, as the denoising
loss). So under ``sigma2`` weighting the minimum over all functions is ``1 - sigma^2 E ||grad log q_t||^2 / D`` for
``dsm`` and ``-sigma^2 E ||grad log q_t||^2 / D`` for the implicit ones, and a model's excess over it is its weighted
explicit score error.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import DiffpropError
from ..time_sampling import UniformInt, time_sampler_for
from .fokker_planck import divergence

WEIGHTINGS = ("sigma2", "g2", "uniform")
PROJECTIONS = ("gaussian", "rademacher")
MAX_DIM = 64  # ism's default limit on the data's dimension (one backward pass per dimension)


def loss_weight(process, t: torch.Tensor, name: str) -> torch.Tensor:
    """``lambda(t)`` per sample (float64, shape of ``t``): ``sigma(t)^2``, ``g(t)^2`` (004 Eq. 2.1) or 1."""
    if name not in WEIGHTINGS:
        raise DiffpropError(f"unknown score-matching weighting {name!r}; allowed: {', '.join(WEIGHTINGS)}")
    t = torch.as_tensor(t, dtype=torch.float64)
    if name == "sigma2":
        return process.sigma2(t)
    if name == "g2":
        return process.sde(torch.zeros(t.numel(), 1, dtype=torch.float64, device=t.device), t.reshape(-1))[1] \
            .reshape(t.shape)
    return torch.ones_like(t)


def projections(shape, dist: str, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Slicing directions ``v`` with ``E v v^T = I``: standard normal, or Rademacher (+-1 with probability 1/2)."""
    if dist == "gaussian":
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    if dist == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1
    raise DiffpropError(f"unknown projection distribution {dist!r}; allowed: {', '.join(PROJECTIONS)}")


class ScoreMatching:
    """Base: ``lambda(t) * objective(x_t, t) / D`` per sample at ``t`` from the time sampler and ``x_t ~ q(x_t|x_0)``;
    subclasses give :meth:`objective` (summed over coordinates)."""

    name = ""

    def __init__(self, time_sampler=None, weighting: str = "sigma2", projections: int = 1,
                 projection_dist: str = "gaussian", max_dim: int = MAX_DIM):
        if weighting not in WEIGHTINGS:
            raise DiffpropError(f"unknown score-matching weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
        if projection_dist not in PROJECTIONS:
            raise DiffpropError(f"unknown projection distribution {projection_dist!r}; allowed: "
                                f"{', '.join(PROJECTIONS)}")
        if projections < 1 or max_dim < 1:
            raise DiffpropError(f"score matching needs projections >= 1 and max_dim >= 1, got {projections} and "
                                f"{max_dim}")
        self.time_sampler = time_sampler or UniformInt()
        self.weighting, self.m, self.dist, self.max_dim = weighting, int(projections), projection_dist, int(max_dim)

    @classmethod
    def from_config(cls, cfg) -> "ScoreMatching":
        c = cfg.score_matching
        return cls(time_sampler_for(cfg), c.weighting, c.projections, c.projection_dist, c.max_dim)

    def __call__(self, denoiser, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = self.time_sampler(denoiser.process, x0.shape[0], generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.at(denoiser, x0, t, eps, generator)

    def at(self, denoiser, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
           generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample values at given times ``t`` (B,) and noise ``eps`` (the draws :meth:`__call__` makes)."""
        x_t = denoiser.process.marginal(x0, t, eps)  # 004 Sec. 4.3: X_t | X_0 ~ N(alpha X_0, sigma^2 I)
        lam = loss_weight(denoiser.process, t, self.weighting).to(device=x0.device, dtype=x0.dtype)
        D = x0[0].numel()
        return lam * self.objective(denoiser, x_t, t, eps, generator) / D

    def objective(self, denoiser, x_t, t, eps, generator) -> torch.Tensor:
        raise NotImplementedError

    def score_and_input(self, denoiser, x_t: torch.Tensor, t, generator):
        """``(s, x)``: the score at ``x``, a flat (B, D) copy of ``x_t`` that requires grad, as (B, D)."""
        x = x_t.detach().reshape(x_t.shape[0], -1).requires_grad_(True)
        s = denoiser.score(x.view(x_t.shape), t, generator).reshape(x.shape)
        return s, x


class DSM(ScoreMatching):
    """Denoising score matching (Vincent 2011; 004 Eq. 4.11): ``||s_theta(x_t, t) + eps / sigma(t)||^2``."""

    name = "dsm"

    def objective(self, denoiser, x_t, t, eps, generator):
        sigma = denoiser.process.coefficients(t, x_t)[1].sqrt()
        return (denoiser.score(x_t, t, generator) + eps / sigma).flatten(1).pow(2).sum(1)  # 004 Eq. 4.10-4.11


class ISM(ScoreMatching):
    """Implicit score matching (Hyvarinen 2005; 004 Eq. 4.4): ``||s_theta||^2 + 2 tr(ds_theta/dx)`` with the exact
    trace, one backward pass per dimension; refused above ``max_dim`` dimensions."""

    name = "ism"

    def objective(self, denoiser, x_t, t, eps, generator):
        D = x_t[0].numel()
        if D > self.max_dim:
            raise DiffpropError(f"objective.loss = 'ism' takes the exact Jacobian trace, one backward pass per "
                                f"dimension: the data has {D} dimensions, above score_matching.max_dim = "
                                f"{self.max_dim}; use ssm or ssm-vr (one pass per projection) or dsm")
        # second derivatives through attention: the math SDPA kernel has them, the fused ones do not
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            s, x = self.score_and_input(denoiser, x_t, t, generator)
            return s.pow(2).sum(1) + 2 * divergence(s, x, "exact")  # 004 Eq. 4.4


class SSM(ScoreMatching):
    """Sliced score matching (Song et al. 2019 Eq. 7; 004 Eq. 4.7-4.8): ``(v . s)^2 + 2 v . (ds/dx) v`` averaged over
    ``m`` projections, each example repeated ``m`` times (one backward pass in all)."""

    name = "ssm"
    variance_reduced = False

    def objective(self, denoiser, x_t, t, eps, generator):
        B, m = x_t.shape[0], self.m
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            t_rep = torch.as_tensor(t, device=x_t.device)
            t_rep = t_rep.repeat(m) if t_rep.ndim else t_rep
            s, x = self.score_and_input(denoiser, x_t.repeat(m, *[1] * (x_t.ndim - 1)), t_rep, generator)
            v = projections(x.shape, self.dist, generator, x)
            vJv = (torch.autograd.grad((v * s).sum(), x, create_graph=True)[0] * v).sum(1)  # v^T (ds/dx) v, Eq. 4.7
            first = s.pow(2).sum(1) if self.variance_reduced else (v * s).sum(1).pow(2)
            return (first + 2 * vJv).view(m, B).mean(0)


class SSMVR(SSM):
    """Sliced score matching with variance reduction (Song et al. 2019 Eq. 8): ``||s||^2 + 2 v . (ds/dx) v``."""

    name = "ssm-vr"
    variance_reduced = True


OBJECTIVES = {cls.name: cls for cls in (DSM, SSM, SSMVR, ISM)}
