"""``diffprop train --init-from``: fine-tuning a diffusers pipeline or another run, with regularizers and SMD around
the pretrained backbone; mismatched models and schedules are refused naming both."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from diffprop.checkpoint import load_checkpoint, resolve_checkpoint
from diffprop.cli import main
from diffprop.config import load_config
from diffprop.errors import DiffpropError
from diffprop.init_from import init_from
from diffprop.nets.unet import unet_config
from diffprop.runs import build_denoiser, load_run
from diffprop.schedules import linear_range
from diffprop.training import Trainer

T = 50
ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["data.name=digits", "model.kind=unet", "model.preset=tiny", f"diffusion.T={T}", "train.batch_size=16",
          "train.steps=1", "train.checkpoint_every=1", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A pipeline folder as diffusers writes it: the tiny digits U-Net (random weights) and a DDPMScheduler with
    diffprop's linear schedule at T = 50 (Ho et al.'s betas scaled by 1000 / T, given explicitly)."""
    torch.manual_seed(123)
    lo, hi = linear_range(T)
    path = tmp_path_factory.mktemp("pretrained") / "ddpm"
    DDPMPipeline(UNet2DModel(**unet_config((1, 8, 8), "tiny")),
                 DDPMScheduler(num_train_timesteps=T, beta_start=lo, beta_end=hi, variance_type="fixed_large")
                 ).save_pretrained(path)
    return path


def _unet_weights(path: Path) -> dict:
    unet = UNet2DModel.from_pretrained(path / "unet", use_safetensors=True, local_files_only=True)
    return {f"model.{k}": v for k, v in unet.state_dict().items()}


def _train(run_dir, overrides, source):
    trainer = Trainer(load_config(None, DIGITS + ["train.lr=0"] + overrides), run_dir, progress=False,
                      init_from=source)
    trainer.train()
    return load_checkpoint(resolve_checkpoint(run_dir), parts=("model", "ema"))


def test_init_from_diffusers_with_epdm_one_step_at_lr_0(pretrained, tmp_path):
    ckpt = _train(tmp_path / "ft", ['objective.regularizers=["epdm"]'], pretrained)
    want = _unet_weights(pretrained)
    assert ckpt["state"]["step"] == 1 and set(ckpt["model"]) == set(want)
    for part in ("model", "ema"):  # weights and EMA are the pretrained ones (a fresh init would not be)
        assert all(torch.equal(ckpt[part][k], want[k]) for k in want), part
    record = json.loads((tmp_path / "ft" / "init.json").read_text())
    assert record["kind"] == "diffusers" and record["init_from"] == str(pretrained)


def test_init_from_a_run_into_smd_with_fokker_planck(pretrained, tmp_path):
    """A run's EMA weights become the backbone of an SMD network whose modulation starts at zero: one step at lr 0
    later the SMD denoiser is the source model for any eta."""
    _train(tmp_path / "src", [], pretrained)
    ckpt = _train(tmp_path / "smd", ["model.smd=true", "smd.variant=official", 'objective.regularizers=["fokker_planck"]'],
                  tmp_path / "src")
    want = _unet_weights(pretrained)
    assert all(torch.equal(ckpt["model"][f"backbone.{k}"], v) for k, v in want.items())
    src, smd = load_run(tmp_path / "src").denoiser, load_run(tmp_path / "smd").denoiser
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 20, T])
    with torch.no_grad():
        for seed in (0, 1):
            torch.testing.assert_close(smd.raw(x, t, torch.Generator().manual_seed(seed)), src.raw(x, t), rtol=0, atol=0)
    record = json.loads((tmp_path / "smd" / "init.json").read_text())
    assert record["kind"] == "run" and record["step"] == 1 and record["ema"]


@pytest.mark.parametrize("variant", ["official", "embedding"])
def test_smd_around_a_pretrained_backbone_starts_as_it(pretrained, variant):
    cfg = load_config(None, DIGITS + ["model.smd=true", f"smd.variant={variant}"])
    den = build_denoiser(cfg, (1, 8, 8))
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([2, 30, T])
    ref = UNet2DModel.from_pretrained(pretrained / "unet", local_files_only=True)
    with torch.no_grad():
        before = den.raw(x, t, torch.Generator().manual_seed(0))
        init_from(den, cfg, pretrained)
        after = den.raw(x, t, torch.Generator().manual_seed(0))
        want = ref(x, t - 1).sample
    torch.testing.assert_close(after, want, rtol=0, atol=1e-6)
    assert (before - want).abs().max() > 1e-2


