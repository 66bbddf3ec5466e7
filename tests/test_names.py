"""diffusers' names as config aliases, and the renamed sigmoid schedule (old run folders still load)."""
from __future__ import annotations

import pytest
import torch

from diffprop.cli import main
from diffprop.config import load_config
from diffprop.errors import DiffpropError
from diffprop.runs import load_run
from diffprop.schedules import NoiseSchedule
from diffprop.training import Trainer

from .conftest import TINY


@pytest.mark.parametrize("key, alias, ours", [
    ("diffusion.parameterization", "epsilon", "eps"), ("diffusion.parameterization", "sample", "x0"),
    ("diffusion.parameterization", "v_prediction", "v"), ("diffusion.var_type", "fixed_small", "beta_tilde"),
    ("diffusion.var_type", "fixed_large", "beta"), ("diffusion.schedule", "squaredcos_cap_v2", "cosine"),
])
def test_diffusers_names_are_aliases(key, alias, ours):
    cfg = load_config(None, [f"{key}={alias}"])
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == ours
    assert f'{name} = "{ours}"' in cfg.dumps()  # the resolved config says it in diffprop's words


def test_sigmoid_names_nothing_in_a_new_config():
    with pytest.raises(DiffpropError, match=r"^config: diffusion.schedule = 'sigmoid' is ambiguous: diffprop's sigmoid "
                                            r"schedule \(Jabri et al. 2022, .*\) is now 'sigmoid_abar'; diffusers' "
                                            r"'sigmoid' \(sigmoid-shaped betas\) is another schedule, not implemented$"):
        load_config(None, ["diffusion.schedule=sigmoid"])
    with pytest.raises(DiffpropError, match=r"diffusion.schedule = 'linear_ish' is not allowed; allowed: linear, "
                                            r"cosine, sigmoid_abar"):
        load_config(None, ["diffusion.schedule=linear_ish"])


def test_a_run_saved_with_the_old_sigmoid_name_loads_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = TINY + ["diffusion.schedule=sigmoid_abar", "train.steps=10", "train.checkpoint_every=10"]
    Trainer(load_config(None, overrides), run, progress=False).train()
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace('schedule = "sigmoid_abar"', 'schedule = "sigmoid"'))  # as written
    assert 'schedule = "sigmoid"' in (run / "config.toml").read_text()                                # before
    loaded = load_run(run)
    assert loaded.config.diffusion.schedule == "sigmoid_abar"
    assert torch.equal(loaded.denoiser.schedule.betas, NoiseSchedule.from_config("sigmoid_abar", 100).betas)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[diffusion]\nschedule = "sigmoid_abar"\n')
    sets = [a for s in TINY + ["train.steps=20", "train.checkpoint_every=10"] for a in ("--set", s)]
    code = main(["train", str(cfg), "--out", str(run), "--resume", "latest", "--quiet", *sets])
    assert code == 0, capsys.readouterr().err
    assert load_run(run).step == 20
