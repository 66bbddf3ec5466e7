"""Outputs other tools read: ``diffprop export`` (a diffusers ``DDPMPipeline`` folder) and ``sample --format
png-folder`` (one PNG per image, as torch-fidelity and clean-fid read them)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from diffprop.cli import main
from diffprop.config import load_config
from diffprop.data.images import load_image_folder
from diffprop.diffusers_io import load_diffusers
from diffprop.export import scheduler_config
from diffprop.runs import build_schedule, load_run
from diffprop.schedules import make_betas
from diffprop.training import Trainer

T, N, SEED = 40, 6, 5
# v-prediction on the sigmoid_abar schedule (no diffusers name: trained_betas) with beta_tilde (fixed_small)
UNET_RUN = ["data.name=digits", "model.kind=unet", "model.preset=tiny", f"diffusion.T={T}", "diffusion.schedule=sigmoid_abar",
            "diffusion.parameterization=v", "diffusion.var_type=beta_tilde", "train.batch_size=16", "train.steps=3",
            "train.lr=1e-2", "train.warmup_steps=0", "train.checkpoint_every=3", "train.ema_decay=0.5"]


def _run(path, overrides, train=True):
    trainer = Trainer(load_config(None, overrides), path, progress=False)
    trainer.train() if train else trainer.save()
    return path


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("export") / "run", UNET_RUN)


def _export(capsys, run_dir, out, *extra):
    code = main(["export", str(run_dir), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return out


@pytest.mark.parametrize("ema", [True, False])
def test_exported_unet_is_the_runs_backbone(unet_run, tmp_path, capsys, ema):
    out = _export(capsys, unet_run, tmp_path / "pipe", *([] if ema else ["--no-ema"]))
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    unet = UNet2DModel.from_pretrained(out / "unet", use_safetensors=True, local_files_only=True).eval()
    net = load_run(unet_run, ema=ema).denoiser.net
    other = load_run(unet_run, ema=not ema).denoiser.net
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 7, 20, T - 1])
    with torch.no_grad():
        ours, theirs, wrong = net(x, t), unet(x, t).sample, other(x, t)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
    assert (wrong - ours).abs().max() > 1e-3  # EMA and raw weights differ: the comparison tells them apart


def test_exported_pipeline_samples_as_diffprop_does(unet_run, tmp_path, capsys):
    out = _export(capsys, unet_run, tmp_path / "pipe")
    pipe = DDPMPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    c = pipe.scheduler.config
    assert (c.prediction_type, c.variance_type, c.clip_sample, c.clip_sample_range) == ("v_prediction", "fixed_small",
                                                                                       True, 1.0)
    ref = pipe(batch_size=N, generator=torch.Generator().manual_seed(SEED), num_inference_steps=T,
               output_type="np").images
    code = main(["sample", str(unet_run), "--num", str(N), "--seed", str(SEED), "--sampler", "ddpm", "--noise", "stream",
                 "--out", str(tmp_path / "s.npz")])  # the pipeline's single generator stream
    assert code == 0, capsys.readouterr().err
    x = np.load(tmp_path / "s.npz")["samples"]
    np.testing.assert_allclose(np.clip(x / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1), ref, rtol=0, atol=2e-5)
    assert ((ref > 0.01) & (ref < 0.99)).mean() > 0.3  # not all saturated: the comparison sees the values


def test_round_trip_keeps_the_float64_betas_and_settings(unet_run, tmp_path, capsys):
    out = _export(capsys, unet_run, tmp_path / "pipe")
    denoiser, settings = load_diffusers(out)
    run = load_run(unet_run)
    assert torch.equal(denoiser.schedule.betas, run.denoiser.schedule.betas)  # exact, not float32
    assert (denoiser.parameterization, denoiser.var_type, denoiser.clip_x0) == ("v", "beta_tilde", 1.0)
    assert settings["beta_schedule"] == "sigmoid_abar"


@pytest.mark.parametrize("overrides", [[], ["diffusion.T=250"], ["diffusion.beta_start=0.001", "diffusion.beta_end=0.03"],
                                       ["diffusion.schedule=cosine"], ["diffusion.schedule=squaredcos_cap_v2", "diffusion.T=77"],
                                       ["diffusion.schedule=sigmoid_abar"], ["diffusion.parameterization=x0", "sample.clip_x0=2",
                                                                            "sample.spacing=trailing"]])
def test_scheduler_config_reproduces_the_schedule(overrides):
    """diffusers' own float32 betas are ours rounded; the config's numbers give ours back in float64."""
    cfg = load_config(None, overrides)
    kw = scheduler_config(cfg)
    ours = build_schedule(cfg).betas[1:]
    sched = DDPMScheduler(**kw)
    torch.testing.assert_close(sched.betas, ours.float(), rtol=2e-6, atol=0)
    if kw["beta_schedule"] == "linear":
        assert np.array_equal(make_betas("linear", cfg.diffusion.T, kw["beta_start"], kw["beta_end"]), ours.numpy())
    elif kw["beta_schedule"] == "squaredcos_cap_v2":
        assert cfg.diffusion.schedule == "cosine" and "trained_betas" not in kw
    else:
        assert np.array_equal(np.array(json.loads(json.dumps(kw["trained_betas"]))), ours.numpy())
    assert kw["prediction_type"] == {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[cfg.diffusion.parameterization]
    assert kw["clip_sample_range"] == (cfg.sample.clip_x0 or 1.0)
    assert kw["timestep_spacing"] == {"even": "leading", None: "leading"}.get(cfg.sample.spacing, cfg.sample.spacing)


@pytest.mark.parametrize("overrides, message", [
    (["model.width=16", "model.depth=1", "model.time_dim=8", "data.num_samples=64", "train.batch_size=16"],
     "an MLP run is not a diffusers model (a DDPMPipeline needs a UNet2DModel); export takes runs with model.kind = 'unet'"),
    (["data.name=digits", "model.kind=unet", "model.preset=tiny", "model.smd=true", "smd.variant=embedding",
      "train.batch_size=16"],
     "an SMD run is not a diffusers model (its network also takes latent noise eta); export takes runs without model.smd"),
])
def test_non_diffusers_runs_are_refused(tmp_path, capsys, overrides, message):
    run = _run(tmp_path / "run", overrides, train=False)
    code = main(["export", str(run), "--out", str(tmp_path / "pipe")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"diffprop: error: {run}: {message}\n"
    assert not (tmp_path / "pipe").exists()


def test_png_folder_holds_the_samples(unet_run, tmp_path, capsys):
    args = ["sample", str(unet_run), "--num", "5", "--steps", "4", "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "s.npz")]) == 0
    assert main([*args, "--format", "png-folder", "--out", str(tmp_path / "png")]) == 0
    files = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert files == [f"{i:06d}.png" for i in range(5)] + ["meta.json"]
    assert Image.open(tmp_path / "png" / "000000.png").mode == "L"
    x = torch.from_numpy(np.load(tmp_path / "s.npz")["samples"])
    back = load_image_folder(tmp_path / "png", None)  # as an image-folder dataset reads them
    torch.testing.assert_close(back, ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1, rtol=0, atol=1e-6)
    meta = json.loads((tmp_path / "png" / "meta.json").read_text())
    assert meta["steps"] == 4 and meta["seed"] == 1
    capsys.readouterr()
    assert main([*args, "--format", "png-folder", "--out", str(tmp_path / "png")]) == 2  # not over old images
    assert capsys.readouterr().err == f"diffprop: error: {tmp_path / 'png'}: exists and is not an empty folder; " \
                                      f"choose a new --out\n"
    assert main(["sample", "--oracle", "gmm-grid", "--num", "4", "--format", "png-folder"]) == 2
    assert capsys.readouterr().err == "diffprop: error: --format png-folder writes images; gmm-grid data has shape " \
                                      "(2,) per item\n"
