"""The trainer: bit-exact resume, checkpoints (atomic, keep-last-K, safetensors only), NaN stop, logs."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from diffprop.checkpoint import list_checkpoints
from diffprop.config import load_config
from diffprop.errors import DiffpropError
from diffprop.losses import DenoisingLoss
from diffprop.training import Trainer


def _train(overrides, out, resume=None, objective=None):
    t = Trainer(load_config(None, overrides), out, resume=resume, progress=False, objective=objective)
    t.train()
    return t


@pytest.mark.parametrize("extra", [[], ["data.name=digits", "model.kind=unet", "train.batch_size=16",
                                        "train.steps=6", "train.checkpoint_every=3", "train.log_every=3"]])
def test_resume_is_bit_exact(tmp_path, tiny_overrides, extra):
    ov = tiny_overrides + extra
    steps = load_config(None, ov).train.steps
    half = steps // 2
    _train(ov, tmp_path / "one")
    _train(ov + [f"train.steps={half}"], tmp_path / "two")
    _train(ov, tmp_path / "two", resume="latest")
    a, b = list_checkpoints(tmp_path / "one")[-1], list_checkpoints(tmp_path / "two")[-1]
    assert a.name == b.name == f"step_{steps:08d}"
    for part in ("model", "ema", "optimizer", "rng"):
        ta, tb = load_file(a / f"{part}.safetensors"), load_file(b / f"{part}.safetensors")
        assert ta.keys() == tb.keys() and len(ta) > 0
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (part, k)
    # logged windows that both runs cover whole (the first and the last) agree exactly, but for timings
    la = [{k: v for k, v in json.loads(x).items() if k != "it_s"} for x in (tmp_path / "one/log.jsonl").open()]
    lb = [{k: v for k, v in json.loads(x).items() if k != "it_s"} for x in (tmp_path / "two/log.jsonl").open()]
    assert la[0] == lb[0] and la[-1] == lb[-1] and lb[-1]["step"] == steps


def test_checkpoints_keep_last_k_and_leave_no_temporaries(tmp_path, tiny_overrides):
    _train(tiny_overrides + ["train.keep_last=2"], tmp_path)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000020", "step_00000030"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    files = sorted(p.name for p in (tmp_path / "checkpoints/step_00000030").iterdir())
    assert files == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors",
                     "state.json"]
    state = json.loads((tmp_path / "checkpoints/step_00000030/state.json").read_text())
    assert state["step"] == 30 and state["world_size"] == 1
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").open()]
    assert [r["step"] for r in log] == [10, 20, 30]
    assert all({"loss", "lr", "grad_norm", "it_s"} <= r.keys() for r in log)


def test_ema_differs_from_weights_and_tracks_them(tmp_path, tiny_overrides):
    _train(tiny_overrides + ["train.ema_decay=0.9"], tmp_path)
    ck = list_checkpoints(tmp_path)[-1]
    m, e = load_file(ck / "model.safetensors"), load_file(ck / "ema.safetensors")
    k = next(iter(m))
    assert not torch.equal(m[k], e[k])
    assert (m[k] - e[k]).abs().max() < 0.5 * m[k].abs().max()


class _NaNAt:
    """The denoising loss, but NaN from a given step on: emulates a diverging run."""

    def __init__(self, step):
        self.step, self.calls, self.loss = step, 0, DenoisingLoss()

    def __call__(self, denoiser, x0, generator):
        self.calls += 1
        out = self.loss(denoiser, x0, generator)
        return out * float("nan") if self.calls >= self.step else out


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_overrides):
    with pytest.raises(DiffpropError, match=r"loss is nan at step 15; the weights were not updated; "
                                            r"last good checkpoint: .*step_00000010") as e:
        _train(tiny_overrides, tmp_path, objective=_NaNAt(15))
    assert "\n" not in str(e.value)
    ck = list_checkpoints(tmp_path)
    assert [p.name for p in ck] == ["step_00000010"]
    assert all(torch.isfinite(v).all() for v in load_file(ck[0] / "model.safetensors").values())
    _train(tiny_overrides, tmp_path, resume="latest")  # and training can continue from it
    assert list_checkpoints(tmp_path)[-1].name == "step_00000030"


def test_resume_refuses_a_changed_model(tmp_path, tiny_overrides):
    _train(tiny_overrides, tmp_path)
    with pytest.raises(DiffpropError, match=r"cannot resume: model.width is 64 but the run was trained with 32"):
        Trainer(load_config(None, tiny_overrides + ["model.width=64"]), tmp_path, resume="latest", progress=False)
    with pytest.raises(DiffpropError, match="no checkpoints found"):
        Trainer(load_config(None, tiny_overrides), tmp_path / "empty", resume="latest", progress=False)


def test_batch_larger_than_dataset_is_rejected(tmp_path, tiny_overrides):
    with pytest.raises(DiffpropError, match=r"train.batch_size \(1024\) exceeds the dataset size \(512\)"):
        Trainer(load_config(None, tiny_overrides + ["train.batch_size=1024"]), tmp_path, progress=False)


def test_every_example_is_seen_once_per_epoch(tmp_path, tiny_overrides):
    t = Trainer(load_config(None, tiny_overrides), tmp_path, progress=False)
    per_epoch = 512 // 64
    seen = torch.cat([t.batch(s) for s in range(per_epoch)])
    assert torch.equal(seen.sort(0).values, t.x.sort(0).values)
    assert not torch.equal(t.batch(0), t.batch(per_epoch))  # a new permutation next epoch


@pytest.mark.parametrize("objective", [[], ['objective.regularizers=["epdm", "consistency"]']], ids=["plain", "regularized"])
def test_two_process_cpu_run_resumes_bit_exactly(tmp_path, tiny_overrides, objective):
    """Data-parallel training on 2 CPU processes (gloo, launched by torchrun); resume with the same world size.
    Regularizers compute their terms on each rank's share of the batch, like the denoising loss."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\ndevice = \"cpu\"\n")
    sets = [x for o in tiny_overrides + ["train.steps=20"] + objective for x in ("--set", o)]

    def free_port() -> int:  # a fresh port per launch: the last run's may still be in TIME_WAIT
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def launch(out, *extra):
        cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "diffprop.cli", "train", str(cfg), "--out", str(out), "--quiet", *sets, *extra]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert p.returncode == 0, [ln for ln in (p.stdout + p.stderr).splitlines() if "diffprop" in ln or "Error" in ln]

    launch(tmp_path / "one")
    launch(tmp_path / "two", "--set", "train.steps=10")
    launch(tmp_path / "two", "--resume", "latest")
    a, b = list_checkpoints(tmp_path / "one")[-1], list_checkpoints(tmp_path / "two")[-1]
    assert json.loads((a / "state.json").read_text())["world_size"] == 2
    rng = load_file(a / "rng.safetensors")["generator"]
    assert rng.shape[0] == 2 and not torch.equal(rng[0], rng[1])  # each rank draws its own noise
    for part in ("model", "ema", "optimizer"):
        ta, tb = load_file(a / f"{part}.safetensors"), load_file(b / f"{part}.safetensors")
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    if objective:
        log = [json.loads(line) for line in (tmp_path / "one/log.jsonl").read_text().splitlines()]
        assert all(math.isfinite(rec["epdm.mmd"]) and math.isfinite(rec["consistency"]) for rec in log)


def test_time_budget_stops_early_with_a_checkpoint_and_a_log_line(tmp_path, tiny_overrides):
    t = _train(tiny_overrides + ["train.steps=100000", "train.time_budget=1.0", "train.checkpoint_every=100000"],
               tmp_path)
    assert 0 < t.step < 100000
    assert list_checkpoints(tmp_path)[-1].name == f"step_{t.step:08d}"
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["step"] == t.step


def test_time_budget_progress_bar_names_the_budget_not_the_step_cap(tmp_path, tiny_overrides, capsys):
    ov = tiny_overrides + ["train.steps=100000000", "train.time_budget=0.5", "train.checkpoint_every=100000000"]
    Trainer(load_config(None, ov), tmp_path, progress=True).train()
    err = capsys.readouterr().err
    # not "n/100000000 [.. <3500:00:00]": the cap of a wall-clock run is no total to show
    assert "training (0.5 s budget)" in err and "100000000" not in err
