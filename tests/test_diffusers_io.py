"""diffusers checkpoints (``--diffusers DIR``): sampled exactly as diffusers samples them, or refused in one line.

``DDPMPipeline`` draws ``x_T = randn_tensor((N, C, H, W), generator)``, then one ``randn_tensor`` per step with
k > 0 inside ``DDPMScheduler.step``; ``diffprop sample`` draws ``x_T = torch.randn(N, C, H, W, generator)`` and one
draw per step with t_prev > 0. With the same seed both use the same noise, so once the scheduler's
``variance_type`` and ``clip_sample`` are honoured the samples agree to float32 rounding.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from diffprop.cli import main

T, N, SEED = 30, 6, 3  # diffusers' default betas (1e-4..0.02, raw) keep abar_T = 0.74: unclipped samples stay O(1)
VAR_TYPE = {"fixed_small": "beta_tilde", "fixed_small_log": "beta_tilde", "fixed_large": "beta"}


def _unet(**kw) -> UNet2DModel:
    torch.manual_seed(0)
    args = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=8)
    return UNet2DModel(**{**args, **kw})


def _pipeline(path, unet_kw=None, **sched_kw) -> DDPMPipeline:
    pipe = DDPMPipeline(_unet(**(unet_kw or {})), DDPMScheduler(num_train_timesteps=T, **sched_kw))
    pipe.save_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(capsys, path, *extra):
    out = path.parent / "samples.npz"
    code = main(["sample", "--diffusers", str(path), "--num", str(N), "--seed", str(SEED),
                 "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    with np.load(out) as f:
        return f["samples"], json.loads(str(f["meta"])), err


def _as_pipeline_output(x: np.ndarray) -> np.ndarray:
    """diffprop's samples (N, C, H, W) in [-1, 1] units -> the pipeline's ``(x / 2 + 0.5).clamp(0, 1)``, NHWC."""
    return np.clip(x / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("variance_type, clip", [("fixed_small", True), ("fixed_small", False), ("fixed_large", True),
                                                 ("fixed_large", False), ("fixed_small_log", True)])
def test_sample_matches_ddpm_pipeline(tmp_path, capsys, variance_type, clip):
    pipe = _pipeline(tmp_path / "ckpt", variance_type=variance_type, clip_sample=clip)
    ref = pipe(batch_size=N, generator=torch.Generator().manual_seed(SEED), num_inference_steps=T,
               output_type="np").images
    x, meta, _ = _sample(capsys, tmp_path / "ckpt")
    np.testing.assert_allclose(_as_pipeline_output(x), ref, rtol=0, atol=1e-5)
    assert ((ref > 0) & (ref < 1)).mean() > 0.5  # mostly unsaturated: the comparison sees the values
    # the last step returns the predicted x0: within [-1, 1] exactly when it was clipped
    assert (np.abs(x).max() <= 1) == clip
    assert meta["var_type"] == VAR_TYPE[variance_type] and meta["clip_x0"] == (1.0 if clip else None)
    assert meta["scheduler"]["variance_type"] == variance_type and meta["scheduler"]["clip_sample"] == clip
    assert meta["steps"] == T and meta["spacing"] == "leading"


@pytest.mark.parametrize("clipped", [False, True])
def test_ddim_with_all_steps_matches_ddim_pipeline(tmp_path, capsys, clipped):
    """DDIM over all T steps: diffusers' 'leading' spacing visits k = T-1..0, diffprop t = T..1 (eta = 0)."""
    pipe = _pipeline(tmp_path / "ckpt", clip_sample=True, clip_sample_range=0.5)
    ddim = DDIMPipeline(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config))
    ddim.set_progress_bar_config(disable=True)
    ref = ddim(batch_size=N, generator=torch.Generator().manual_seed(SEED), num_inference_steps=T, eta=0.0,
               use_clipped_model_output=clipped, output_type="np").images
    x, meta, _ = _sample(capsys, tmp_path / "ckpt", "--sampler", "ddim", "--steps", str(T),
                         *(["--clipped-eps"] if clipped else []))
    np.testing.assert_allclose(_as_pipeline_output(x), ref, rtol=0, atol=1e-5)
    assert meta["clip_x0"] == 0.5 and meta["clipped_eps"] == clipped


