"""Denoising at the chain's own states (diffprop.losses.chain_denoise): the empirical posterior mean against its
closed form, the exact oracle at the reference's noise floor, an eps bias seen at its size, and training with it."""
import json
import math

import pytest
import torch

from diffprop.cli import main
from diffprop.config import load_config
from diffprop.data.images import load_digits
from diffprop.losses.chain_denoise import ChainDenoise, effective_sample_size, posterior_mean, posterior_weights
from diffprop.mixtures import grid_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.schedules import NoiseSchedule

from .conftest import train_error

MIX = grid_mixture()
T, N = 100, 256
SCHED = NoiseSchedule.from_config("linear", T)


def test_posterior_mean_of_a_gaussian_reference_matches_the_closed_form():
    """x_0 ~ N(mu, s^2 I), x_t = a x_0 + sigma eps: E[x_0 | x_t] = mu + a s^2 / (a^2 s^2 + sigma^2) (x_t - a mu)."""
    g = torch.Generator().manual_seed(0)
    mu, s, a2, s2 = torch.tensor([1.0, -2.0]), 0.5, 0.64, 0.36
    ref = mu + s * torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    x_t = math.sqrt(a2) * mu + torch.randn(64, 2, generator=g, dtype=torch.float64)
    exact = mu + math.sqrt(a2) * s ** 2 / (a2 * s ** 2 + s2) * (x_t - math.sqrt(a2) * mu)
    assert torch.allclose(posterior_mean(x_t, a2, s2, ref), exact, atol=1e-2)
    # a single reference example is every x_t's posterior mean; float32 in, float32 out
    one = posterior_mean(x_t.float(), a2, s2, ref[:1].float())
    assert one.dtype == torch.float32 and torch.allclose(one, ref[:1].float().expand(64, 2))


def test_effective_sample_size_finds_where_the_empirical_target_memorises():
    """Kish's ESS is n for uniform weights and 1 for one example. For digits held out of the reference (64-D,
    1597 examples, T = 100 linear betas) the posterior weights sit on one training image at t = 5 (the target
    memorises) and spread over hundreds at t = 50 (measured medians 1.00 and 490)."""
    assert torch.allclose(effective_sample_size(torch.full((3, 8), 1 / 8)), torch.full((3,), 8.0))
    assert torch.allclose(effective_sample_size(torch.eye(4)), torch.ones(4))
    x, g = load_digits(None), torch.Generator().manual_seed(0)
    held, ref = x[:200], x[200:]
    ess = {}
    for t in (5, 50):
        a2 = float(SCHED.alpha_bars[t])
        x_t = math.sqrt(a2) * held + math.sqrt(1 - a2) * torch.randn(held.shape, generator=g)
        ess[t] = float(effective_sample_size(posterior_weights(x_t, a2, 1 - a2, ref)).median())
    assert ess[5] < 1.5 and ess[50] > 100, ess


class EpsOracle(OracleDenoiser):
    """The exact oracle read as an eps-prediction network (what the term regresses)."""

    def raw(self, x_t, t, generator=None):
        return self.predict(x_t, t).eps

    def target(self, x0, t, eps):
        return eps


def _mse(eps_bias: float, reference: int, calls: int = 40, seed: int = 0, min_ess: float = 1.0) -> torch.Tensor:
    """``(t, raw mse, kept)`` of each call on the gmm-grid oracle with ``eps_bias`` (two traversals of the
    buffer)."""
    data = lambda n, g: MIX.sample(n, g).float()  # noqa: E731
    reg = ChainDenoise(T=T, weight=1.0, reference=reference, min_ess=min_ess, sample_data=data)
    oracle, g = EpsOracle(MIX, SCHED, eps_bias=eps_bias), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rows = [reg(oracle, data(N, g), g).logs for _ in range(calls)]
    return torch.tensor([(r["t"], float(r["mse"]), r["kept"]) for r in rows], dtype=torch.float64)


def test_exact_oracle_sits_at_the_reference_floor_and_eps_bias_adds_its_square():
    """The exact oracle's chain is q_t and its eps the exact one: what is left is the finite reference's error,
    which falls with the reference's size (about 1 / M away from the smallest t, where it snaps). An eps bias of
    0.1 in every coordinate adds about 0.1^2 = 0.01 to the mean square at every t (plus what the chain's drift
    adds); the chain_mmd test measures the drift itself."""
    small, large = _mse(0.0, 1024), _mse(0.0, 16384)
    away = small[:, 0] >= 5
    assert float(large[away, 1].mean()) < float(small[away, 1].mean()) / 4, (small, large)  # 17x measured
    assert float(large[away, 1].mean()) < 2e-3
    biased = _mse(0.1, 16384)
    lift = float(biased[away, 1].mean() - large[away, 1].mean())
    assert 0.008 < lift < 0.013, lift  # 0.0101 measured


def test_min_ess_drops_the_states_whose_target_averages_too_few_examples():
    """With 64 reference examples over 49 modes the target near t = 1 is one example; min_ess = 4 drops those
    states (kept 0, value 0) and keeps those at large t; min_ess = 1 keeps everything, as before the option."""
    every, gated = _mse(0.0, 64, calls=20), _mse(0.0, 64, calls=20, min_ess=4.0)
    assert bool((every[:, 2] == 1).all())
    assert torch.equal(every[:, 0], gated[:, 0])  # the same chain visits
    small, large = gated[:, 0] <= 5, gated[:, 0] >= 50
    assert small.any() and large.any()
    assert float(gated[small, 2].max()) < 0.1 and float(gated[large, 2].min()) > 0.9, gated
    assert bool((gated[gated[:, 2] == 0, 1] == 0).all())


TRAIN = ["model.width=32", "model.depth=2", "model.time_dim=16", "data.num_samples=512", "train.batch_size=32",
         "train.warmup_steps=2", "diffusion.T=20", 'objective.regularizers=["chain_denoise"]',
         "chain_denoise.reference=64", "train.steps=4", "train.checkpoint_every=4", "train.log_every=2",
         "train.log_grad_norms=true"]


def test_trains_with_its_gradient_logged(tmp_path):
    (tmp_path / "c.toml").write_text("")
    argv = ["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--quiet"]
    assert main([*argv, *[a for s in TRAIN for a in ("--set", s)]]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run/log.jsonl").open()]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert r["grad_norm.chain_denoise"] > 0 and r["grad_norm.denoising"] > 0 and r["chain_denoise.mse"] >= 0


@pytest.mark.parametrize("sets, message", [
    (["chain_denoise.reference=0"], "config: chain_denoise.reference"),
    (["chain_denoise.time_weights=flat"], "config: chain_denoise.time_weights"),
    (["chain_denoise.L=20"], "chain_denoise: L must be in 1..T-1 = 1..19, got 20"),
    (["chain_denoise.min_ess=0.5"], "config: chain_denoise.min_ess"),
    (["chain_denoise.min_ess=100"], "chain_denoise: min_ess must lie in [1, reference = 64], got 100.0"),
    (['diffusion.process="vp-sde"'], "chain_denoise"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, sets, message):
    err = train_error(tmp_path, capsys, TRAIN + sets)
    assert message in err, err


def test_from_config_reads_its_section():
    cfg = load_config(None, ["diffusion.T=50", "chain_denoise.L=3", "chain_denoise.reference=100",
                             "chain_denoise.min_ess=4", 'diffusion.var_type="beta_tilde"'])
    reg = ChainDenoise.from_config(cfg)
    assert (reg.T, reg.L, reg.reference, reg.min_ess, reg.var_type, reg.sample_data) == \
        (50, 3, 100, 4.0, "beta_tilde", None)
