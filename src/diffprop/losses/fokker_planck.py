"""FP-Diffusion (Lai et al. 2022, "FP-Diffusion: Improving Score-based Diffusion Models by Enforcing
the Underlying Score Fokker-Planck Equation"): penalise the residual of the score FPE of the VP SDE.

The VP SDE ``dx = -beta(tau) x / 2 dtau + sqrt(beta(tau)) dW`` (004 Eq. 3.8: ``f = -beta x / 2``,
``g^2 = beta``) moves its marginals ``p_tau`` by the Fokker-Planck equation
``d_tau p = div((beta / 2) x p) + (beta / 2) lap p``. Divided by ``p``, with ``s = grad log p`` and
``lap p / p = div s + |s|^2``, ``div(x p) / p = D + x . s``:

    d_tau log p = (g^2 / 2) (div s + |s|^2 + x . s + D),

and its gradient in ``x`` (the constant ``D`` drops) is Lai et al.'s score FPE for the VP SDE:

    d_tau s = (g^2 / 2) grad_x (div s + |s|^2 + x . s).

The penalty is the one of the public code (sony/fp-diffusion, ``scalar_fp='both'``,
``fp_wgt_type='ll'``, ``m = 2``, Hutchinson divergence, residual taken at the noised samples):

    alpha * mean_b( g^2 |err_b|^2 / D^2 ) + beta * mean_b | (g^2 / 2) (div s + |s|^2 + x . s)_b |,
    err = d_tau s - (g^2 / 2) grad_x (div s + |s|^2 + x . s).

One difference, kept on purpose: the public code's scalar part is the L2 norm over the batch
``||rhs||_2`` (grows like sqrt(batch)); here it is the batch mean of ``|rhs|``, so its weight
does not depend on the batch size. Note that the scalar part is not zero for the exact score
(its mean under ``p_tau`` is ``-(g^2 / 2) D``, because ``E[div s + |s|^2] = 0`` and ``E[x . s] = -D``):
it is a bias of the baseline, reproduced as published; the residual part is what vanishes.
Also unlike the public code: the Hutchinson probe is Rademacher (theirs Gaussian; same mean, lower
variance), and ``d_tau s`` is a central difference over integer timesteps (theirs a non-uniform
stencil in continuous time). Mind the scale: the residual of an imperfect score is dominated by
small t (a constant error ``b`` in eps puts ``d_tau (b / sigma_t) ~ sigma_t^-3`` into ``err``).

Discretisation: the DDPM chain is read as the VP SDE at ``tau = t / T`` whose marginals are the
discrete ones, ``abar(tau = t / T) = abar_t``, i.e. ``beta(tau) = -d log abar / d tau``. That rate comes from the
process itself (:class:`~diffprop.processes.DiscreteVP`: ``log abar`` linear between integer timesteps, so
``f = (d log alpha / dt) x`` and ``g^2 = d sigma^2 / dt - 2 (d log alpha / dt) sigma^2`` are exact, 004 Eq. 2.1), and
the residual is written for that general linear drift, ``rhs = (g^2 / 2)(div s + |s|^2) - (d log alpha / dt) x . s
(+ const)``, which is the VP form above since ``d log alpha / dt = -g^2 / 2`` there. At an integer t the
interpolated ``log abar`` has a kink; its symmetric derivative (the mean of the slopes on ``(t - 1, t]`` and
``(t, t + 1]``) is used, matching the central difference that gives ``d_tau s``. (Before the continuous-time
processes, the rate was a 3-point stencil of ``log abar`` over ``t +- dt``: for ``dt = 1`` the same number, for
``dt > 1`` the stencil's average.) Only ``d_tau s``, the network's own time derivative, is still a central
difference, over ``t +- dt``: the residual of the exact score vanishes up to its ``O(dt^2)`` error, whereas the
one-sided ``T beta_t`` leaves an ``O(dt)`` mismatch that dominates at small t.

Two forms (``[fokker_planck] form``):

- ``literal`` (the default): the penalty above, as the public code weights it.
- ``fixed``: the squared residual in the units of the denoising loss, ``alpha * mean_b((2 sigma_t^3 / g^2)^2
  |err_b|^2 / D)`` with ``sigma_t^2 = 1 - abar_t``, at ``t ~ U{t_min .. T - dt}``. Why: an eps-model with error
  ``e`` has the score error ``-e / sigma_t``, whose time derivative ``e (d sigma / d tau) / sigma^2 = e g^2 abar_t /
  (2 sigma_t^3)`` (``d sigma^2 / d tau = g^2 abar_t`` on the VP SDE) puts ``~ sigma_t^-3`` into ``err`` (the
  ``2 s . delta s`` part of ``grad rhs`` grows the same way once ``sigma_t`` is below the data's scale, since
  ``grad s ~ -1 / sigma_t^2`` there). So ``g^2 |err|^2 ~ sigma_t^-6 |e|^2``: weighting by ``(1 - abar_t)^3``
  (exponent 3, not 2) and ``4 / g^4`` turns it back into ``|e|^2`` (for a constant bias ``b``,
  ``(2 sigma_t^3 / g^2) err = b (abar_t + sigma_t^2 - 2 sigma_t^2 / v_t)`` near a mode of variance ``s^2``,
  ``v_t = abar_t s^2 + sigma_t^2``: ``+-b`` at every t but a crossover), the scale of the eps-MSE, instead of
  letting ``t`` within a few steps of 0 dominate the gradient. ``|err|^2 / D`` is the mean over coordinates, as
  the denoising loss takes it; the literal ``/ D^2`` is that mean divided once more by ``D``, so ``alpha``'s
  strength relative to the denoising loss depends on the dimension: tuned on CIFAR-10 (``D = 3072``) it is
  1536 times stronger on 2-D data. The scalar part is dropped by default (``beta = 0``): it is not zero for the
  exact score (see above), so it pulls the model away from it; a ``beta`` set by hand weights
  ``|2 sigma_t^2 rhs / (g^2 D)|``, the same conversion for a scalar that grows like ``sigma_t^-2``.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import DiffpropError
from ..processes import DiscreteVP
from .objective import Term

DIVERGENCES = ("auto", "exact", "hutchinson")
FORMS = ("literal", "fixed")
# what a None weight / beta stands for, per form: literal weight 0.005 measured to train on gmm-grid (at 1 the
# zero score, an exact solution of the score FPE, wins); fixed: 1 (the residual is in denoising-loss units)
PRESETS = {"literal": {"weight": 0.005, "beta": 0.01}, "fixed": {"weight": 1.0, "beta": 0.0}}
EXACT_MAX_DIM = 8  # "auto" uses the exact divergence up to this many dimensions


def divergence(s: torch.Tensor, x: torch.Tensor, method: str, generator: torch.Generator | None = None):
    """``div_x s`` per sample for ``s, x`` of shape (B, D): exact (D backward passes) or Hutchinson with
    one Rademacher probe ``v``, ``v . (ds/dx) v``; differentiable (``create_graph``)."""
    if method == "exact":
        return sum(torch.autograd.grad(s[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(x.shape[1]))
    v = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    return (torch.autograd.grad((s * v).sum(), x, create_graph=True)[0] * v).sum(1)


def _discrete(denoiser) -> DiscreteVP:
    process = denoiser.process
    if not isinstance(process, DiscreteVP):
            raise DiffpropError(f"fokker_planck is defined on the discrete chain (its d/dt is a stencil over integer "
                                f"timesteps), not on the {process.name} process")
    return process


def sde_rates(process: DiscreteVP, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, g^2)`` at integer timesteps ``t`` (float64, per step of t): the forward SDE's ``f = k x`` with
    ``k = d log alpha / dt`` and ``g^2 = d sigma^2 / dt - 2 k sigma^2`` (004 Eq. 2.1) from the process's exact
    derivatives, symmetric at the kink: the mean of the slopes on ``(t - 1, t]`` (the process's value at t) and
    ``(t, t + 1]`` (its value at t + 1)."""
    def one(u):
        k = process.dlog_alpha(u)
        return k, process.dsigma2(u) - 2 * k * process.sigma2(u)

    t = t.double()
    (k_l, g2_l), (k_r, g2_r) = one(t), one((t + 1).clamp(max=process.T))
    return (k_l + k_r) / 2, (g2_l + g2_r) / 2


