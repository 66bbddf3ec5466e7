"""000 Thm 3.1 in closed form: the errors of a linear-Gaussian chain, and the identity they obey.

With data ``N(0, s^2 I)`` and a model whose noise prediction is affine in ``x_t`` (the exact ``eps`` of that data,
scaled and shifted: :class:`~diffprop.oracle.OracleDenoiser` of the one-component mixture with ``eps_scale`` /
``eps_bias``), every marginal and conditional of both chains is Gaussian and every error a closed-form KL. Per
coordinate (the chain is isotropic, so the KLs add over the ``D`` coordinates):

- ``q(x_t) = N(0, v_t)``, ``v_t = abar_t s^2 + 1 - abar_t``; ``q(x_{t-1}|x_t) = N(C_t x_t, W_t)`` with
  ``C_t = sqrt(alpha_t) v_{t-1} / v_t``, ``W_t = beta_t v_{t-1} / v_t``;
  ``q(x_t|x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t)``;
- ``p_theta(x_{t-1}|x_t) = N(A_t x_t + B_t, sigma_t^2)`` (000 Eq. 2, 4)
  and ``p_theta(x_T) = N(0, 1)``, so ``p_theta(x_t) = N(m_t, P_t)``, ``m_{t-1} = A_t m_t + B_t``,
  ``P_{t-1} = A_t^2 P_t + sigma_t^2``;
- the chain's reverse conditional ``p_theta(x_t|x_{t-1}) = N(m_t + G_t (x_{t-1} - m_{t-1}), sigma_t^2 P_t / P_{t-1})``,
  ``G_t = A_t P_t / P_{t-1}`` (Gaussian conditioning).

The chain rule of KL on the joint of ``(x_t, x_{t-1})``, factored both ways, gives
``E_t^cumu + R_t = E_{t+1}^cumu + E_t^mod`` with ``R_t = E_{p_theta(x_{t-1})} KL(p_theta(x_t|x_{t-1}) || q(x_t|x_{t-1}))
>= 0`` (000 Def. 3.1-3.2, ``E_t^mod`` averaged over ``p_theta(x_t)`` as Eq. 7 says, ``E_{T+1}^cumu = KL(p_T || q_T)``).
So the slack of 000 Thm 3.1 (Eq. 11), ``E_t^cumu - E_{t+1}^cumu - E_t^mod``, is ``-R_t <= 0``: the inequality holds only
where ``R_t = 0``. The proof in 000 App. C drops the minus sign in front of the KL of its Eq. 26 when it writes Eq. 27
(and Eq. 28's value is ``beta abar / (2 (1 - abar))``, not ``beta abar / (1 - abar)``). What does hold, summing the
identity, is ``E_t^cumu <= KL(p_T || q_T) + sum_{u >= t} E_u^mod``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ..errors import DiffpropError
from ..mixtures import GaussianMixture
from ..oracle import OracleDenoiser
from ..process import posterior_coefficients
from ..schedules import NoiseSchedule


class GaussianChain(NamedTuple):
    """Closed-form errors of a linear-Gaussian chain, each indexed by module ``t = 1..T`` (arrays of length T)."""
    t: np.ndarray
    cumulative: np.ndarray  # E_t^cumu = KL(p_theta(x_{t-1}) || q(x_{t-1}))
    cumulative_next: np.ndarray  # E_{t+1}^cumu; KL(p_T || q_T) at t = T
    modular: np.ndarray  # E_t^mod, averaged over the chain's p_theta(x_t) (000 Eq. 7)
    reverse: np.ndarray  # R_t = E_{p_theta(x_{t-1})} KL(p_theta(x_t|x_{t-1}) || q(x_t|x_{t-1}))
    chain_mean: np.ndarray  # m_t, the per-coordinate mean of p_theta(x_t), t = 0..T (length T + 1)
    chain_var: np.ndarray  # P_t, its variance
    eps_moment: np.ndarray  # E_{p_theta(x_t)} |eps_theta(x_t, t)|^2 / D, the quantity of 000 App. D's assumption

    @property
    def slack(self) -> np.ndarray:
        """``E_t^cumu - E_{t+1}^cumu - E_t^mod``: 000 Thm 3.1 says >= 0; it equals ``-R_t``."""
        return self.cumulative - self.cumulative_next - self.modular

    @property
    def bound(self) -> np.ndarray:
        """``KL(p_T || q_T) + sum_{u >= t} E_u^mod``, the summed identity's upper bound on ``E_t^cumu``."""
        return self.cumulative_next[-1] + np.cumsum(self.modular[::-1])[::-1]


def _kl(m1, v1, m2, v2) -> float:
    """``KL(N(m1, v1) || N(m2, v2))`` in one dimension."""
    r = v1 / v2
    return 0.5 * (r - 1 - math.log(r) + (m1 - m2) ** 2 / v2)