@pytest.mark.parametrize("spacing, offset", [("leading", 0), ("leading", 2), ("trailing", 0)])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_fewer_steps_follow_the_scheduler_spacing(tmp_path, capsys, spacing, offset, sampler):
    """K = 10 steps of T = 30: diffusers steps from k to k - 3, which is the next timestep visited with leading
    spacing (any steps_offset below 3) and trailing spacing, so the respaced samples are the pipeline's."""
    pipe = _pipeline(tmp_path / "ckpt", timestep_spacing=spacing, steps_offset=offset, variance_type="fixed_small")
    if sampler == "ddim":
        pipe = DDIMPipeline(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config))
        pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=N, generator=torch.Generator().manual_seed(SEED), num_inference_steps=10,
               output_type="np").images
    x, meta, err = _sample(capsys, tmp_path / "ckpt", "--steps", "10", "--sampler", sampler)
    np.testing.assert_allclose(_as_pipeline_output(x), ref, rtol=0, atol=1e-5)
    assert meta["spacing"] == spacing and meta["offset"] == (offset if spacing == "leading" else 0)
    assert "note" not in err


def test_fewer_steps_on_another_chain_are_noted(tmp_path, capsys):
    """diffprop's even spacing, or diffusers' linspace, visit timesteps diffusers' schedulers do not step between."""
    _pipeline(tmp_path / "ckpt", timestep_spacing="linspace")
    for extra in ([], ["--spacing", "even"]):
        _, meta, err = _sample(capsys, tmp_path / "ckpt", "--steps", "10", *extra)
        assert (f"diffprop: note: with {meta['spacing']} spacing and 10 of T = {T} steps, diffusers' scheduler steps "
                f"from k to k - T // steps = k - 3 and diffprop to the next timestep it visits, so samples differ from "
                f"the diffusers pipeline's") in err
        assert meta["spacing"] == (extra[-1] if extra else "linspace")


def test_clipped_eps_needs_a_clipping_checkpoint(tmp_path, capsys):
    _pipeline(tmp_path / "ckpt", clip_sample=False)
    code = main(["sample", "--diffusers", str(tmp_path / "ckpt"), "--sampler", "ddim",
                 "--clipped-eps"])
    assert code == 2
    assert capsys.readouterr().err.endswith("diffprop: error: --clipped-eps needs x0 clipping, "
                                            "and this model samples without it\n")


@pytest.mark.parametrize("sched_kw, unet_kw, message", [
    ({"variance_type": "learned_range"}, {"out_channels": 6},
     "variance_type 'learned_range' is not supported (diffprop samples with a fixed variance); "
     "allowed: fixed_small, fixed_small_log, fixed_large"),
    ({"variance_type": "learned"}, {}, "variance_type 'learned' is not supported"),
    ({"variance_type": "fixed_large_log"}, {},
     "variance_type 'fixed_large_log' is not supported (diffusers' DDPMScheduler.step draws it with std "
     "sqrt(log beta_t), NaN)"),
    ({}, {"out_channels": 6}, "the UNet has 6 output channels for 3 input channels"),
    ({}, {"num_class_embeds": 10}, "class-conditional UNet (num_class_embeds or class_embed_type set)"),
    ({}, {"class_embed_type": "timestep"}, "class-conditional UNet"),
    ({"thresholding": True}, {}, "thresholding (dynamic x0 thresholding) is not supported; use clip_sample instead"),
    ({"rescale_betas_zero_snr": True}, {}, "rescale_betas_zero_snr is not supported (abar_T = 0)"),
])
def test_unsupported_checkpoints_are_refused_in_one_line(tmp_path, capsys, sched_kw, unet_kw, message):
    _pipeline(tmp_path / "ckpt", unet_kw, **sched_kw)
    capsys.readouterr()
    for command in ("sample", "measure"):
        code = main([command, "--diffusers", str(tmp_path / "ckpt"), "--dataset", "digits"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("diffprop: error: ") and err.count("\n") == 1, err
        assert f"{tmp_path / 'ckpt'}: {message}" in err, err
