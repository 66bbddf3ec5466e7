"""Configs: defaults, TOML round trip, --set overrides, and every invalid value named with what is allowed."""
import pytest

from diffprop.config import Config, apply_overrides, config_from_dict, load_config, save_config
from diffprop.errors import DiffpropError


def test_defaults_round_trip_through_toml(tmp_path):
    cfg = load_config(None, ["train.steps=123", "model.width=64", "diffusion.schedule=cosine", "seed=5",
                             "train.ema_warmup=false", "data.name=csv:/tmp/x.csv"])
    save_config(cfg, tmp_path / "c.toml")
    back = load_config(tmp_path / "c.toml")
    assert back == cfg
    assert (back.train.steps, back.model.width, back.diffusion.schedule, back.seed) == (123, 64, "cosine", 5)
    assert back.train.ema_warmup is False and back.data.name == "csv:/tmp/x.csv"
    assert Config() == load_config(None)


def test_set_reads_toml_values_and_falls_back_to_strings():
    d = apply_overrides({}, ["train.lr=3e-4", "train.ema_warmup=true", "data.name=gmm-ring", "a.b.c=[1, 2]"])
    assert d == {"train": {"lr": 3e-4, "ema_warmup": True}, "data": {"name": "gmm-ring"}, "a": {"b": {"c": [1, 2]}}}
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0  # an int where a float is expected is fine


@pytest.mark.parametrize("override, message", [
    (["diffusion.T=0"], r"diffusion.T must be >= 1, got 0"),
    (["diffusion.beta_start=-1e-4"], r"diffusion.beta_start must be > 0.0"),
    (["diffusion.beta_end=1.5"], r"diffusion.beta_end must be < 1.0"),
    (["sample.steps=-2"], r"sample.steps must be >= 1, got -2$"),
    (["sample.steps=0"], r"sample.steps must be >= 1, got 0 \(leave the key out for the default, which 0 meant "),
    (["train.time_budget=0"], r"train.time_budget must be > 0.0, got 0.0 \(leave the key out"),
    (["sample.clipped_eps=true"], r"sample.clipped_eps applies to sample.sampler = 'ddim', not 'ddpm'"),
    (["sample.steps=2000"], r"sample.steps \(2000\) must be <= diffusion.T \(1000\)"),
    (["sample.sampler=dpm"], r"sample.sampler = 'dpm' is not allowed; allowed: ddpm, ddim, em, pc, euler, heun, ode"),
    (["data.name=mnist"], r"data.name = 'mnist' is not a dataset; allowed: gmm-grid, .*csv:PATH"),
    (["model.kind=transformer"], r"model.kind = 'transformer' is not allowed; allowed: mlp, unet"),
    (["train.stpes=5"], r"unknown key 'train.stpes' in section \[train\]; allowed: steps, batch_size"),
    (["bogus=1"], r"unknown key 'bogus' in top level; allowed: seed, data"),
    (["train.steps=1.5"], r"train.steps must be an integer, got 1.5"),
    (["train.ema_warmup=1"], r"train.ema_warmup must be true or false"),
    (["diffusion.beta_start=0.03"], r"beta_start \(0.03\) must be <= diffusion.beta_end \(0.02\)"),
    (["train=3"], r"\[train\] must be a section"),
    (["version=3"], r"version must be <= 2, got 3"),
])
def test_invalid_values_are_rejected_with_the_key_and_the_allowed_values(override, message):
    with pytest.raises(DiffpropError, match=message) as e:
        load_config(None, override)
    assert "\n" not in str(e.value)


def test_zeros_that_meant_the_preset_in_saved_configs_read_as_absent(tmp_path):
    """Run folders written before 2026-12 hold 0 for "the preset" in these keys; they read as the key left out, and
    are written back without it. A config a user writes gets the plain rule (0 is a value or an error)."""
    old = ("[data]\nimage_size = 0\n[diffusion]\nbeta_start = 0.0\nbeta_end = 0.0\n[model]\ndropout = 0.0\n"
           "[smd]\ng_width = 0\n[train]\ntime_budget = 0.0\n[epdm]\nweight = 0.0\nL = 0\nrho = 0.0\n"
           "[sample]\nsteps = 0\nbatch_size = 0\nclip_x0 = 0.0\n")
    (tmp_path / "config.toml").write_text(old)
    cfg = load_config(tmp_path / "config.toml", saved=True)
    assert cfg == Config()  # (read as format 2: written back with version = 2 and without the zeros)
    save_config(cfg, tmp_path / "back.toml")
    assert "image_size" not in (tmp_path / "back.toml").read_text()
    (tmp_path / "mine.toml").write_text("[model]\ndropout = 0.0\n[epdm]\nrho = 0.0\n")
    mine = load_config(tmp_path / "mine.toml")
    assert (mine.model.dropout, mine.epdm.rho) == (0.0, 0.0)  # values now: no dropout, uniform w_t
    with pytest.raises(DiffpropError, match=r"data.image_size must be >= 1, got 0 \(leave the key out"):
        load_config(tmp_path / "config.toml")
    # a config written today (format 2) keeps its zeros: no dropout, uniform w_t, EPDM weighted 0
    save_config(load_config(None, ["model.dropout=0", "epdm.rho=0", "epdm.weight=0"]), tmp_path / "now.toml")
    now = load_config(tmp_path / "now.toml", saved=True)
    assert (now.model.dropout, now.epdm.rho, now.epdm.weight, now.version) == (0.0, 0.0, 0.0, 2)


def test_bad_files(tmp_path):
    with pytest.raises(DiffpropError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[train\nsteps = ")
    with pytest.raises(DiffpropError, match=r"bad.toml: not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(DiffpropError, match="expected section.key=value"):
        load_config(None, ["train.steps"])


def test_config_is_data_never_code(tmp_path):
    (tmp_path / "c.toml").write_text('[data]\nname = "__import__(\'os\').system(\'touch pwned\')"\n')
    with pytest.raises(DiffpropError, match="is not a dataset"):
        config_from_dict(load_config.__globals__["read_toml"](tmp_path / "c.toml"))


def test_every_shipped_config_loads():
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert len(files) >= 4
    for f in files:
        load_config(f)