@pytest.mark.parametrize("overrides, message", [
    (["diffusion.T=40"], "its schedule (linear, T = 50, beta_1 = 0.002 .. beta_T = 0.4) is not the config's (linear, "
                         "T = 40, beta_1 = 0.0025 .. beta_T = 0.5)"),
    (["diffusion.schedule=cosine"], "its schedule (linear, T = 50, beta_1 = 0.002 .. beta_T = 0.4) is not the config's "
                                    "(cosine, T = 50,"),
    (["diffusion.parameterization=v_prediction"], "its model predicts 'eps', the config's diffusion.parameterization is "
                                                  "'v'"),
    (["model.preset=small"], "its UNet2DModel has block_out_channels = [32, 64], the config's (model.preset 'small', "
                             "data digits) has [64, 128, 128]"),
    (["data.image_size=16"], "its UNet2DModel has sample_size = 8, the config's (model.preset 'tiny', data digits) has 16"),
    (["model.kind=mlp"], "its backbone is a UNet, the config's (model.kind = 'mlp') a TimeMLP"),
])
def test_mismatches_are_refused_naming_both(pretrained, overrides, message):
    cfg = load_config(None, DIGITS + overrides)
    shape = (1, cfg.data.image_size or 8, cfg.data.image_size or 8)
    with pytest.raises(DiffpropError) as e:
        init_from(build_denoiser(cfg, shape if cfg.model.kind == "unet" else (64,)), cfg, pretrained)
    assert str(e.value).startswith(f"--init-from {pretrained}: {message}"), str(e.value)


def test_an_smd_source_needs_an_smd_config(pretrained, tmp_path):
    _train(tmp_path / "smd", ["model.smd=true", "smd.variant=embedding"], pretrained)
    cfg = load_config(None, DIGITS)
    with pytest.raises(DiffpropError, match="it is an SMD model and the config's is not"):
        init_from(build_denoiser(cfg, (1, 8, 8)), cfg, tmp_path / "smd")
    other = load_config(None, DIGITS + ["model.smd=true", "smd.variant=official"])
    with pytest.raises(DiffpropError, match=r"its SMD network is an EmbeddingSMD, the config's \(smd.variant = "
                                            r"'official'\) an OfficialSMD$"):
        init_from(build_denoiser(other, (1, 8, 8)), other, tmp_path / "smd")
    other = load_config(None, DIGITS + ["model.smd=true", "smd.variant=embedding", "smd.latent_dim=8"])
    with pytest.raises(DiffpropError, match=r"its weights do not fit the config's model: f.1.weight is \(128, 16\) "
                                            r"there and \(128, 8\) here$"):
        init_from(build_denoiser(other, (1, 8, 8)), other, tmp_path / "smd")


def test_finetune_config_through_the_cli_on_digits(pretrained, tmp_path, capsys):
    """configs/finetune-epdm.toml (a CIFAR-10 DDPM) shrunk to the tiny digits U-Net: fine-tuned, then sampled."""
    sets = ["data.name=digits", "model.preset=tiny", f"diffusion.T={T}", "train.steps=2", "train.batch_size=16",
            "train.checkpoint_every=2", "train.log_every=1", "epdm.L=2", "sample.steps=10"]
    argv = ["train", str(ROOT / "configs" / "finetune-epdm.toml"), "--out", str(tmp_path / "ft"), "--quiet",
            "--init-from", str(pretrained)]
    code = main([*argv, *[a for s in sets for a in ("--set", s)]])
    assert code == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all("epdm" in r for r in log)
    assert main(["sample", str(tmp_path / "ft"), "--num", "4", "--steps", "5", "--out", str(tmp_path / "s.npz")]) == 0
    capsys.readouterr()
    assert main([*argv, "--set", "diffusion.T=40", "--set", "data.name=digits", "--set", "model.preset=tiny",
                 "--set", "sample.steps=10", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffprop: error: --init-from {pretrained}: its schedule (linear, T = 50,") and err.count("\n") == 1
    assert main([*argv, "--resume", "latest"]) == 2
    assert capsys.readouterr().err == ("diffprop: error: --init-from starts a new run from other weights; --resume "
                                       "continues this one: give one of them\n")
