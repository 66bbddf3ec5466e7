"""Schedules, forward process, posterior, backward step, denoisers and the DDPM/DDIM samplers,
checked against the papers' formulas, Monte Carlo, and diffusers' schedulers.

Index conventions (see schedules.py): diffprop's t = 1..T, arrays of length T + 1 with index 0 the
data (beta_0 = 0, abar_0 = 1); diffusers' k = 0..T-1 is diffprop's t - 1, so
``diffusers.alphas_cumprod[k] == diffprop.alpha_bars[k + 1]`` and diffusers' "previous timestep < 0"
(``one`` / ``final_alpha_cumprod`` = 1 with ``set_alpha_to_one=True``) is diffprop's t_prev = 0.

Exact comparisons with diffusers run in float64: diffusers keeps its schedule in float32, so the
diffusers schedulers get diffprop's float64 schedule injected (``_inject``) after the float32 schedules
themselves have been checked against diffprop's to float32 precision. A few float32 checks against the
unmodified schedulers are kept too, with float32 tolerances.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from diffprop.denoisers import (Denoiser, DenoiserBase, Prediction, eps_from_x0, training_target,
                                x0_from_eps)
from diffprop.errors import DiffpropError
from diffprop.nets import build_net
from diffprop.process import p_step, posterior_coefficients, q_posterior, q_sample
from diffprop.samplers import ddim, ddpm
from diffprop.schedules import SCHEDULES, NoiseSchedule, make_betas

F64 = torch.float64
T = 1000
LIN = NoiseSchedule.from_config("linear", T)
COS = NoiseSchedule.from_config("cosine", T)
DIFFUSERS_NAME = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# 1. Schedules
# ----------------------------------------------------------------------------------------------

def test_schedule_names():
    assert SCHEDULES == ("linear", "cosine", "sigmoid_abar")


@pytest.mark.parametrize("T_", [10, 20, 50, 100, 1000, 4000])
def test_linear_betas_scale_with_T_so_the_chain_ends_at_the_prior(T_):
    """Ho et al.'s 1e-4..0.02 scaled by 1000/T (Nichol & Dhariwal 2021): abar_T ~ 4e-5 whatever T; unscaled, T = 100
    stopped at abar_T = 0.36 and x_T ~ N(0, I) started far from q(x_T)."""
    sched = NoiseSchedule.from_config("linear", T_)
    assert float(sched.alpha_bars[-1]) <= 1e-3
    lo, hi = min(1e-4 * 1000 / T_, 0.999), min(0.02 * 1000 / T_, 0.999)
    np.testing.assert_allclose(sched.betas[1:].numpy(), np.linspace(lo, hi, T_), rtol=1e-15)
    # explicit values are raw, as diffusers takes them
    raw = NoiseSchedule.from_config("linear", T_, 1e-4, 0.02)
    np.testing.assert_array_equal(raw.betas[1:].numpy(), np.linspace(1e-4, 0.02, T_))
    if T_ == 100:
        assert 0.36 < float(raw.alpha_bars[-1]) < 0.37


def test_config_betas_default_to_scaled_and_keep_explicit_values():
    from diffprop.config import load_config
    from diffprop.runs import build_schedule

    scaled = build_schedule(load_config(None, ["diffusion.T=100"]))
    assert float(scaled.betas[1]) == pytest.approx(1e-3) and float(scaled.betas[-1]) == pytest.approx(0.2)
    raw = build_schedule(load_config(None, ["diffusion.T=100", "diffusion.beta_start=1e-4", "diffusion.beta_end=0.02"]))
    assert float(raw.betas[1]) == 1e-4 and float(raw.betas[-1]) == 0.02
    with pytest.raises(DiffpropError, match=r"beta_start \(0.03\) must be <= diffusion.beta_end \(0.02\)"):
        load_config(None, ["diffusion.T=100", "diffusion.beta_start=0.03", "diffusion.beta_end=0.02"])


def test_linear_betas_are_linspace():
    np.testing.assert_array_equal(make_betas("linear", T), np.linspace(1e-4, 0.02, T))
    np.testing.assert_array_equal(make_betas("linear", 7, 1e-3, 0.05), np.linspace(1e-3, 0.05, 7))
    assert LIN.betas.dtype == F64 and LIN.betas.shape == (T + 1,) and LIN.T == T
    assert LIN.betas[0] == 0 and LIN.alpha_bars[0] == 1
    np.testing.assert_array_equal(LIN.betas[1:].numpy(), np.linspace(1e-4, 0.02, T))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_betas_and_alpha_bars_match_diffusers(kind):
    sched = NoiseSchedule.from_config(kind, T)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[kind])
    # diffusers is float32: agreement to float32 rounding of values <= 0.999
    np.testing.assert_allclose(sched.betas[1:].numpy(), ref.betas.double().numpy(), rtol=0, atol=1e-6)
    # float32 cumprod over 1000 factors: relative error grows to ~1e-5 in the cosine tail (abar ~ 1e-9)
    np.testing.assert_allclose(sched.alpha_bars[1:].numpy(), ref.alphas_cumprod.double().numpy(),
                               rtol=5e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid_abar"])
def test_derived_arrays(kind):
    sched = NoiseSchedule.from_config(kind, T)
    b = sched.betas.numpy()
    assert b[0] == 0 and np.all((b[1:] > 0) & (b[1:] < 1))
    np.testing.assert_allclose(sched.alphas.numpy(), 1 - b, rtol=0, atol=0)
    abar = np.cumprod(1 - b)
    np.testing.assert_allclose(sched.alpha_bars.numpy(), abar, rtol=1e-13, atol=0)
    np.testing.assert_allclose(sched.alpha_bars_prev.numpy(), np.concatenate([[1.0], abar[:-1]]),
                               rtol=1e-13, atol=0)
    # beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t  (Ho et al. Eq. 7), 0 at t = 0 and t = 1
    bt = np.zeros(T + 1)
    for t in range(1, T + 1):
        bt[t] = (1 - abar[t - 1]) / (1 - abar[t]) * b[t]
    np.testing.assert_allclose(sched.betas_tilde.numpy(), bt, rtol=1e-12, atol=0)
    assert sched.betas_tilde[0] == 0 and sched.betas_tilde[1] == 0
    assert torch.all(sched.betas_tilde[1:] <= sched.betas[1:])
    assert torch.all(torch.diff(sched.alpha_bars) < 0)


def test_cosine_follows_nichol_dhariwal_alpha_bar():
    # abar_t = f(t/T) / f(0) with f(u) = cos((u + s) / (1 + s) * pi / 2)^2, until the 0.999 beta cap bites
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ref = np.array([f(t / T) / f(0) for t in range(T + 1)])
    capped = COS.betas.numpy() >= 0.999 - 1e-15
    first_cap = int(np.argmax(capped)) if capped.any() else T + 1
    assert first_cap > 990  # only the very last steps are capped
    np.testing.assert_allclose(COS.alpha_bars[:first_cap].numpy(), ref[:first_cap], rtol=1e-10)


def test_sigmoid_abar_schedule():
    sched = NoiseSchedule.from_config("sigmoid_abar", T)
    b = sched.betas[1:]
    assert torch.all((b > 0) & (b < 1)) and b.max() <= 0.999
    abar = sched.alpha_bars
    assert torch.all(torch.diff(abar) < 0)
    assert abar[1] > 0.999 and abar[T] < 1e-5
    # Jabri et al. 2022 (start -3, end 3, tau 1): abar(u) = (s(3) - s(6u - 3)) / (s(3) - s(-3)),
    # reproduced exactly up to t = T - 1 (the last beta is capped at 0.999 since abar(1) = 0)
    s = lambda u: 1 / (1 + np.exp(-u))  # noqa: E731
    u = np.arange(T + 1) / T
    ref = (s(3.0) - s(6 * u - 3)) / (s(3.0) - s(-3.0))
    np.testing.assert_allclose(abar[:T].numpy(), ref[:T], rtol=1e-9)
    assert b[-1] == pytest.approx(0.999)
    small = NoiseSchedule.from_config("sigmoid_abar", 10)
    assert small.T == 10 and torch.all(torch.diff(small.alpha_bars) < 0)


@pytest.mark.parametrize("betas,match", [
    ([0.1, 0.0, 0.2], r"\(0, 1\)"),
    ([0.1, 1.0], r"\(0, 1\)"),
    ([0.1, -0.1], r"\(0, 1\)"),
    ([0.1, float("nan")], r"\(0, 1\)"),
    ([], "non-empty"),
    ([[0.1, 0.2]], "1-D"),
])
def test_invalid_betas_raise(betas, match):
    with pytest.raises(DiffpropError, match=match):
        NoiseSchedule(np.array(betas, dtype=np.float64))


def test_invalid_schedule_configs_raise():
    with pytest.raises(DiffpropError, match=r"unknown beta schedule 'quadratic'; allowed: linear, cosine, sigmoid_abar"):
        make_betas("quadratic", 10)
    # diffusers' "sigmoid" is another schedule: the name is refused, pointing at diffprop's new one
    with pytest.raises(DiffpropError, match=r"unknown beta schedule 'sigmoid' \(diffprop's sigmoid schedule .* is now "
                                            r"'sigmoid_abar'; diffusers' 'sigmoid' .* not implemented\)"):
        make_betas("sigmoid", 10)
    with pytest.raises(DiffpropError, match="unknown beta schedule"):
        NoiseSchedule.from_config("squaredcos_cap_v2", 10)  # diffusers' name is not an alias
    with pytest.raises(DiffpropError, match="non-empty"):
        NoiseSchedule.from_config("linear", 0)
    with pytest.raises(DiffpropError, match=r"\(0, 1\)"):
        NoiseSchedule.from_config("linear", 10, beta_start=0.0)
    with pytest.raises(DiffpropError, match=r"\(0, 1\)"):
        NoiseSchedule.from_config("linear", 10, beta_end=1.0)


def test_spaced():
    for K in range(1, T + 1):
        ts = LIN.spaced(K)
        assert len(ts) == K, K
        assert all(isinstance(t, int) for t in ts)
        assert all(a < b for a, b in zip(ts, ts[1:])), K
        assert ts[-1] == T
        if K >= 2:
            assert ts[0] == 1
            # the nearest integers to an even spread over [1, T]
            assert np.abs(np.array(ts) - np.linspace(1, T, K)).max() <= 0.5, K
    assert LIN.spaced(1) == [T]
    assert LIN.spaced(T) == list(range(1, T + 1))
    assert LIN.spaced(4) == [1, 334, 667, 1000]
    # = diffusers' timestep_spacing="linspace" shifted by one for these K (not for every K, see below)
    for K in (10, 50, 100):
        ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing="linspace")
        ref.set_timesteps(K)
        assert LIN.spaced(K) == sorted(k + 1 for k in ref.timesteps.tolist())
    gaps = np.diff(LIN.spaced(50))
    assert gaps.min() >= 20 and gaps.max() <= 21  # even spacing: (T - 1) / 49 = 20.39
    for bad in (0, -1, T + 1):
        with pytest.raises(DiffpropError, match=rf"steps must be in 1\.\.{T}.*got {bad}"):
            LIN.spaced(bad)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_diffusers_spacings_are_diffusers_timesteps(spacing):
    """spaced(K, spacing) is diffusers' set_timesteps(K) with that timestep_spacing, read as t = k + 1."""
    for n, offset in ((1000, 0), (1000, 1), (50, 0), (37, 0)):
        if offset and spacing != "leading":
            continue
        sched = NoiseSchedule.from_config("linear", n)
        ref = DDPMScheduler(num_train_timesteps=n, timestep_spacing=spacing, steps_offset=offset)
        for K in sorted({K for K in (1, 2, 3, 7, 10, 33, 50, n // 2, n - 1, n) if K <= n}):
            ref.set_timesteps(K)
            if ref.timesteps.max() >= n:  # diffusers' own timesteps run past T - 1 (leading, offset 1, K = T)
                with pytest.raises(DiffpropError, match=rf"steps_offset {offset} does not give {K} distinct"):
                    sched.spaced(K, spacing, offset)
                continue
            assert sched.spaced(K, spacing, offset) == sorted(k + 1 for k in ref.timesteps.tolist()), (n, K)
    with pytest.raises(DiffpropError, match=r"unknown timestep spacing 'uniform'; allowed: even, linspace, leading, "
                                            r"trailing"):
        LIN.spaced(10, "uniform")


def test_gather_shapes_and_dtypes():
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    t = torch.tensor([1, 500, 1000])
    g = LIN.gather("alpha_bars", t, x)
    assert g.shape == (3, 1, 1, 1) and g.dtype == torch.float32
    torch.testing.assert_close(g.flatten(), LIN.alpha_bars[t].float())
    assert LIN.gather("betas", 7, x) == LIN.betas[7].float()
    assert LIN.gather("betas", torch.tensor(7), x.double()).ndim == 0


# ----------------------------------------------------------------------------------------------
# 2. Forward process q(x_t | x_0)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [1, 10, 250, 1000])
def test_q_sample_moments(t):
    n, x0v = 200_000, 1.7
    x0 = torch.full((n, 1), x0v, dtype=F64)
    eps = torch.randn(n, 1, generator=_gen(t), dtype=F64)
    xt = q_sample(LIN, x0, t, eps)
    abar = LIN.alpha_bars[t].item()
    mean, var = xt.mean().item(), xt.var().item()
    se_mean, se_var = math.sqrt((1 - abar) / n), (1 - abar) * math.sqrt(2 / (n - 1))
    assert abs(mean - math.sqrt(abar) * x0v) < 5 * se_mean
    assert abs(var - (1 - abar)) < 5 * se_var


def test_q_sample_formula_per_sample_t():
    x0 = torch.randn(6, 2, 3, generator=_gen(1), dtype=F64)
    eps = torch.randn(6, 2, 3, generator=_gen(2), dtype=F64)
    t = torch.tensor([1, 2, 10, 100, 999, 1000])
    xt = q_sample(COS, x0, t, eps)
    for i, ti in enumerate(t.tolist()):
        a = COS.alpha_bars[ti]
        torch.testing.assert_close(xt[i], a.sqrt() * x0[i] + (1 - a).sqrt() * eps[i], rtol=1e-14, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# 3. Posterior q(x_{t-1} | x_t, x_0)
# ----------------------------------------------------------------------------------------------

def test_posterior_coefficients_adjacent_steps_equal_schedule_arrays():
    ts = torch.arange(1, T + 1)
    for sched in (LIN, COS):
        c0, ct, beta, beta_tilde = posterior_coefficients(sched.alpha_bars[ts], sched.alpha_bars[ts - 1])
        torch.testing.assert_close(beta, sched.betas[ts], rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(beta_tilde, sched.betas_tilde[ts], rtol=1e-9, atol=1e-15)
        a, ap, b = sched.alpha_bars[ts], sched.alpha_bars[ts - 1], sched.betas[ts]
        torch.testing.assert_close(c0, ap.sqrt() * b / (1 - a), rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(ct, (1 - b).sqrt() * (1 - ap) / (1 - a), rtol=1e-9, atol=1e-15)


def test_q_posterior_equals_ho_eq7():
    x0 = torch.randn(8, 3, generator=_gen(3), dtype=F64)
    xt = torch.randn(8, 3, generator=_gen(4), dtype=F64)
    t = torch.tensor([1, 2, 3, 50, 400, 800, 999, 1000])
    mean, var = q_posterior(LIN, x0, xt, t)
    b = LIN.betas.numpy()
    abar = np.cumprod(1 - b)
    for i, ti in enumerate(t.tolist()):
        c0 = math.sqrt(abar[ti - 1]) * b[ti] / (1 - abar[ti])
        ct = math.sqrt(1 - b[ti]) * (1 - abar[ti - 1]) / (1 - abar[ti])
        torch.testing.assert_close(mean[i], c0 * x0[i] + ct * xt[i], rtol=1e-12, atol=1e-12)
        assert var[i].item() == pytest.approx((1 - abar[ti - 1]) / (1 - abar[ti]) * b[ti], rel=1e-12, abs=0)
    # t = 1: x_0 is known exactly
    torch.testing.assert_close(mean[0], x0[0], rtol=0, atol=1e-15)
    assert var[0].item() == 0


@pytest.mark.parametrize("t,t_prev", [(2, 1), (50, 49), (500, 499), (1000, 999), (600, 400), (1000, 500)])
def test_posterior_by_monte_carlo(t, t_prev):
    """Draw x_prev ~ q(x_prev|x0), x_t ~ q(x_t|x_prev) = N(sqrt(abar_t/abar_prev) x_prev, 1 - abar_t/abar_prev);
    everything is jointly Gaussian, so E[x_prev|x_t] is linear in x_t: regressing x_prev on x_t must give
    slope ct, intercept c0 x0 and residual variance beta_tilde (adjacent steps and respaced ones)."""
    n, x0 = 200_000, 0.8
    g = _gen(1000 * t + t_prev)
    a, ap = LIN.alpha_bars[t].item(), LIN.alpha_bars[t_prev].item()
    x_prev = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * torch.randn(n, generator=g, dtype=F64)
    x_t = math.sqrt(a / ap) * x_prev + math.sqrt(1 - a / ap) * torch.randn(n, generator=g, dtype=F64)
    xm, ym = x_t.mean(), x_prev.mean()
    vx = ((x_t - xm) ** 2).mean()
    slope = ((x_t - xm) * (x_prev - ym)).mean() / vx
    intercept = ym - slope * xm
    resid = (x_prev - intercept - slope * x_t).var()
    c0, ct, beta, beta_tilde = posterior_coefficients(torch.tensor(a, dtype=F64), torch.tensor(ap, dtype=F64))
    se_slope = math.sqrt(resid / (n * vx))
    se_int = math.sqrt(resid / n * (1 + xm**2 / vx))
    assert abs(slope - ct) < 6 * se_slope
    assert abs(intercept - c0 * x0) < 6 * se_int
    assert abs(resid - beta_tilde) < 6 * beta_tilde * math.sqrt(2 / n)
    if t_prev == t - 1:
        mean, var = q_posterior(LIN, torch.full((3,), x0, dtype=F64), x_t[:3], t)
        torch.testing.assert_close(mean, c0 * x0 + ct * x_t[:3])
        assert var.item() == pytest.approx(beta_tilde.item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# 4. Backward step p_theta(x_{t-1} | x_t)
# ----------------------------------------------------------------------------------------------

def test_p_step_equals_eq4_for_eps_model():
    """000 Eq. 4: mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t), via x0_hat = x0_from_eps."""
    t = torch.tensor([1, 2, 5, 100, 500, 900, 999, 1000])
    xt = torch.randn(8, 3, generator=_gen(5), dtype=F64)
    eps = torch.randn(8, 3, generator=_gen(6), dtype=F64)
    noise = torch.randn(8, 3, generator=_gen(7), dtype=F64)
    for sched in (LIN, COS):
        x0_hat = x0_from_eps(sched, xt, t, eps)
        torch.testing.assert_close(x0_hat, (xt - (1 - sched.alpha_bars[t, None]).sqrt() * eps)
                                   / sched.alpha_bars[t, None].sqrt(), rtol=1e-12, atol=1e-12)
        abar_t, abar_prev = sched.gather("alpha_bars", t, xt), sched.gather("alpha_bars_prev", t, xt)
        b = sched.betas[t, None]
        eq4 = (xt - b / (1 - sched.alpha_bars[t, None]).sqrt() * eps) / (1 - b).sqrt()
        mean = p_step(xt, x0_hat, abar_t, abar_prev, None)
        torch.testing.assert_close(mean, eq4, rtol=1e-10, atol=1e-10)
        # the variance: beta_t (000) or beta_tilde_t (Ho et al.'s other choice)
        for var_type, var in (("beta", sched.betas), ("beta_tilde", sched.betas_tilde)):
            x = p_step(xt, x0_hat, abar_t, abar_prev, noise, var_type)
            torch.testing.assert_close(x - mean, var[t, None].sqrt() * noise, rtol=1e-9, atol=1e-12)
        assert torch.equal(p_step(xt, x0_hat, abar_t, abar_prev, noise), p_step(xt, x0_hat, abar_t, abar_prev,
                                                                                   noise, "beta"))


def test_p_step_respaced_equals_eq4_with_respaced_beta():
    """Respaced chain (Nichol & Dhariwal): beta = 1 - abar_t / abar_prev in Eq. 4 and in the variances."""
    xt = torch.randn(5, 2, generator=_gen(8), dtype=F64)
    eps = torch.randn(5, 2, generator=_gen(9), dtype=F64)
    noise = torch.randn(5, 2, generator=_gen(10), dtype=F64)
    for t, tp in [(1000, 980), (600, 400), (21, 1), (5, 0)]:
        a, ap = LIN.alpha_bars[t], LIN.alpha_bars[tp]
        b = 1 - a / ap
        x0_hat = x0_from_eps(LIN, xt, t, eps)
        mean = p_step(xt, x0_hat, a, ap, None)
        torch.testing.assert_close(mean, (xt - b / (1 - a).sqrt() * eps) / (1 - b).sqrt(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(p_step(xt, x0_hat, a, ap, noise, "beta") - mean, b.sqrt() * noise)
        bt = (1 - ap) / (1 - a) * b
        torch.testing.assert_close(p_step(xt, x0_hat, a, ap, noise, "beta_tilde") - mean, bt.sqrt() * noise)


def test_p_step_rejects_unknown_var_type():
    x = torch.zeros(2, 1, dtype=F64)
    with pytest.raises(DiffpropError, match="unknown backward variance 'fixed_large'; allowed: beta, beta_tilde"):
        p_step(x, x, LIN.alpha_bars[10], LIN.alpha_bars[9], torch.ones_like(x), "fixed_large")


def test_gather_accepts_numpy_integers_and_mlp_accepts_float64_inputs():
    x = torch.zeros(3, 2, dtype=F64)
    assert LIN.gather("alpha_bars", np.int64(3), x) == LIN.alpha_bars[3]
    out = Denoiser(build_net("mlp", (2,), width=16, depth=1), LIN).predict(x, torch.tensor(5))
    assert out.eps.dtype == F64 and out.eps.shape == x.shape


# ----------------------------------------------------------------------------------------------
# 5. Equivalence with diffusers
# ----------------------------------------------------------------------------------------------

S2 = 0.25  # eps_fn is the exact noise prediction for N(0, S2) data, plus a nonlinear, t-dependent wiggle


def eps_fn(sched: NoiseSchedule, x: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed 'model' in diffprop's indexing t = 1..T (diffusers must call it with k + 1)."""
    a = sched.alpha_bars[t].item()
    return math.sqrt(1 - a) * x / (a * S2 + 1 - a) + 0.05 * torch.sin(3 * x + 0.01 * t)


class FixedEps(DenoiserBase):
    """Denoiser whose eps is ``eps_fn``; records the timesteps it is asked about."""

    def __init__(self, sched: NoiseSchedule):
        super().__init__()
        self.schedule = sched
        self.calls: list[int] = []

    def predict(self, x_t, t, generator=None):
        assert torch.is_tensor(t) and t.ndim == 0
        self.calls.append(int(t))
        eps = eps_fn(self.schedule, x_t, int(t))
        return Prediction(eps, x0_from_eps(self.schedule, x_t, t, eps))


def _inject(scheduler, sched: NoiseSchedule):
    """Give a diffusers scheduler diffprop's float64 schedule (diffusers' k = diffprop's t - 1)."""
    scheduler.betas = sched.betas[1:].clone()
    scheduler.alphas = sched.alphas[1:].clone()
    scheduler.alphas_cumprod = sched.alpha_bars[1:].clone()
    scheduler.one = torch.tensor(1.0, dtype=F64)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    return scheduler


def _ddpm_scheduler(variance_type, float64=True):
    s = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False, variance_type=variance_type)
    return _inject(s, LIN) if float64 else s


# diffusers' fixed_small is beta_tilde; fixed_large is current_beta_t = 1 - abar_k / abar_prev, i.e. beta_t
# (the respaced beta on a respaced chain), the same as diffprop's "beta". Neither adds noise at k = 0
# (diffusers: `if t > 0`), which diffprop's samplers mirror by passing noise=None when t_prev = 0; p_step
# itself with noise at t = 1 would add sqrt(beta_1) noise for "beta" (and 0 for "beta_tilde").
VAR_MAP = {"fixed_small": "beta_tilde", "fixed_large": "beta"}


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("k", [0, 1, 2, 10, 500, 998, 999])
def test_ddpm_single_step_matches_diffusers(variance_type, k):
    sched = _ddpm_scheduler(variance_type)
    t = k + 1
    x = torch.randn(4, 3, generator=_gen(11), dtype=F64)
    model_output = eps_fn(LIN, x, t)
    out = sched.step(model_output, k, x, generator=_gen(100 + k))
    # diffusers draws its noise with randn_tensor(shape, generator, dtype=model_output.dtype) iff k > 0
    noise = torch.randn(x.shape, generator=_gen(100 + k), dtype=F64) if k > 0 else None
    x0_hat = x0_from_eps(LIN, x, torch.tensor(t), model_output)
    torch.testing.assert_close(out.pred_original_sample, x0_hat, rtol=1e-12, atol=1e-12)
    mine = p_step(x, x0_hat, LIN.alpha_bars[t], LIN.alpha_bars[t - 1], noise, VAR_MAP[variance_type])
    torch.testing.assert_close(out.prev_sample, mine, rtol=1e-12, atol=1e-12)
    if k > 0:  # the mean alone: remove the (reproduced) noise term
        var = (LIN.betas_tilde if variance_type == "fixed_small" else LIN.betas)[t]
        torch.testing.assert_close(out.prev_sample - var.sqrt() * noise,
                                   p_step(x, x0_hat, LIN.alpha_bars[t], LIN.alpha_bars[t - 1], None),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 300, 999])
def test_ddpm_single_step_matches_unmodified_float32_diffusers(k):
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                          variance_type="fixed_small")
    t = k + 1
    x = torch.randn(4, 3, generator=_gen(12))
    model_output = eps_fn(LIN, x, t).float()
    out = sched.step(model_output, k, x, generator=_gen(7)).prev_sample
    noise = torch.randn(x.shape, generator=_gen(7)) if k > 0 else None
    x0_hat = x0_from_eps(LIN, x, torch.tensor(t), model_output)
    mine = p_step(x, x0_hat, LIN.gather("alpha_bars", t, x), LIN.gather("alpha_bars", t - 1, x), noise, "beta_tilde")
    torch.testing.assert_close(out, mine, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_full_chain_matches_diffusers(variance_type):
    """Whole T = 1000 ancestral chain: diffprop draws noise_like(x, generator) when t_prev > 0, diffusers
    randn_tensor(..., generator) when k > 0: the same 999 draws in the same order from twin generators."""
    sched = _ddpm_scheduler(variance_type)
    x_T = torch.randn(16, 3, generator=_gen(21), dtype=F64)
    den = FixedEps(LIN)
    out = ddpm(den, x_T.clone(), steps=None, generator=_gen(22), var_type=VAR_MAP[variance_type], record=(T, 500, 0))
    assert den.calls == list(range(T, 0, -1))
    g = _gen(22)
    x = x_T.clone()
    states = {}
    assert sched.timesteps.tolist() == list(range(T - 1, -1, -1))
    for k in sched.timesteps.tolist():
        if k + 1 in (T, 500):
            states[k + 1] = x.clone()
        x = sched.step(eps_fn(LIN, x, k + 1), k, x, generator=g).prev_sample
    torch.testing.assert_close(out.x, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.states[T], x_T, rtol=0, atol=0)
    torch.testing.assert_close(out.states[500], states[500], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.states[0], x, rtol=1e-9, atol=1e-9)
    assert x.std() < 5  # the chain stayed sane, so the comparison is meaningful


@pytest.mark.parametrize("steps", [50, 37, 2])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_respaced_ddpm_matches_diffusers_custom_timesteps(steps, variance_type):
    """diffprop's respaced chain (t in spaced(K), beta = 1 - abar_t / abar_prev) is diffusers' DDPM with
    custom timesteps k = t - 1: its previous_timestep follows the list and its variances use the
    respaced current_beta_t. Both end at k = 0 / t = 1 without noise."""
    sched = _ddpm_scheduler(variance_type)
    ts = LIN.spaced(steps)
    sched.set_timesteps(timesteps=[t - 1 for t in reversed(ts)])
    x_T = torch.randn(8, 2, generator=_gen(31), dtype=F64)
    den = FixedEps(LIN)
    out = ddpm(den, x_T.clone(), steps=steps, generator=_gen(32), var_type=VAR_MAP[variance_type])
    assert den.calls == list(reversed(ts))
    g, x = _gen(32), x_T.clone()
    for k in sched.timesteps.tolist():
        x = sched.step(eps_fn(LIN, x, k + 1), k, x, generator=g).prev_sample
    torch.testing.assert_close(out.x, x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", [980, 500, 20, 0])
def test_ddim_single_step_matches_diffusers(k):
    sched = _inject(DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                                  set_alpha_to_one=True), LIN)
    sched.set_timesteps(50)
    assert k in sched.timesteps.tolist()
    k_prev = k - T // 50
    t, t_prev = k + 1, max(k_prev + 1, 0)  # k_prev < 0 -> final_alpha_cumprod = 1 = abar_0
    x = torch.randn(4, 3, generator=_gen(41), dtype=F64)
    eps = eps_fn(LIN, x, t)
    out = sched.step(eps, k, x, eta=0.0).prev_sample
    a_prev = LIN.alpha_bars[t_prev]
    x0 = x0_from_eps(LIN, x, torch.tensor(t), eps)
    torch.testing.assert_close(out, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, rtol=1e-12, atol=1e-12)
    if k == 0:
        torch.testing.assert_close(out, x0, rtol=1e-12, atol=1e-12)


def _diffusers_ddim_loop(sched, x, eta=0.0, noise_gen=None, clipped=False):
    for k in sched.timesteps.tolist():
        eps = eps_fn(LIN, x, k + 1)
        vn = None
        if eta > 0:  # diffprop draws noise only when t_prev > 0; at k_prev < 0 sigma is 0 anyway
            k_prev = k - T // sched.num_inference_steps
            vn = torch.randn(x.shape, generator=noise_gen, dtype=x.dtype) if k_prev >= 0 else torch.zeros_like(x)
        x = sched.step(eps, k, x, eta=eta, variance_noise=vn, use_clipped_model_output=clipped).prev_sample
    return x


def test_ddim_full_chain_matches_diffusers():
    """steps = T: diffprop visits t = T..1, diffusers' 'leading' spacing k = T-1..0 with prev k - 1."""
    sched = _inject(DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                                  set_alpha_to_one=True), LIN)
    sched.set_timesteps(T)
    x_T = torch.randn(16, 3, generator=_gen(51), dtype=F64)
    den = FixedEps(LIN)
    out = ddim(den, x_T.clone(), steps=T)
    assert den.calls == [k + 1 for k in sched.timesteps.tolist()]
    torch.testing.assert_close(out.x, _diffusers_ddim_loop(sched, x_T.clone()), rtol=1e-9, atol=1e-9)


# A K-step comparison needs the same timesteps in both libraries. diffprop's spaced(K) is
# round(linspace(1, T, K)) and always includes t = T. diffusers' DDIM "leading" spacing (the default)
# gives k = 0, T//K, ..., (K-1) T//K, never k = T - 1, and its step() always takes prev = k - T//K, so
# with "linspace" spacing (whose timesteps + 1 do equal spaced(K) for many K, e.g. 10, 50, 100, but not for
# odd K like 3 where numpy's round-half-to-even differs) diffusers would step to the wrong prev. For an
# exact whole-loop comparison we run diffprop on the schedule truncated to T' = (K - 1) * T//K + 1 = 981
# (the same abar_1..abar_981): spaced(50) is then exactly 1, 21, ..., 981 = diffusers' k + 1.
TRUNC = NoiseSchedule(LIN.betas[1:982].numpy())


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_50_steps_matches_diffusers_leading_spacing(eta):
    sched = _inject(DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                                  set_alpha_to_one=True), LIN)
    sched.set_timesteps(50)
    assert TRUNC.T == 981 and TRUNC.spaced(50) == sorted(k + 1 for k in sched.timesteps.tolist())
    torch.testing.assert_close(TRUNC.alpha_bars, LIN.alpha_bars[:982], rtol=0, atol=0)
    x_T = torch.randn(16, 3, generator=_gen(61), dtype=F64)
    den = FixedEps(TRUNC)
    out = ddim(den, x_T.clone(), steps=50, eta=eta, generator=_gen(62))
    assert den.calls == [k + 1 for k in sched.timesteps.tolist()]
    ref = _diffusers_ddim_loop(sched, x_T.clone(), eta=eta, noise_gen=_gen(62))
    torch.testing.assert_close(out.x, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_with_clipping_matches_diffusers_use_clipped_model_output(eta):
    """clip_x0 with the model's eps is diffusers' default (use_clipped_model_output=False); clipped_eps=True
    re-derives eps from the clipped x0 as use_clipped_model_output=True does. A range of 0.3 clips at most steps."""
    sched = _inject(DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=True,
                                  clip_sample_range=0.3, set_alpha_to_one=True), LIN)
    sched.set_timesteps(50)
    x_T = torch.randn(16, 3, generator=_gen(63), dtype=F64)
    outs = {}
    for clipped in (False, True):
        out = ddim(FixedEps(TRUNC), x_T.clone(), steps=50, eta=eta, generator=_gen(64), clip_x0=0.3,
                   clipped_eps=clipped).x
        ref = _diffusers_ddim_loop(sched, x_T.clone(), eta=eta, noise_gen=_gen(64), clipped=clipped)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
        outs[clipped] = out
    assert (outs[True] - outs[False]).abs().max() > 0.05  # the option matters here
    # without clipping the option changes nothing (eps from the unclipped x0 is eps)
    torch.testing.assert_close(ddim(FixedEps(TRUNC), x_T.clone(), steps=50, clipped_eps=True).x,
                               ddim(FixedEps(TRUNC), x_T.clone(), steps=50).x, rtol=1e-12, atol=1e-12)


def test_samplers_default_to_the_denoisers_clip_x0():
    den = FixedEps(TRUNC)
    x_T = torch.randn(16, 3, generator=_gen(65), dtype=F64)
    clipped = {name: fn(den, x_T.clone(), steps=50, generator=_gen(66), clip_x0=0.3).x
               for name, fn in (("ddpm", ddpm), ("ddim", ddim))}
    den.clip_x0 = 0.3
    for name, fn in (("ddpm", ddpm), ("ddim", ddim)):
        torch.testing.assert_close(fn(den, x_T.clone(), steps=50, generator=_gen(66)).x, clipped[name],
                                   rtol=0, atol=0)


def test_ddim_50_steps_matches_unmodified_float32_diffusers():
    sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(50)
    x_T = torch.randn(16, 3, generator=_gen(71))
    out = ddim(FixedEps(TRUNC), x_T.clone(), steps=50)
    x = x_T.clone()
    for k in sched.timesteps.tolist():
        x = sched.step(eps_fn(LIN, x, k + 1).float(), k, x, eta=0.0).prev_sample
    torch.testing.assert_close(out.x, x, rtol=1e-4, atol=1e-4)


def test_ddim_exact_eps_maps_gaussian_to_gaussian():
    """Sanity of the sampler itself: with the exact eps of N(0, S2) data, deterministic DDIM (many steps)
    transports N(0, 1) to approximately N(0, S2)."""

    class Exact(FixedEps):
        def predict(self, x_t, t, generator=None):
            a = self.schedule.alpha_bars[int(t)].item()
            eps = math.sqrt(1 - a) * x_t / (a * S2 + 1 - a)
            return Prediction(eps, x0_from_eps(self.schedule, x_t, t, eps))

    x_T = torch.randn(20_000, 1, generator=_gen(81), dtype=F64)
    x = ddim(Exact(LIN), x_T, steps=200).x
    assert x.var().item() == pytest.approx(S2, rel=0.05)
    assert abs(x.mean().item()) < 0.02


# ----------------------------------------------------------------------------------------------
# 6. Denoisers
# ----------------------------------------------------------------------------------------------

class AsFloat32(nn.Module):
    """Run a float32 backbone on float64 inputs (TimeMLP cannot run in float64, see the report)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x.float(), t)


class RecordingNet(nn.Module):
    """Returns a preset output; records the timesteps the Denoiser passes to the backbone."""

    def __init__(self, out):
        super().__init__()
        self.out, self.seen = out, []

    def forward(self, x, t):
        self.seen.append(t.clone())
        return self.out


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
@pytest.mark.parametrize("per_sample_t", [True, False])
def test_denoiser_predictions_are_consistent(param, per_sample_t):
    torch.manual_seed(0)
    net = build_net("mlp", (3,), width=32, depth=1)
    den = Denoiser(AsFloat32(net), LIN, param)
    x = torch.randn(6, 3, generator=_gen(91), dtype=F64)
    t = torch.tensor([1, 2, 50, 500, 999, 1000]) if per_sample_t else torch.tensor(300)
    pred = den.predict(x, t)
    assert pred.eps.dtype == F64 and pred.x0.dtype == F64
    a = LIN.gather("alpha_bars", t, x)
    torch.testing.assert_close(a.sqrt() * pred.x0 + (1 - a).sqrt() * pred.eps, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(den.score(x, t), -pred.eps / (1 - a).sqrt(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(den.eps(x, t), pred.eps, rtol=0, atol=0)
    torch.testing.assert_close(den.x0(x, t), pred.x0, rtol=0, atol=0)
    # the backbone output is what training_target says it should regress, for the predicted (x0, eps)
    torch.testing.assert_close(training_target(param, LIN, pred.x0, t, pred.eps), den.raw(x, t),
                               rtol=1e-9, atol=1e-9)
    # the raw output is the float32 net evaluated at backbone time t - 1
    tt = t.expand(6) if t.ndim == 0 else t
    torch.testing.assert_close(den.raw(x, t), net(x.float(), tt - 1).double(), rtol=0, atol=0)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_denoiser_float32_mlp(param):
    torch.manual_seed(1)
    den = Denoiser(build_net("mlp", (3,), width=32, depth=1), LIN, param)
    x = torch.randn(5, 3, generator=_gen(92))
    t = torch.tensor([1, 10, 200, 700, 1000])
    pred = den.predict(x, t)
    a = LIN.gather("alpha_bars", t, x)
    torch.testing.assert_close(a.sqrt() * pred.x0 + (1 - a).sqrt() * pred.eps, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_true_target_recovers_x0_and_eps(param):
    """If the backbone outputs training_target(param, x0, t, eps) for x_t = q_sample(x0, t, eps),
    predict() returns (eps, x0) exactly; and the backbone is called with t - 1."""
    x0 = torch.randn(6, 2, 3, generator=_gen(93), dtype=F64)
    eps = torch.randn(6, 2, 3, generator=_gen(94), dtype=F64)
    for sched in (LIN, COS):
        for t in (torch.tensor([1, 2, 100, 500, 999, 1000]), torch.tensor(250)):
            xt = q_sample(sched, x0, t, eps)
            net = RecordingNet(training_target(param, sched, x0, t, eps))
            pred = Denoiser(net, sched, param).predict(xt, t)
            # at t = T of the cosine schedule sqrt(abar) ~ 5e-5, so x0 from eps loses ~1e-12
            torch.testing.assert_close(pred.x0, x0, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(pred.eps, eps, rtol=1e-9, atol=1e-9)
            expect = (t.expand(6) if t.ndim == 0 else t) - 1
            assert torch.equal(net.seen[-1], expect)


def test_v_target_formula_and_conversions():
    x0 = torch.randn(4, 3, generator=_gen(95), dtype=F64)
    eps = torch.randn(4, 3, generator=_gen(96), dtype=F64)
    t = torch.tensor([3, 30, 300, 1000])
    a = LIN.gather("alpha_bars", t, x0)
    torch.testing.assert_close(training_target("v", LIN, x0, t, eps), a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert training_target("eps", LIN, x0, t, eps) is eps and training_target("x0", LIN, x0, t, eps) is x0
    xt = q_sample(LIN, x0, t, eps)
    torch.testing.assert_close(x0_from_eps(LIN, xt, t, eps), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps_from_x0(LIN, xt, t, x0), eps, rtol=1e-10, atol=1e-10)


def test_unknown_parameterization_raises():
    with pytest.raises(DiffpropError, match=r"unknown parameterization 'score'.*eps, x0, v"):
        Denoiser(nn.Identity(), LIN, "score")
