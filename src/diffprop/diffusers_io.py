"""Load a local diffusers checkpoint (``UNet2DModel`` + ``DDPMScheduler``) as a diffprop denoiser.

Accepts a pipeline folder (``unet/`` and ``scheduler/`` subfolders, as ``DDPMPipeline.save_pretrained``
writes) or a bare ``UNet2DModel.save_pretrained`` folder holding ``scheduler_config.json`` too.
Weights are read from safetensors only, never from pickles.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .denoisers import Denoiser
from .errors import DiffpropError
from .nets.unet import UNet
from .schedules import NoiseSchedule, make_betas

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def load_diffusers(path: str | Path) -> Denoiser:
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(path)
    if not path.is_dir():
        raise DiffpropError(f"{path}: diffusers checkpoint folder not found")
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    sched_dir = path / "scheduler" if (path / "scheduler").is_dir() else path
    if not list(unet_dir.glob("*.safetensors")):
        raise DiffpropError(f"{unet_dir}: no .safetensors weights (diffprop does not load pickled .bin files)")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True)
        sched = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as e:
        raise DiffpropError(f"{path}: cannot load a UNet2DModel + DDPMScheduler ({str(e).splitlines()[0]})") from None
    c = sched.config
    if c.prediction_type not in PREDICTION_TYPES:
        raise DiffpropError(f"{path}: prediction_type {c.prediction_type!r} is not supported; "
                            f"allowed: {', '.join(PREDICTION_TYPES)}")
    if c.beta_schedule == "linear" and c.trained_betas is None:  # recompute in float64
        betas = make_betas("linear", c.num_train_timesteps, c.beta_start, c.beta_end)
    else:
        betas = np.asarray(sched.betas, dtype=np.float64)
    return Denoiser(UNet.from_diffusers(unet), NoiseSchedule(betas), PREDICTION_TYPES[c.prediction_type]).eval()
