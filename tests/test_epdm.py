"""The EPDM regularizer (000 Sec. 5, Eq. 15-17, Alg. 1): noise floor on the exact oracle, chain bookkeeping,
gradients, time weights, presets, and a training run through the CLI.

``python -m tests.test_epdm`` prints the detection sensitivity of the term to a biased oracle (not a test).
"""
import json
import math

import pytest
import torch

from diffprop.cli import main
from diffprop.config import load_config
from diffprop.denoisers import DenoiserBase, Prediction
from diffprop.errors import DiffpropError
from diffprop.losses import Objective
from diffprop.losses import epdm as epdm_module
from diffprop.losses.epdm import EPDM, time_weight_table
from diffprop.mixtures import grid_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.runs import build_denoiser
from diffprop.schedules import NoiseSchedule

MIX = grid_mixture()
SMALL_MLP = ["model.width=32", "model.depth=2", "model.time_dim=16", "diffusion.T=100"]


def sample_data(n, generator):
    return MIX.sample(n, generator).float()


def oracle_mmds(sets=(), eps_bias=0.0, batches=100, batch=256, seed=0) -> torch.Tensor:
    """The raw EPDM MMD^2 (``logs["mmd"]``) of the exact gmm-grid oracle, perturbed by ``eps_bias``, per batch."""
    reg = EPDM.from_config(load_config(None, list(sets)), sample_data=sample_data)
    oracle = OracleDenoiser(MIX, NoiseSchedule.from_config("linear", reg.T), eps_bias=eps_bias)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.tensor([float(reg(oracle, sample_data(batch, g), g).logs["mmd"]) for _ in range(batches)],
                            dtype=torch.float64)


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


# -- 1. the exact oracle is at the noise floor; a defect the term can see lifts it -------------------------------
def test_exact_oracle_is_at_the_noise_floor():
    """Paper preset: unbiased MMD, independent warm-start batch S_0', so E[MMD^2] = 0 for the exact oracle.

    (Warm-starting from the target batch itself correlates the two samples and pulls the mean below 0 by about
    3-8 standard errors, which this catches.)"""
    m, se = mean_se(oracle_mmds(batches=200))
    assert 0 < se < 1e-3
    assert abs(m) < 3 * se, (m, se)


def test_a_biased_oracle_and_a_random_start_are_above_the_floor():
    """The term only sees s - t <= L = 5 steps of drift from an exact warm start, and a median-bandwidth RBF
    (h ~ 3 on gmm-grid) sees little of a constant eps bias b: the drift is ~ beta_t b per step, the MMD^2
    ~ 1e-4 b^2. eps_bias = 0.5 is invisible at 100 x 256 (see ``detection_sensitivity``); b = 3 is clear."""
    m, se = mean_se(oracle_mmds(eps_bias=3.0, batches=400, seed=1))
    assert m > 5 * se, (m, se)
    # 000 Table 2's ablation: x_s ~ N(0, I) is far from q(x_s) for small s
    m, se = mean_se(oracle_mmds(['epdm.init="random"'], seed=2))
    assert m > 5 * se, (m, se)


