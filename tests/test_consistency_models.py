"""Consistency models (Song et al. 2023): the boundary condition, the CD loss at its floor for the exact consistency
function of the oracle's probability-flow ODE, CD training on a 2-D mixture, CT and the consistency sampler through the
CLI, bit-exact resume with the target network, and the error messages."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffprop.cli import main
from diffprop.config import load_config
from diffprop.denoisers import DenoiserBase, ProcessDenoiser, eps_x0
from diffprop.losses.consistency_models import ConsistencyDistillation, num_points, target_decay
from diffprop.mixtures import ring_mixture
from diffprop.nets import build_net
from diffprop.oracle import OracleDenoiser
from diffprop.processes import EDM, VESDE, VPSDE
from diffprop.samplers import heun_step, sample
from diffprop.training import Trainer

from .conftest import TINY

CM = ["diffusion.process=edm", "diffusion.parameterization=cm"]


def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


@pytest.mark.parametrize("process", [EDM(sigma_data=2.0), VESDE(sigma_max=10.0), VPSDE()])
def test_boundary_condition_is_exact(process):
    torch.manual_seed(0)
    cm = ProcessDenoiser(build_net("mlp", (2,), width=16, depth=1, time_dim=8), process, "cm", sigma_data=2.0)
    x = torch.randn(64, 2)
    alpha = float(process.alpha2(torch.tensor(process.t_min, dtype=torch.float64)).sqrt())
    for t in (process.t_min, torch.full((64,), process.t_min, dtype=torch.float64)):
        f = cm.predict(x, t).x0
        assert torch.equal(f, x) if alpha == 1 else torch.allclose(f, x / alpha, rtol=1e-6)
    assert not torch.allclose(cm.predict(x, process.t_max).x0, x)  # the network matters away from t_min


class ExactConsistency(DenoiserBase):
    """The consistency function of the oracle's probability-flow ODE on a known grid: every x is carried from its time
    to t_min by ``sub`` Heun steps per grid interval (samples join as the walk passes their start time)."""

    schedule = None

    def __init__(self, oracle, grid, sub=8):
        super().__init__()
        self.oracle, self.grid, self.sub = oracle, grid.flip(0), sub

    @property
    def process(self):
        return self.oracle.process

    def predict(self, x, t, generator=None):
        t = torch.as_tensor(t, dtype=torch.float64).expand(len(x))
        y = x.clone()
        for hi, lo in zip(self.grid[:-1].tolist(), self.grid[1:].tolist()):
            m = t >= hi * (1 - 1e-12)
            if m.any():
                r = torch.linspace(hi ** (1 / 7), lo ** (1 / 7), self.sub + 1, dtype=torch.float64) ** 7
                for a, b in zip(r[:-1].tolist(), r[1:].tolist()):
                    y[m] = heun_step(self.oracle, y[m], a, b)
        return eps_x0(self.process, x, t, x0=y)


def test_cd_loss_is_at_its_floor_for_the_exact_consistency_function():
    """With the oracle as teacher (one Heun step) the exact consistency function's loss is the Heun step's local error
    alone: tiny, and falling as O(h^6) when N doubles; the posterior mean E[x0|x_t], no consistency function, stays
    orders of magnitude above and falls as O(h^2)."""
    mix, proc = ring_mixture(), EDM(sigma_data=2.0)
    oracle = OracleDenoiser(mix, proc)
    x0 = mix.sample(256, torch.Generator().manual_seed(0)).double()
    values = {}
    for n in (9, 18):
        cfg = load_config(None, [*CM, "objective.loss=cd", "data.name=gmm-ring", f"cm.n_max={n}"])
        loss = ConsistencyDistillation.from_config(cfg)
        loss.teacher = oracle
        for name, model in (("exact", ExactConsistency(oracle, loss.grid(proc, n))), ("mean", oracle)):
            loss.target.denoiser = model
            values[name, n] = float(loss(model, x0, torch.Generator().manual_seed(1)).mean())
    assert values["exact", 9] < 0.02 * values["mean", 9] and values["exact", 18] < 1e-3 * values["mean", 18]
    assert values["exact", 18] < values["exact", 9] / 32  # Heun: local error O(h^3), squared
    assert values["mean", 18] > values["mean", 9] / 8  # first order


def test_schedules_follow_the_papers():
    assert num_points("fixed", 500, 1000, 18, 18) == 18
    assert num_points("increasing", 0, 1000, 2, 150) == 2 and num_points("increasing", 1000, 1000, 2, 150) == 151
    assert [num_points("doubling", k, 800, 10, 1280) for k in (0, 99, 100, 200, 799)] == [11, 11, 21, 41, 1281]
    assert target_decay("increasing", 2, 2, 0.9) == pytest.approx(0.9)  # mu(0) = mu0 at N = s0
    assert target_decay("doubling", 11, 10, 0.95) == 0.0 and target_decay("fixed", 18, 18, 0.95) == 0.95


def _modes(denoiser, steps, mix):
    """How many modes hold >= 2 % of 400 samples within 0.5 (10 std) of their centre, and the fraction so near."""
    x = sample(denoiser, 400, (2,), sampler="consistency", steps=steps, seed=3, progress=False).x
    d, k = torch.cdist(x.double(), mix.means).min(1)
    near = d <= 0.5
    return int((torch.bincount(k[near], minlength=len(mix.means)) >= 8).sum()), float(near.double().mean())


def test_a_few_hundred_cd_steps_learn_the_modes(tmp_path):
    cfg = load_config(None, [*CM, "objective.loss=cd", "data.name=gmm-ring", "data.num_samples=2048",
                             "model.width=64", "model.depth=2", "model.time_dim=16", "train.batch_size=128",
                             "train.steps=200", "train.lr=3e-3", "train.warmup_steps=10", "train.ema_decay=0.9",
                             "train.checkpoint_every=200", "train.log_every=50", "cm.n_max=10"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    mix = trainer.dataset.mixture
    before = [_modes(trainer.denoiser, k, mix) for k in (1, 2)]  # (untrained: nowhere near a mode)
    trainer.train()
    losses = [json.loads(line)["cd"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0]
    ema = trainer.denoiser
    ema.net.load_state_dict(trainer.ema)
    after = [_modes(ema.eval(), k, mix) for k in (1, 2)]
    (_, near1_before), (modes2_before, near2_before) = before
    (_, near1_after), (modes2_after, near2_after) = after
    assert modes2_after >= modes2_before + 3 and near2_after > near2_before + 0.1, (before, after)  # 2 steps
    assert near1_after > near1_before + 0.02, (before, after)  # 1 step: learning too, more slowly


def test_ct_trains_and_samples_through_the_cli(tmp_path, capsys):
    cfg = Path(__file__).parents[1] / "configs" / "ct-grid.toml"
    run = tmp_path / "ct"
    code, _, err = _cli(["train", cfg, "--out", run, "--quiet", *_sets(TINY), "--set", "train.steps=10"], capsys)
    assert code == 0, err
    assert (run / "checkpoints" / "step_00000010" / "target.safetensors").is_file()
    assert "ct" in json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    code, _, err = _cli(["sample", run, "--sampler", "consistency", "--steps", 3, "--num", 64, "--out",
                         tmp_path / "s.npz"], capsys)
    assert code == 0, err
    f = np.load(tmp_path / "s.npz")
    meta = json.loads(str(f["meta"]))
    assert f["samples"].shape == (64, 2) and np.isfinite(f["samples"]).all()
    assert (meta["sampler"], meta["steps"], meta["nfe"]) == ("consistency", 3, 3)


def test_consistency_sampler_on_the_oracle_is_the_posterior_mean_in_one_step(capsys, tmp_path):
    proc = EDM(sigma_data=2.0)
    oracle = OracleDenoiser(ring_mixture(), proc)
    out = sample(oracle, 64, (2,), sampler="consistency", steps=1, seed=0, progress=False)
    assert out.nfe == 1 and out.x.abs().max() < 0.1  # E[x0 | x_80]: about the data mean, 0
    code, _, err = _cli(["sample", "--oracle", "gmm-ring", "--process", "edm", "--sampler", "consistency", "--steps",
                         4, "--num", 32, "--out", tmp_path / "o.npz"], capsys)
    assert code == 0, err


def test_resume_is_bit_exact_with_the_target_network(tmp_path, capsys):
    cfg = tmp_path / "cd.toml"
    cfg.write_text("")
    sets = _sets(TINY + [*CM, "objective.loss=cd", "data.name=gmm-ring", "cm.schedule=increasing", "cm.n_max=20",
                         "cm.horizon=8", "train.steps=8", "train.checkpoint_every=4"])
    assert _cli(["train", cfg, "--out", tmp_path / "a", "--quiet", *sets], capsys)[0] == 0
    assert _cli(["train", cfg, "--out", tmp_path / "b", "--quiet", *sets, "--set", "train.steps=4"], capsys)[0] == 0
    assert _cli(["train", cfg, "--out", tmp_path / "b", "--quiet", *sets, "--resume", "latest"], capsys)[0] == 0
    for part in ("model", "target"):
        a, b = (tmp_path / r / "checkpoints" / "step_00000008" / f"{part}.safetensors" for r in "ab")
        assert a.read_bytes() == b.read_bytes(), part
    a = tmp_path / "a" / "checkpoints" / "step_00000008"
    assert (a / "model.safetensors").read_bytes() != (a / "target.safetensors").read_bytes()  # mu > 0: a real EMA


def test_a_teacher_on_another_process_is_read_at_the_same_log_snr():
    """The oracle on the discrete chain, asked through :class:`OnProcess` on EDM, is the oracle on EDM (the x0 it
    predicts depends only on the noise-to-signal ratio and x / alpha)."""
    from diffprop.losses.consistency_models import OnProcess
    from diffprop.schedules import NoiseSchedule

    mix, edm = ring_mixture(), EDM(sigma_data=2.0)
    wrapped = OnProcess(OracleDenoiser(mix, NoiseSchedule.from_config("linear", 1000)), edm)
    x = 2 * torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.exp(torch.linspace(-3, 2, 128, dtype=torch.float64))  # sigma from 0.05 to 7.4 (inside the chain's)
    assert torch.allclose(wrapped.predict(x, t).x0, OracleDenoiser(mix, edm).predict(x, t).x0, atol=1e-6)


def test_cd_digits_config_names_a_missing_teacher_in_one_line(tmp_path, capsys):
    cfg = Path(__file__).parents[1] / "configs" / "cd-digits.toml"
    code, _, err = _cli(["train", cfg, "--out", tmp_path / "r", "--quiet", "--set", f"cm.teacher={tmp_path / 'none'}"],
                        capsys)
    assert code == 2 and "is neither 'oracle' nor a diffprop run folder" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("sets, message", [
    (["objective.loss=cd"], "diffusion.parameterization = 'cm' (a consistency model) goes with objective.loss"),
    (["diffusion.process=edm", "objective.loss=ct"], "goes with objective.loss = 'cd' or 'ct'; got 'eps' with 'ct'"),
    ([*CM], "goes with objective.loss = 'cd' or 'ct'; got 'cm' with 'denoising'"),
    ([*CM, "objective.loss=cd", "data.name=moons"], "cm.teacher = 'oracle' needs a Gaussian-mixture dataset"),
    ([*CM, "objective.loss=cd", "cm.teacher=/nonexistent/run"], "is neither 'oracle' nor a diffprop run folder"),
    ([*CM, "objective.loss=ct", "cm.n_min=30", "cm.n_max=20"], "need 2 <= n_min <= n_max"),
    ([*CM, "objective.loss=ct", "cm.distance=l1"], "cm.distance = 'l1' is not allowed"),
    (["diffusion.parameterization=cm", "objective.loss=ct"], "diffusion.parameterization = 'cm' (a consistency model, Song et al. 2023) needs a continuous-time diffusion.process"),
])
def test_bad_consistency_input_is_one_line_exit_2(tmp_path, capsys, sets, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    code, _, err = _cli(["train", cfg, "--out", tmp_path / "r", "--quiet", *_sets(TINY + sets)], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
