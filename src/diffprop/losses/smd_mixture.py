"""SMD's mixture objective (``[smd] loss = "mixture"``): the backward step's own cross-entropy with K eta draws.

002's loss (Eq. 14) averages the squared error over eta, so its minimiser is ``E[eps | x_t]`` for every eta: the
Jensen step of its App. F moves the expectation over eta out of the log. This loss keeps it inside. With ``K``
latent draws ``z_k = g_xi(eta_k, x_t, t)`` the backward step is the mixture
``p_K(x_{t-1}|x_t) = (1/K) sum_k N(x_{t-1}; mu_theta(x_t, z_k), sigma_t^2 I)`` with ``sigma_t^2 = beta_tilde_t``
(Ho et al. 2020 Eq. 7), and the loss is its cross-entropy against the forward posterior,

    E_{x_{t-1} ~ q(x_{t-1}|x_t, x_0)} [ -log (1/K) sum_k N(x_{t-1}; mu_theta(x_t, z_k), sigma_t^2 I) ],

whose expectation over the draws is an importance-weighted bound (Burda et al. 2016, Thm 1) on the cross-entropy of
the model's infinite mixture over eta: it does not increase with K and reaches it as K grows. Unlike Eq. 14 it is
lowered by a network whose ``mu_theta`` spreads over eta as the posterior ``q(x_{t-1}|x_t)`` does (a mixture over
``x_0``, 002 Prop. 3.1).

Estimator, per example:

- one ``xi ~ N(0, I)`` and its antithetic ``-xi`` give ``x_{t-1} = mu~ +- sqrt(beta_tilde_t) xi`` (``mu~`` the
  posterior mean at the true ``x_0``), and the loss averages the two;
- ``-log N(x_{t-1}; mu~, sigma_t^2 I)`` is subtracted (it does not depend on the network; a control variate), so
  the estimate is of ``KL(q(x_{t-1}|x_t, x_0) || p_K)`` up to a constant, Ho et al. 2020's ``L_{t-1}`` with the
  mixture in place of their Gaussian;
- each t is divided by ``D`` times its Gaussian weight ``c_t = a_t^2 / (2 sigma_t^2)``, where
  ``mu~ - mu_theta = a_t (target - raw)`` (``a_t`` = the posterior's ``x_0`` coefficient times ``d x0 / d raw`` of
  the parameterization). That reweights the terms over t as Ho et al. 2020 Sec. 3.4 do (their ``L_simple``) and
  leaves every t's minimiser alone.

What it does not do: at a network that ignores eta (all ``mu_theta(x_t, z_k)`` equal to the best Gaussian mean)
the expected gradient towards spreading the ``mu_theta`` over eta is zero, since ``E_q[x_{t-1} - mu]`` vanishes
there; the loss rewards a spread only at second order, by ``~ (c_0^2 Var[x_0|x_t] / sigma_t^2)^2`` (``c_0`` the
posterior's ``x_0`` coefficient), which on a T = 1000 chain is small wherever ``q(x_0|x_t)`` is multimodal (one step
moves ``x_{t-1}`` by far less than its noise). So training leaves such a network slowly, from whatever spread its
initialisation has.

For K = 1 these make the loss exactly the squared error of :func:`~diffprop.losses.denoising.regression_loss`
(``+-xi`` cancel the cross term, the control variate the rest); for K > 1 it is below that on average.
At t = 1 the posterior is a point (``beta_tilde_1 = 0``): its components take ``beta_tilde_2``, as improved-diffusion
clips the log-variance (Nichol & Dhariwal 2021).
"""
from __future__ import annotations

import math

import torch

from ..errors import DiffpropError
from ..process import posterior_coefficients


def mixture_nll(x: torch.Tensor, means: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``-log (1/K) sum_k N(x; means_k, var I)`` per sample for ``x`` (B, D), ``means`` (K, B, D), ``var`` (B,)."""
    D = x.shape[1]
    log_n = -(x - means).pow(2).sum(2) / (2 * var) - D / 2 * torch.log(2 * math.pi * var)  # (K, B)
    return -(torch.logsumexp(log_n, 0) - math.log(means.shape[0]))


def mixture_loss(denoiser, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor, k: int,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Per sample: the reweighted ``KL(q(x_{t-1}|x_t, x_0) || p_K)`` estimate of the module docstring, with ``k``
    eta draws per example (``raw`` is called on ``k`` stacked copies of the batch: row ``j B + i`` is example
    ``i``, draw ``j``)."""
    B, shape, sched = x_t.shape[0], x_t.shape, denoiser.schedule
    if sched.T < 2:
        raise DiffpropError("smd.loss = 'mixture' needs diffusion.T >= 2 (at t = 1 its components take beta_tilde_2)")
    t = t.expand(B) if t.ndim == 0 else t
    flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
    raw = denoiser.raw(x_t.repeat(k, *[1] * (x_t.ndim - 1)), t.repeat(k), generator)
    x0_hat = flat(denoiser.read(x_t.repeat(k, *[1] * (x_t.ndim - 1)), t.repeat(k), raw).x0).view(k, B, -1)
    x0 = flat(denoiser.read(x_t, t, target).x0)  # read is linear: the target read as a prediction is the true x0
    # d x0 / d raw of the parameterization: read at x_t = 0 is linear in raw
    ones = torch.ones_like(x_t[:, :1].expand(shape))
    dx0 = flat(denoiser.read(torch.zeros_like(x_t), t, ones).x0)[:, :1]
    abar_t, abar_prev = (sched.gather(n, t, x0).double() for n in ("alpha_bars", "alpha_bars_prev"))
    c0, ct, _, var_q = posterior_coefficients(abar_t, abar_prev)  # Ho et al. 2020 Eq. 6-7
    var = torch.where(t[:, None] == 1, sched.gather("betas_tilde", torch.full_like(t, 2).clamp(max=sched.T),
                                                    x0).double(), var_q)  # Nichol & Dhariwal 2021: t = 1 clipped
    c0, ct, var_q, var = (v.to(x0.dtype) for v in (c0, ct, var_q, var))
    xt = flat(x_t)
    mu_q, mu_theta = c0 * x0 + ct * xt, c0 * x0_hat + ct * xt  # (B, D), (K, B, D)
    xi = torch.randn(mu_q.shape, generator=generator, device=x_t.device, dtype=x0.dtype)
    D, v = mu_q.shape[1], var[:, 0]
    kl = sum(mixture_nll(mu_q + s * var_q.sqrt() * xi, mu_theta, v) - mixture_nll(mu_q + s * var_q.sqrt() * xi,
                                                                                 mu_q[None], v)
             for s in (1.0, -1.0)) / 2
    c = (c0[:, 0] * dx0[:, 0]) ** 2 / (2 * v)  # the Gaussian weight: K = 1 gives c |target - raw|^2
    return kl / (c * D)