# -- the chain's bookkeeping, seen through a spy denoiser ----------------------------------------------------------
class Spy(DenoiserBase):
    """Predicts x0 = 0 and records every (t, x_t) it is asked about."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.calls = schedule, []

    def predict(self, x_t, t, generator=None):
        self.calls.append((int(t), x_t))
        abar = self.schedule.gather("alpha_bars", t, x_t)
        return Prediction(x_t / (1 - abar).sqrt(), torch.zeros_like(x_t))


@pytest.fixture
def spy_mmd(monkeypatch):
    """Replace the MMD by a recorder of its two samples."""
    seen = []

    def fake(x, y, kernel, bandwidth, estimator):
        seen.append((x, y, kernel, bandwidth, estimator))
        return x.sum() * 0.0

    monkeypatch.setattr(epdm_module, "mmd", fake)
    return seen


def _epdm(*sets, T=20, schedule="cosine", sample=None):
    cfg = load_config(None, [f"diffusion.T={T}", f'diffusion.schedule="{schedule}"', *sets])
    return EPDM.from_config(cfg, sample_data=sample), Spy(NoiseSchedule.from_config(schedule, T))


@pytest.mark.parametrize("var_type", ["beta", "beta_tilde"])
def test_chain_runs_from_s_down_to_t_with_warm_start_and_targets_at_the_right_steps(spy_mmd, var_type):
    """x0 = 0 on both batches, so the spy (x0_hat = 0) is the exact denoiser of that data and every state is
    centred noise: x_s and x_t^forw of std sqrt(1 - abar), and the chain's x~_t of the std that Ho et al.'s
    reverse step gives, which for sigma^2 = beta_tilde is sqrt(1 - abar_t) again. On a 20-step cosine schedule
    an off-by-one in s, t or a step changes some of these by far more than the 2 % tolerance."""
    drawn = []

    def zeros(n, generator):
        drawn.append(n)
        return torch.zeros(n, 2)

    reg, spy = _epdm(f'diffusion.var_type="{var_type}"', sample=zeros)
    sc = spy.schedule
    x0 = torch.zeros(8192, 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        spy.calls.clear()
        term = reg(spy, x0, g)
        t, s = term.logs["t"], term.logs["s"]
        assert [u for u, _ in spy.calls] == list(range(s, t, -1))  # 000 Eq. 17, k = s..t+1
        x_s, (x_t, x_forw, *_) = spy.calls[0][1], spy_mmd[-1]
        assert x_s.shape == x_t.shape == x_forw.shape == (8192, 2)
        var = 1 - sc.alpha_bars[s]  # 000 Eq. 16
        assert x_s.std() / var.sqrt() == pytest.approx(1, abs=0.02)
        assert x_forw.std() / (1 - sc.alpha_bars[t]).sqrt() == pytest.approx(1, abs=0.02)
        for u in range(s, t, -1):  # x_{u-1} = c_u x_u + sigma_u z (Ho et al. Eq. 7 with x0_hat = 0)
            c = sc.alphas[u].sqrt() * (1 - sc.alpha_bars[u - 1]) / (1 - sc.alpha_bars[u])
            var = c**2 * var + (sc.betas if var_type == "beta" else sc.betas_tilde)[u]
        if var_type == "beta_tilde":
            assert var.item() == pytest.approx((1 - sc.alpha_bars[t]).item(), rel=1e-9)
        assert x_t.std() / var.sqrt() == pytest.approx(1, abs=0.02)
    assert drawn == [8192] * 25  # one independent S_0' of the batch's size per call


def test_timestep_pairs_cover_their_ranges(spy_mmd):
    reg, spy = _epdm("epdm.L=3", sample=sample_data)
    g = torch.Generator().manual_seed(1)
    pairs = {(term.logs["t"], term.logs["s"]) for term in (reg(spy, sample_data(8, g), g) for _ in range(600))}
    ts, gaps = {t for t, _ in pairs}, {s - t for t, s in pairs}
    assert ts == set(range(1, 20)) and gaps == {1, 2, 3}
    assert all(s <= 20 for _, s in pairs) and (19, 20) in pairs


def test_half_split_random_init_and_no_sample_data(spy_mmd):
    called = []
    reg, spy = _epdm('epdm.preset="official"', sample=lambda n, g: called.append(n))
    x0 = torch.arange(16.0).reshape(8, 2)
    g = torch.Generator().manual_seed(0)
    reg(spy, x0, g)
    x_t, x_forw, kernel, bandwidth, estimator = spy_mmd[-1]
    assert x_t.shape == x_forw.shape == (4, 2) and not called  # halves, no extra batch
    assert (kernel, estimator) == ("rbf-mix", "biased") and isinstance(bandwidth, float)
    # paper preset without sample_data falls back to halves too
    reg, spy = _epdm()
    reg(spy, x0, g)
    assert spy_mmd[-1][0].shape == (4, 2)
    with pytest.raises(DiffpropError, match="at least 4"):
        reg(spy, x0[:3], g)
    # random init: x_s ~ N(0, I) whatever s is, no batch drawn
    reg, spy = _epdm('epdm.init="random"', sample=lambda n, g: called.append(n))
    for _ in range(5):
        spy.calls.clear()
        reg(spy, torch.full((4096, 2), 5.0), g)
        assert spy.calls[0][1].std() == pytest.approx(1, abs=0.03) and spy.calls[0][1].mean().abs() < 0.05
    assert not called


def test_a_mismatched_schedule_is_refused():
    reg = EPDM.from_config(load_config(None, ["diffusion.T=50"]))
    with pytest.raises(DiffpropError, match="T = 50.*T = 20"):
        reg(Spy(NoiseSchedule.from_config("linear", 20)), torch.zeros(8, 2), torch.Generator())


# -- 3. gradients ---------------------------------------------------------------------------------------------------
def _gradients(cfg, x0, seed):
    torch.manual_seed(0)
    den = build_denoiser(cfg, (2,))
    term = EPDM.from_config(cfg, sample_data=sample_data)(den, x0, torch.Generator().manual_seed(seed))
    term.value.backward()
    return term, {n: p.grad for n, p in den.named_parameters()}


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_gradients_reach_every_parameter_in_both_modes(preset):
    x0 = sample_data(128, torch.Generator().manual_seed(0))
    sets = [*SMALL_MLP, f'epdm.preset="{preset}"']
    seed = 0
    while (lambda logs: logs["s"] - logs["t"])(_gradients(load_config(None, sets), x0, seed)[0].logs) < 2:
        seed += 1  # a chain of at least 2 steps, so that "last" and "all" differ
    (term_all, g_all), (term_last, g_last) = (_gradients(load_config(None, [*sets, f"epdm.grad={mode}"]), x0, seed)
                                              for mode in ("all", "last"))
    assert term_all.value.item() == term_last.value.item()  # same draws, same value; only the gradient differs
    for grads in (g_all, g_last):
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        assert sum(bool(g.abs().sum() > 0) for g in grads.values()) >= 0.9 * len(grads)
    diff = max(float((g_all[n] - g_last[n]).abs().max() / (g_all[n].abs().max() + 1e-30)) for n in g_all)
    assert diff > 1e-3


def test_value_is_w_t_times_the_mmd_and_the_objective_adds_weight_times_it():
    cfg = load_config(None, [*SMALL_MLP, 'objective.regularizers=["epdm"]', "epdm.rho=0.05"])
    torch.manual_seed(0)
    den = build_denoiser(cfg, (2,))
    reg = EPDM.from_config(cfg, sample_data=sample_data)
    x0 = sample_data(64, torch.Generator().manual_seed(0))
    term = reg(den, x0, torch.Generator().manual_seed(3))
    assert term.logs["w_t"] == pytest.approx(float(reg.w[term.logs["t"] - 1]))
    assert term.value.item() == pytest.approx(term.logs["w_t"] * term.logs["mmd"].item(), rel=1e-12)
    assert term.logs["w_t"] != 1 and term.logs["bandwidth"] > 0
    total = Objective.from_config(cfg, sample_data=sample_data)(den, x0, torch.Generator().manual_seed(3))
    assert {"denoising", "epdm", "epdm.mmd", "epdm.t", "epdm.s", "epdm.w_t", "epdm.bandwidth"} <= total.logs.keys()
    assert total.value.item() == pytest.approx(total.logs["denoising"].item() + 0.2 * total.logs["epdm"].item())


# -- 4. time weights -------------------------------------------------------------------------------------------------
def test_time_weights():
    T, rho = 1000, 0.003
    t = torch.arange(1, T + 1, dtype=torch.float64)
    closed = T * torch.exp(rho * (T - t)) * math.expm1(rho) / math.expm1(rho * T)  # T w_t, 000 Eq. 15
    w = time_weight_table("T_wt", rho, T)
    assert torch.allclose(w, closed, rtol=1e-12) and w.mean().item() == pytest.approx(1, rel=1e-12)
    assert time_weight_table("literal", rho, T).sum().item() == pytest.approx(1, rel=1e-12)
    assert torch.equal(time_weight_table("uniform", rho, T), torch.ones(T, dtype=torch.float64))
    assert (w[:-1] > w[1:]).all()  # w_t grows as t decreases
    assert w[0] / w[-1] == pytest.approx(math.exp(rho * (T - 1)))
    big = time_weight_table("T_wt", 5.0, T)  # exp(5 * 999) overflows; the normalised form must not
    assert torch.isfinite(big).all() and big.mean().item() == pytest.approx(1)


# -- 5. presets and overrides ----------------------------------------------------------------------------------------
PAPER = dict(weight=0.2, L=5, rho=0.003, time_weights="T_wt", init="warm", kernel="rbf", bandwidth="median",
             estimator="unbiased", grad="all", warm_batch="second", T=1000, var_type="beta")
OFFICIAL = dict(PAPER, weight=1.0, time_weights="uniform", kernel="rbf-mix", bandwidth="mean", estimator="biased",
                warm_batch="half")


def _attrs(*sets):
    reg = EPDM.from_config(load_config(None, list(sets)))
    return {k: getattr(reg, k) for k in PAPER}


def test_presets_resolve_as_documented():
    assert _attrs() == PAPER
    assert _attrs('epdm.preset="official"') == OFFICIAL


def test_explicit_values_override_the_preset():
    assert _attrs('epdm.preset="official"', "epdm.L=3") == dict(OFFICIAL, L=3)
    every = ["epdm.weight=0.5", "epdm.L=7", "epdm.rho=0.01", 'epdm.time_weights="literal"', 'epdm.init="random"',
             'epdm.kernel="laplace@0.3"', 'epdm.estimator="biased"', 'epdm.grad="last"', 'epdm.warm_batch="half"',
             "diffusion.T=200", 'diffusion.var_type="beta_tilde"']
    assert _attrs(*every) == dict(weight=0.5, L=7, rho=0.01, time_weights="literal", init="random",
                                  kernel="laplace", bandwidth=0.3, estimator="biased", grad="last",
                                  warm_batch="half", T=200, var_type="beta_tilde")
    assert _attrs('epdm.preset="official"', "epdm.grad=last")["grad"] == "last"  # bare string through --set
    for spec, expected in [("rbf@0.1", ("rbf", 0.1)), ("rbf-mix", ("rbf-mix", "median")),
                           ("rbf-mix@mean", ("rbf-mix", "mean")), ("imq@median", ("imq", "median"))]:
        a = _attrs(f'epdm.kernel="{spec}"')
        assert (a["kernel"], a["bandwidth"]) == expected


@pytest.mark.parametrize("sets, message", [
    (['epdm.kernel="gauss"'], "config: epdm.kernel: unknown kernel 'gauss'"),
    (['epdm.kernel="rbf@-1"'], "config: epdm.kernel: .*must be > 0"),
    (['epdm.kernel="rbf@wide"'], "config: epdm.kernel: .*not a number"),
    (["diffusion.T=1"], "diffusion.T >= 2"),
])
def test_bad_settings_are_refused(sets, message):
    with pytest.raises(DiffpropError, match=message):
        EPDM.from_config(load_config(None, sets))


# -- 6. end to end -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["paper", "official"])
def test_train_with_epdm_through_the_cli(tmp_path, capsys, preset):
    cfg = tmp_path / "epdm.toml"
    cfg.write_text("[train]\nsteps = 100\nbatch_size = 64\nlog_every = 20\ncheckpoint_every = 100\n"
                   "warmup_steps = 5\n[data]\nnum_samples = 1024\n")
    sets = [*SMALL_MLP, 'objective.regularizers=["epdm"]', f"epdm.preset={preset}"]
    argv = ["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet", *[a for s in sets for a in ("--set", s)]]
    code = main(argv)
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and rows[-1]["step"] == 100
    for row in rows:
        assert {"epdm", "epdm.mmd", "epdm.t", "epdm.s"} <= row.keys()
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
        assert 1 <= row["epdm.s"] - row["epdm.t"] <= 5


# -- 2. detection sensitivity (a report, not a test): python -m tests.test_epdm ---------------------------------------
BIASES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0)


def detection_sensitivity(seeds=(0, 1, 2), batches=100, batch=256) -> None:
    """Per preset and seed: the 100-batch mean of the MMD^2 of the oracle with ``eps_bias = b``, its z-score
    against 0 (paper, unbiased) or against the exact oracle's mean on independent draws (both presets), and the
    paired z of the per-batch difference from the exact oracle on the same draws (common random numbers)."""
    for preset in ("paper", "official"):
        sets = [f'epdm.preset="{preset}"']
        for seed in seeds:
            exact = oracle_mmds(sets, 0.0, batches, batch, seed=1000 + seed)  # independent of the biased runs
            same = oracle_mmds(sets, 0.0, batches, batch, seed=seed)
            e_m, e_se = mean_se(exact)
            print(f"{preset} seed {seed}: exact oracle {e_m:.3e} +- {e_se:.1e}")
            first = {}
            for b in BIASES:
                v = oracle_mmds(sets, b, batches, batch, seed=seed)
                m, se = mean_se(v)
                z = {"vs 0": m / se, "vs exact": (m - e_m) / math.hypot(se, e_se),
                     "paired": float((v - same).mean() / ((v - same).std() / math.sqrt(batches)))}
                for k, zk in z.items():
                    if zk > 3:
                        first.setdefault(k, b)
                print(f"  eps_bias {b:<5} mean {m:.3e} +- {se:.1e}  " + "  ".join(f"z {k} {zk:6.1f}"
                                                                                  for k, zk in z.items()))
            print(f"  smallest eps_bias with z > 3: {first}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    detection_sensitivity()
