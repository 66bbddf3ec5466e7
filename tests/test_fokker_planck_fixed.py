"""FP-Diffusion's fixed form (``[fokker_planck] form = "fixed"``): the score-FPE residual in denoising-loss units.

On the exact oracle it sits at its floor; an eps-bias of 0.1 moves it to ``b^2``-scale at every t (the literal
form spans six decades between t = 2 and t = 999); where the data look Gaussian it equals its closed form; its
gradient on a briefly trained DDPM is within a stated factor of the denoising loss's, where the literal form's
swamps it. The literal form stays the default.
"""
import math

import pytest
import torch

from diffprop.config import load_config
from diffprop.errors import DiffpropError
from diffprop.losses import DenoisingLoss
from diffprop.losses.fokker_planck import FokkerPlanck
from diffprop.mixtures import grid_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.process import q_sample
from diffprop.runs import load_run
from diffprop.schedules import NoiseSchedule
from diffprop.training import Trainer

MIX = grid_mixture()
SCHEDULE = NoiseSchedule.from_config("linear", 1000)


def _noised(t0: int, n: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = MIX.sample(n, g)
    t = torch.full((n,), t0)
    return q_sample(SCHEDULE, x0, t, torch.randn(x0.shape, generator=g, dtype=x0.dtype)), t


def _term_means(reg, eps_bias: float, batches: int = 20, seed: int = 0):
    oracle = OracleDenoiser(MIX, SCHEDULE, eps_bias=eps_bias)
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor([float(reg(oracle, MIX.sample(256, g), g).logs["residual"]) for _ in range(batches)])
    return v.mean().item(), v.std().item() / math.sqrt(batches)


def test_literal_is_the_default_with_todays_weights():
    reg = FokkerPlanck.from_config(load_config(None, []))
    assert (reg.form, reg.weight, reg.alpha, reg.beta, reg.t_min) == ("literal", 0.005, 0.15, 0.01, None)
    fixed = FokkerPlanck.from_config(load_config(None, ["fokker_planck.form=fixed"]))
    assert (fixed.weight, fixed.beta) == (1.0, 0.0)
    set_beta = load_config(None, ["fokker_planck.form=fixed", "fokker_planck.beta=0.2"])
    assert FokkerPlanck.from_config(set_beta).beta == 0.2


def test_fixed_term_of_the_exact_oracle_is_at_its_floor_and_detects_eps_bias_0_1():
    reg = FokkerPlanck(form="fixed")
    exact = _term_means(reg, 0.0)
    biased = _term_means(reg, 0.1, seed=1)
    assert exact[0] < 1e-5, exact  # the stencil's O(dt^2) error (measured ~2e-6 at t = 30, below elsewhere)
    assert 2e-3 < biased[0] < 3e-2, biased  # b^2 = 1e-2 scale
    assert (biased[0] - exact[0]) / math.hypot(exact[1], biased[1]) > 10


def test_fixed_residual_of_a_bias_is_b2_scale_at_every_t_where_the_literal_spans_decades():
    oracle = OracleDenoiser(MIX, SCHEDULE, eps_bias=0.1)
    fixed, literal = {}, {}
    for t0 in (2, 999):
        x, t = _noised(t0)
        fixed[t0] = float(FokkerPlanck(form="fixed").residual(oracle, x, t)[0].mean().detach())
        literal[t0] = float(FokkerPlanck().residual(oracle, x, t)[0].mean().detach())
    assert all(0.005 < v < 0.02 for v in fixed.values()), fixed
    assert literal[2] / literal[999] > 1e4, literal  # measured 2.7e5 vs 10: the sigma_t^-6 growth


@pytest.mark.parametrize("t0", [600, 999])
def test_fixed_residual_of_a_bias_is_its_closed_form_where_the_data_look_gaussian(t0):
    """With ``grad s = -I / v`` (one Gaussian of variance ``v = abar Var(x0) + sigma^2``) a constant eps-bias ``b``
    gives ``(2 sigma^3 / g^2) err = b (abar + sigma^2 - 2 sigma^2 / v)`` (module docstring of
    diffprop.losses.fokker_planck); at t >= 600 the grid's modes (spacing sqrt(abar) <= 0.16) have merged."""
    b = 0.1
    x, t = _noised(t0, n=2048)
    res = float(FokkerPlanck(form="fixed").residual(OracleDenoiser(MIX, SCHEDULE, eps_bias=b), x, t)[0].mean().detach())
    abar = float(SCHEDULE.alpha_bars[t0])
    var0 = float((MIX.means.pow(2).mean(0) - MIX.means.mean(0) ** 2).mean() + MIX.stds[0] ** 2)  # 4.0025
    v = abar * var0 + 1 - abar
    expected = b**2 * (abar + (1 - abar) - 2 * (1 - abar) / v) ** 2
    assert res == pytest.approx(expected, rel=0.03), (res, expected)


def test_t_min_restricts_the_draws_and_is_checked():
    seen = []

    class Spy(FokkerPlanck):
        def residual(self, denoiser, x, t, generator=None):
            seen.append(t.clone())
            return super().residual(denoiser, x, t, generator)

    oracle, g = OracleDenoiser(MIX, SCHEDULE), torch.Generator().manual_seed(0)
    Spy(form="fixed", t_min=100)(oracle, MIX.sample(512, g), g)
    assert int(seen[0].min()) >= 100 and int(seen[0].max()) <= 999
    with pytest.raises(DiffpropError, match=r"fokker_planck.t_min \(1000\) must be <= 999"):
        FokkerPlanck(t_min=1000)(oracle, MIX.sample(8, g), g)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DDPM trained 300 steps on gmm-grid (T = 1000, an MLP of width 64, depth 2)."""
    out = tmp_path_factory.mktemp("fp") / "run"
    cfg = load_config(None, ["train.steps=300", "train.lr=2e-3", "train.lr_schedule=cosine", "model.width=64",
                             "model.depth=2", "train.batch_size=128", "train.checkpoint_every=300",
                             "data.num_samples=4096"])
    Trainer(cfg, out, progress=False).train()
    return load_run(out).denoiser


def _grad_norm(den, loss) -> float:
    den.zero_grad()
    loss.backward()
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in den.parameters() if p.grad is not None))


def test_gradient_of_the_fixed_term_is_comparable_to_the_denoising_losss(trained):
    """Gradient norms at one batch of 256 (mean of 3 draws), each term at its preset weight (literal 0.005, fixed 1).
    Measured on this model: denoising 0.32, literal 32 (98 x), fixed 2.3 (7 x); on a DDPM trained 2000 steps (MLP
    128 x 3): denoising 0.40, literal 61 (153 x), fixed 1.1 (2.8 x). What is left of the fixed term's gradient
    comes from large t, where its residual is the network's roughness in t rather than an eps error. Stated
    ranges: the literal term > 30 x the denoising gradient; the fixed one within 0.5..20 x and 5 x below the
    literal's."""
    x0 = MIX.sample(256, torch.Generator().manual_seed(0)).float()
    fixed = FokkerPlanck(form="fixed")
    norms = {}
    for name, fn in {"denoising": lambda g: DenoisingLoss()(trained, x0, g).mean(),
                     "literal": lambda g: FokkerPlanck()(trained, x0, g).value * 0.005,
                     "fixed": lambda g: fixed(trained, x0, g).value * fixed.weight}.items():
        norms[name] = sum(_grad_norm(trained, fn(torch.Generator().manual_seed(r))) for r in range(3)) / 3
    print("gradient norms:", norms)  # logged with -s
    ratio = {k: norms[k] / norms["denoising"] for k in ("literal", "fixed")}
    assert ratio["literal"] > 30, ratio
    assert 0.5 < ratio["fixed"] < 20 and ratio["literal"] > 5 * ratio["fixed"], ratio