def _expected_kl(m, P, a, b, s, c, d, w) -> float:
    """``E_{x ~ N(m, P)} KL(N(a x + b, s) || N(c x + d, w))``: the mean gap ``(a - c) x + b - d`` is Gaussian."""
    r = s / w
    gap2 = ((a - c) * m + b - d) ** 2 + (a - c) ** 2 * P
    return 0.5 * (r - 1 - math.log(r) + gap2 / w)


def gaussian_chain(schedule: NoiseSchedule, data_var: float = 0.25, dim: int = 2, eps_scale: float = 1.0,
                   eps_bias: float = 0.0, standardized: bool = False, var_type: str = "beta") -> GaussianChain:
    """Every error of a linear-Gaussian chain on data ``N(0, data_var I)`` in ``dim`` dimensions, in closed form
    (float64; see the module docstring). The model is :class:`OracleDenoiser` with ``eps_scale`` and ``eps_bias``,
    or with ``standardized`` ``eps_theta(x_t, t) = (x_t - m_t) / sqrt(P_t)``, whose output is exactly ``N(0, I)`` on
    its own chain at every t: the hypothesis of 000 Thm 3.1 (and of App. D, ``E |eps_theta|^2 = D``)."""
    sched = schedule
    if standardized and (eps_scale != 1.0 or eps_bias != 0.0):
        raise DiffpropError("gaussian_chain: eps_scale and eps_bias apply to the oracle model, not the "
                            "standardized one")
    var = (sched.betas if var_type == "beta" else sched.betas_tilde).double()
    if not bool((var[1:] > 0).all()):
        raise DiffpropError(f"sigma_t^2 = {var_type}_t is 0 at some t: p_theta is a point mass there and the KLs "
                            "are infinite; use var_type 'beta'")
    T, ab = sched.T, sched.alpha_bars.double()
    v = (ab * data_var + 1 - ab).tolist()  # v_t, t = 0..T
    # the oracle's noise prediction is affine in x_t: read it at x_t = 0 and 1, every t at once
    one = GaussianMixture(torch.zeros(1, 1), torch.tensor([math.sqrt(data_var)]), torch.ones(1))
    eps = OracleDenoiser(one, sched, eps_scale, eps_bias).predict(
        torch.tensor([[0.0], [1.0]], dtype=torch.float64).repeat(T, 1), torch.arange(1, T + 1).repeat_interleave(2)).eps
    e0s, e1s = eps[0::2, 0].tolist(), (eps[1::2, 0] - eps[0::2, 0]).tolist()
    c0, ct, _, _ = (c.tolist() for c in posterior_coefficients(ab[1:], ab[:-1]))
    s2, alpha, beta, ab = var.tolist(), sched.alphas.tolist(), sched.betas.tolist(), ab.tolist()
    m, P = [0.0] * (T + 1), [1.0] * (T + 1)  # p_theta(x_T) = N(0, 1)
    out = {k: [0.0] * T for k in ("cumulative", "modular", "reverse", "eps_moment")}
    for t in range(T, 0, -1):
        i = t - 1  # index of module t in the outputs and in e0s, e1s, c0, ct
        e1, e0 = (1 / math.sqrt(P[t]), -m[t] / math.sqrt(P[t])) if standardized else (e1s[i], e0s[i])
        # 000 Eq. 4 as the posterior mean at x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): A_t x_t + B_t
        k = c0[i] / math.sqrt(ab[t])
        A, B = k * (1 - math.sqrt(1 - ab[t]) * e1) + ct[i], -k * math.sqrt(1 - ab[t]) * e0
        m[t - 1], P[t - 1] = A * m[t] + B, A * A * P[t] + s2[t]
        C, W = math.sqrt(alpha[t]) * v[t - 1] / v[t], beta[t] * v[t - 1] / v[t]
        G = A * P[t] / P[t - 1]
        out["cumulative"][i] = dim * _kl(m[t - 1], P[t - 1], 0.0, v[t - 1])
        out["modular"][i] = dim * _expected_kl(m[t], P[t], A, B, s2[t], C, 0.0, W)
        out["reverse"][i] = dim * _expected_kl(m[t - 1], P[t - 1], G, m[t] - G * m[t - 1], s2[t] * P[t] / P[t - 1],
                                               math.sqrt(alpha[t]), 0.0, beta[t])
        out["eps_moment"][i] = (e0 + e1 * m[t]) ** 2 + e1 ** 2 * P[t]
    cumu = np.array(out["cumulative"])
    nxt = np.append(cumu[1:], dim * _kl(0.0, 1.0, 0.0, v[T]))
    return GaussianChain(np.arange(1, T + 1), cumu, nxt, np.array(out["modular"]), np.array(out["reverse"]),
                         np.array(m), np.array(P), np.array(out["eps_moment"]))


__all__ = ["GaussianChain", "gaussian_chain"]