class FokkerPlanck:
    """Lai et al. 2022: ``alpha g^2 |err|^2 / D^2 + beta |rhs|`` at ``x_t = alpha_t x_0 + sigma_t eps``,
    ``t ~ U{1 + dt .. T - dt}`` (``literal``), or the residual in denoising-loss units from ``t_min`` on
    (``fixed``); see the module docstring for the equation, the discretisation and the two forms."""

    def __init__(self, alpha: float = 0.15, beta: float | None = None, weight: float | None = None,
                 divergence: str = "auto", dt: int = 1, form: str = "literal", t_min: int | None = None):
        if divergence not in DIVERGENCES:
            raise DiffpropError(f"unknown divergence {divergence!r}; allowed: {', '.join(DIVERGENCES)}")
        if form not in FORMS:
            raise DiffpropError(f"unknown fokker_planck form {form!r}; allowed: {', '.join(FORMS)}")
        preset = PRESETS[form]
        self.alpha, self.form = float(alpha), form
        self.beta = float(preset["beta"] if beta is None else beta)
        self.weight = float(preset["weight"] if weight is None else weight)
        self.divergence, self.dt, self.t_min = divergence, int(dt), t_min

    @classmethod
    def from_config(cls, cfg, sample_data=None) -> "FokkerPlanck":
        c = cfg.fokker_planck
        return cls(alpha=c.alpha, beta=c.beta, weight=c.weight, divergence=c.divergence, dt=c.dt, form=c.form,
                   t_min=c.t_min)

    def residual(self, denoiser, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None):
        """Per sample: ``g^2 |err|^2 / D^2`` and ``rhs = (g^2 / 2)(div s + |s|^2 + x . s)`` at ``(x, t)``
        (``fixed``: ``(2 sigma_t^3 / g^2)^2 |err|^2 / D`` and ``2 sigma_t^2 rhs / (g^2 D)``)."""
        process, shape = _discrete(denoiser), x.shape
        B, T = shape[0], process.T
        if T < 2:
            raise DiffpropError("fokker_planck needs diffusion.T >= 2 (a finite difference in t)")
        t_lo, t_hi = (t - self.dt).clamp(min=1), (t + self.dt).clamp(max=T)
        # second derivatives through attention: the math SDPA kernel has them, the fused CPU/GPU ones do not
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            x = x.detach().reshape(B, -1).requires_grad_(True)
            D = x.shape[1]
            method = self.divergence if self.divergence != "auto" else (
                "exact" if D <= EXACT_MAX_DIM else "hutchinson")
            # a stochastic denoiser (SMD) is read at one latent draw in all three scores: d_tau s of one model
            seed = (int(torch.randint(2**62, (), generator=generator, device=generator.device if generator else "cpu"))
                    if getattr(denoiser, "stochastic", False) else None)

            def score(tt):
                g = None if seed is None else torch.Generator(x.device).manual_seed(seed)
                return denoiser.score(x.reshape(shape), tt, g).reshape(B, D)

            s = score(t)
            # d_tau log p = (g^2 / 2)(div s + |s|^2) - k x . s - k D for f = k x (tau = t / T: rates times T)
            k, g2 = (T * r.to(device=x.device, dtype=x.dtype) for r in sde_rates(process, t))
            rhs = g2 / 2 * (divergence(s, x, method, generator) + s.pow(2).sum(1)) - k * (x * s).sum(1)
            grad_rhs = torch.autograd.grad(rhs.sum(), x, create_graph=True)[0]
            width = ((t_hi - t_lo).to(x.dtype) / T)[:, None]
            ds = (score(t_hi) - score(t_lo)) / width  # d_tau s, central difference
            err = ds - grad_rhs  # score FPE residual
        if self.form == "literal":
            return (g2 * err.pow(2).sum(1) / D**2, rhs)
        sigma2 = process.sigma2(t).to(device=x.device, dtype=x.dtype)  # 1 - abar_t at integer t
        # e ~ (2 sigma^3 / g^2) err for an eps error e (module docstring): the residual in eps units, mean over D
        return ((2 * sigma2.pow(1.5) / g2).pow(2) * err.pow(2).sum(1) / D, 2 * sigma2 / g2 * rhs / D)

    def __call__(self, denoiser, x0: torch.Tensor, generator: torch.Generator) -> Term:
        T, B, dev = _discrete(denoiser).T, x0.shape[0], x0.device
        lo, hi = (1 + self.dt, T - self.dt) if T - self.dt >= 1 + self.dt else (1, T)
        if self.t_min is not None:
            if self.t_min > hi:
                raise DiffpropError(f"fokker_planck.t_min ({self.t_min}) must be <= {hi} (T - dt) with diffusion.T "
                                    f"= {T}")
            lo = max(lo, self.t_min)
        t = torch.randint(lo, hi + 1, (B,), generator=generator, device=dev)
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        res, rhs = self.residual(denoiser, denoiser.process.marginal(x0, t, eps), t, generator)
        res, rhs = res.mean(), rhs.abs().mean()
        return Term(self.alpha * res + self.beta * rhs, {"residual": res.detach(), "rhs": rhs.detach()})
