"""Load a local diffusers checkpoint (``UNet2DModel`` + ``DDPMScheduler``) as a diffprop denoiser.

Accepts a pipeline folder (``unet/`` and ``scheduler/`` subfolders, as ``DDPMPipeline.save_pretrained``
writes) or a bare ``UNet2DModel.save_pretrained`` folder holding ``scheduler_config.json`` too.
Weights are read from safetensors only, never from pickles.

The scheduler's sampling settings travel with the denoiser: ``variance_type`` becomes its ``var_type``
(``fixed_small`` and ``fixed_small_log``, whose ``exp(0.5 log v)`` is the same standard deviation, are
``beta_tilde``; ``fixed_large`` is ``beta``) and ``clip_sample`` / ``clip_sample_range`` its ``clip_x0``, so
DDPM sampling with all T steps is diffusers' ``DDPMPipeline`` draw for draw. What diffprop cannot reproduce is
refused: learned variances, ``fixed_large_log`` (diffusers' ``DDPMScheduler.step`` draws it with standard
deviation ``sqrt(log beta_t)``, NaN), dynamic thresholding, zero-terminal-SNR rescaling, class-conditional
U-Nets. With fewer steps than T, ``diffprop sample`` visits the timesteps of the scheduler's ``timestep_spacing`` /
``steps_offset`` (:meth:`~diffprop.schedules.NoiseSchedule.spaced`) and steps from each to the next;
diffusers' schedulers step from ``k`` to ``k - T // steps``, the same chain where
:func:`same_chain_as_diffusers` says so (``leading``, the default, and ``trailing`` when steps divides T).

The betas are read in float64 as the scheduler's config gives them (``trained_betas``, or ``linear`` /
``squaredcos_cap_v2`` recomputed), not from its float32 tensor, so ``diffprop export`` round-trips exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .denoisers import Denoiser
from .errors import DiffpropError
from .names import BETA_SCHEDULES, PREDICTION_TYPES, VARIANCE_TYPES
from .nets.unet import UNet
from .schedules import NoiseSchedule, make_betas

SETTINGS = ("num_train_timesteps", "beta_schedule", "prediction_type", "variance_type", "clip_sample",
            "clip_sample_range", "timestep_spacing", "steps_offset")


def load_diffusers(path: str | Path) -> tuple[Denoiser, dict]:
    """The checkpoint as a :class:`Denoiser` (its ``var_type`` and ``clip_x0`` set from the scheduler) and the
    scheduler settings it was read with (diffusers' names, for the outputs' meta)."""
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
    c, u = sched.config, unet.config
    if c.prediction_type not in PREDICTION_TYPES:
        raise DiffpropError(f"{path}: prediction_type {c.prediction_type!r} is not supported; "
                            f"allowed: {', '.join(PREDICTION_TYPES)}")
    if c.variance_type not in VARIANCE_TYPES:
        why = {"fixed_large_log": "diffusers' DDPMScheduler.step draws it with std sqrt(log beta_t), NaN"}
        raise DiffpropError(f"{path}: variance_type {c.variance_type!r} is not supported "
                            f"({why.get(c.variance_type, 'diffprop samples with a fixed variance')}); "
                            f"allowed: {', '.join(VARIANCE_TYPES)}")
    if u.out_channels != u.in_channels:
        raise DiffpropError(f"{path}: the UNet has {u.out_channels} output channels for {u.in_channels} input "
                            f"channels; diffprop needs one prediction per input channel")
    if u.num_class_embeds is not None or u.class_embed_type is not None:
        raise DiffpropError(f"{path}: class-conditional UNet (num_class_embeds or class_embed_type set) is not "
                            f"supported; diffprop samples unconditional models")
    if c.thresholding:
        raise DiffpropError(f"{path}: thresholding (dynamic x0 thresholding) is not supported; "
                            f"use clip_sample instead")
    if c.get("rescale_betas_zero_snr"):
        raise DiffpropError(f"{path}: rescale_betas_zero_snr is not supported (abar_T = 0)")
    if c.trained_betas is not None:
        betas = np.asarray(c.trained_betas, dtype=np.float64)
    elif c.beta_schedule in BETA_SCHEDULES:  # recompute in float64
        betas = make_betas(BETA_SCHEDULES[c.beta_schedule], c.num_train_timesteps, c.beta_start, c.beta_end)
    else:
        betas = np.asarray(sched.betas, dtype=np.float64)
    denoiser = Denoiser(UNet.from_diffusers(unet), NoiseSchedule(betas), PREDICTION_TYPES[c.prediction_type],
                        VARIANCE_TYPES[c.variance_type]).eval()
    denoiser.clip_x0 = float(c.clip_sample_range) if c.clip_sample else None
    return denoiser, {k: c[k] for k in SETTINGS}


def same_chain_as_diffusers(ts: list[int], T: int) -> bool:
    """Whether diffusers' DDPM / DDIM schedulers, stepping from ``k`` to ``k - T // len(ts)`` (below 0: ``abar = 1``),
    walk the chain diffprop walks over timesteps ``ts`` (``t = k + 1``), from each to the next and from the first
    to 0."""
    r = T // len(ts)
    return ts[0] - 1 < r and all(b - a == r for a, b in zip(ts, ts[1:]))
