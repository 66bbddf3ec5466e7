"""The chain-started cumulative regularizer (diffprop.losses.chain_mmd) and the trainer's gradient-norm log."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from diffprop.checkpoint import list_checkpoints
from diffprop.config import load_config
from diffprop.errors import DiffpropError
from diffprop.losses.chain_mmd import ChainMMD, importance_weights, multiscale_mmd, visit_probabilities
from diffprop.mixtures import grid_mixture
from diffprop.oracle import OracleDenoiser
from diffprop.process import q_sample
from diffprop.runs import build_denoiser
from diffprop.schedules import NoiseSchedule
from diffprop.training import Trainer

from .conftest import train_error

MIX = grid_mixture()
T, N = 100, 256
SCHED = NoiseSchedule.from_config("linear", T)


def chain_visits(eps_bias: float, calls: int, seed: int = 0) -> torch.Tensor:
    """``(t, raw MMD^2)`` of each call of the regularizer on the gmm-grid oracle with ``eps_bias``."""
    reg, oracle = ChainMMD(T=T, weight=1.0), OracleDenoiser(MIX, SCHED, eps_bias=eps_bias)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rows = [reg(oracle, MIX.sample(N, g).float(), g).logs for _ in range(calls)]
    return torch.tensor([(r["t"], float(r["mmd"])) for r in rows], dtype=torch.float64)


def floor(ts, seed: int = 1) -> torch.Tensor:
    """The noise floor: the same statistic between two independent samples of q_t, at each t of ``ts``."""
    g, out = torch.Generator().manual_seed(seed), []
    for t in ts:
        a, b = (q_sample(SCHED, MIX.sample(N, g).float(), int(t), torch.randn(N, 2, generator=g)) for _ in "ab")
        out.append(float(multiscale_mmd(a, b, 4)[0]))
    return torch.tensor(out, dtype=torch.float64)


def test_exact_oracle_sits_at_the_floor_and_eps_bias_lifts_it_far_more_than_a_warm_start():
    """Two traversals of the buffer (T = 100, L = 5: 20 calls each); visits with t <= 20, where a trained model's
    error lives. The exact oracle's chain is q_t itself: its MMD^2 is the floor's (mean 0, unbiased). With eps_bias
    0.1 the chain drifts ~ 0.1 sqrt(1 - abar) per step and accumulates it over the whole chain; the same L = 5 steps
    from a warm start x_{t+5} ~ q (000's EPDM, the same kernel) see only five steps of it."""
    exact, biased = chain_visits(0.0, 40), chain_visits(0.1, 40)
    small = exact[:, 0] <= 20
    assert int(small.sum()) >= 6
    fl = floor(exact[small, 0])
    band = 4 * float(fl.std()) / math.sqrt(len(fl))
    assert abs(float(exact[small, 1].mean()) - float(fl.mean())) < band, (exact[small, 1], fl)
    chain = float(biased[biased[:, 0] <= 20, 1].mean())
    assert chain > 5 * float(fl.std()), (chain, fl.std())  # 8.5 x measured; ~24 standard errors of the mean

    # the warm start: the same regularizer with its buffer set to x_{t+5} ~ q(x_{t+5})
    reg, oracle = ChainMMD(T=T, weight=1.0), OracleDenoiser(MIX, SCHED, eps_bias=0.1)
    g, warm = torch.Generator().manual_seed(2), []
    with torch.no_grad():
        for t in biased[biased[:, 0] <= 20, 0].tolist():
            s = int(t) + 5
            reg.load_state_dict({"x": q_sample(SCHED, MIX.sample(N, g).float(), s, torch.randn(N, 2, generator=g)),
                                 "s": torch.tensor([s])})
            warm.append(float(reg(oracle, MIX.sample(N, g).float(), g).logs["mmd"]))
    assert chain > 5 * max(sum(warm) / len(warm), float(fl.std())), (chain, warm)


def test_the_buffer_walks_down_from_x_T_and_restarts():
    """First stride U{1..L} from T, then L each, the last cut short at t = 1, then fresh x_T; gradients reach the
    network only through the last step with grad = "last" (the stored particles are detached)."""
    cfg = load_config(None, ["diffusion.T=20", "model.width=16", "model.depth=1", "model.time_dim=8"])
    torch.manual_seed(0)
    den = build_denoiser(cfg, (2,))
    reg = ChainMMD.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    ts, refreshed = [], []
    for _ in range(12):
        term = reg(den, MIX.sample(16, g).float(), g)
        ts.append(term.logs["t"])
        refreshed.append(term.logs["refreshed"])
        assert reg.x.requires_grad is False and reg.s == term.logs["t"]
    first = refreshed.index(1, 1)
    walk = ts[:first]
    assert 15 <= walk[0] <= 19 and walk[-1] == 1 and refreshed[0] == 1 and sum(refreshed[:first]) == 1
    assert all(a - b == 5 for a, b in zip(walk, walk[1:-1])) and 1 <= walk[-2] - 1 <= 5
    term = reg(den, MIX.sample(16, g).float(), g)
    term.value.backward()
    assert all(p.grad is not None for p in den.net.parameters())


def test_importance_weights_give_the_target_law():
    """Mean over a traversal's visits of w(t) f(t) is sum_t p(t) f(t), for p ∝ 1/t and uniform."""
    pi = visit_probabilities(T, 5)
    assert float(pi[0]) == 1.0 and torch.allclose(pi[1:], torch.full((T - 2,), 0.2, dtype=torch.float64))
    f = torch.rand(T - 1, dtype=torch.float64)
    for kind, p in (("log_uniform", 1 / torch.arange(1, T, dtype=torch.float64)), ("uniform", torch.ones(T - 1))):
        w = importance_weights(kind, T, 5)
        assert math.isclose(float((pi * w * f).sum() / pi.sum()), float((p * f).sum() / p.sum()), rel_tol=1e-12)
    w = importance_weights("log_uniform", T, 5)
    assert float(w[1]) > float(w[10]) > float(w[-1])  # toward small t


TRAIN = ["model.width=32", "model.depth=2", "model.time_dim=16", "data.num_samples=512", "train.batch_size=32",
         "train.warmup_steps=2", "diffusion.T=20", 'objective.regularizers=["chain_mmd"]', "chain_mmd.weight=0.5"]


def _train(overrides, out, resume=None):
    t = Trainer(load_config(None, overrides), out, resume=resume, progress=False)
    t.train()
    return t


def test_resume_with_the_buffer_is_bit_exact(tmp_path):
    ov = TRAIN + ["train.steps=8", "train.checkpoint_every=3", "train.log_every=4"]
    one = _train(ov, tmp_path / "one")
    _train(ov[:-3] + ["train.steps=3", "train.checkpoint_every=3", "train.log_every=4"], tmp_path / "two")
    two = _train(ov, tmp_path / "two", resume="latest")
    a, b = list_checkpoints(tmp_path / "one")[-1], list_checkpoints(tmp_path / "two")[-1]
    assert a.name == b.name == "step_00000008"
    for part in ("model", "optimizer", "rng", "regularizers"):
        ta, tb = load_file(a / f"{part}.safetensors"), load_file(b / f"{part}.safetensors")
        assert ta.keys() == tb.keys() and len(ta) > 0
        assert all(torch.equal(ta[k], tb[k]) for k in ta), part
    buf = load_file(a / "regularizers.safetensors")
    assert buf["chain_mmd.x"].shape == (1, 8, 2) and torch.equal(buf["chain_mmd.x"][0], one.objective.state_dict()
                                                                   ["chain_mmd.x"])
    assert torch.equal(one.objective.state_dict()["chain_mmd.x"], two.objective.state_dict()["chain_mmd.x"])


def test_gradient_norms_are_logged_on_log_steps_only_and_change_nothing(tmp_path):
    ov = TRAIN + ["train.steps=4", "train.checkpoint_every=4", "train.log_every=2"]
    _train(ov, tmp_path / "plain")
    _train(ov + ["train.log_grad_norms=true"], tmp_path / "norms")
    rows = [json.loads(x) for x in (tmp_path / "norms/log.jsonl").open()]
    plain = [json.loads(x) for x in (tmp_path / "plain/log.jsonl").open()]
    assert [r["step"] for r in rows] == [2, 4]
    for r, p in zip(rows, plain):
        assert {"grad_norm.denoising", "grad_norm.chain_mmd"} <= r.keys()
        assert r["grad_norm.denoising"] > 0 and r["grad_norm.chain_mmd"] > 0
        assert not any(k.startswith("grad_norm.") for k in p)
        assert r["loss"] == p["loss"] and r["grad_norm"] == p["grad_norm"]
    a = load_file(list_checkpoints(tmp_path / "plain")[-1] / "model.safetensors")
    b = load_file(list_checkpoints(tmp_path / "norms")[-1] / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sets, message", [
    (["chain_mmd.grad=some"], "config: chain_mmd.grad"),
    (["chain_mmd.time_weights=flat"], "config: chain_mmd.time_weights"),
    (["chain_mmd.particles=1"], "config: chain_mmd.particles"),
    (["chain_mmd.L=20"], "chain_mmd: L must be in 1..T-1 = 1..19, got 20"),
    (['diffusion.process="vp-sde"'], "chain_mmd"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, sets, message):
    err = train_error(tmp_path, capsys, TRAIN + ["train.steps=1"] + sets)
    assert message in err, err


def test_a_buffer_that_does_not_fit_is_refused():
    reg = ChainMMD(T=T, weight=1.0, particles=8)
    with pytest.raises(DiffpropError, match="chain_mmd: the checkpoint's buffer does not fit"):
        reg.load_state_dict({"x": torch.zeros(4, 2), "s": torch.tensor([3])})
    with pytest.raises(DiffpropError, match="does not fit"):
        reg.load_state_dict({"x": torch.zeros(8, 2), "s": torch.tensor([T + 1])})
