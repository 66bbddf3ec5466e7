"""Export a U-Net run as a diffusers pipeline folder (``DDPMPipeline.save_pretrained`` layout).

``unet/`` holds the run's ``UNet2DModel`` (its EMA weights unless ``ema=False``; config.json + safetensors);
``scheduler/`` a ``DDPMScheduler`` that samples the way ``diffprop sample RUN_DIR`` does:

- betas: ``linear`` with the exact ``beta_start`` / ``beta_end`` the run used (scaled by 1000 / T where the config
  left them at 0), ``cosine`` as ``squaredcos_cap_v2``; a schedule diffusers has no name for (``sigmoid_abar``)
  as ``trained_betas``, every beta in float64 (JSON keeps all 17 digits), its ``beta_schedule`` saying which;
  :func:`diffprop.diffusers_io.load_diffusers` reads them back in float64, so the round trip is exact;
- ``prediction_type``, ``variance_type`` from ``diffusion.parameterization`` and ``diffusion.var_type``
  (:mod:`diffprop.names`), ``clip_sample`` / ``clip_sample_range`` from ``sample.clip_x0`` (1 when it is absent, as
  ``diffprop sample`` clips images), ``timestep_spacing`` from ``sample.spacing`` (``leading``, diffusers'
  default, for diffprop's own ``even``).

MLP runs (vector data) and SMD runs (a network that also takes latent noise) are not diffusers models and
are refused. Images are in [-1, 1], as ``DDPMPipeline`` expects.
"""
from __future__ import annotations

from pathlib import Path

from .config import Config
from .errors import DiffpropError
from .names import PREDICTION_TYPES, SPACINGS, VARIANCE_TYPES, to_diffusers
from .runs import build_schedule, load_run
from .schedules import linear_range


def scheduler_config(cfg: Config) -> dict:
    """``DDPMScheduler`` keyword arguments that reproduce ``cfg``'s schedule and sampling settings."""
    d, sc = cfg.diffusion, cfg.sample
    if d.schedule == "linear":
        lo, hi = linear_range(d.T, d.beta_start or None, d.beta_end or None)
        betas = dict(beta_schedule="linear", beta_start=lo, beta_end=hi)
    elif d.schedule == "cosine":
        betas = dict(beta_schedule="squaredcos_cap_v2")
    else:  # no diffusers name: the betas themselves
        betas = dict(beta_schedule=d.schedule, trained_betas=build_schedule(cfg).betas[1:].tolist())
    return dict(num_train_timesteps=d.T, **betas, prediction_type=to_diffusers(PREDICTION_TYPES, d.parameterization),
                variance_type=to_diffusers(VARIANCE_TYPES, d.var_type), clip_sample=True,
                clip_sample_range=sc.clip_x0 or 1.0, steps_offset=0,
                timestep_spacing=sc.spacing if sc.spacing in SPACINGS[1:] else "leading")  # [1:]: diffusers' own


def export_run(run_dir: str | Path, out: str | Path, *, ema: bool = True) -> Path:
    """Write ``run_dir``'s model as a ``DDPMPipeline`` folder at ``out`` (new or empty); returns ``out``."""
    from diffusers import DDPMPipeline, DDPMScheduler

    run_dir, out = Path(run_dir), Path(out)
    run = load_run(run_dir, ema=ema)
    m = run.config.model
    if m.kind != "unet":
        raise DiffpropError(f"{run_dir}: an MLP run is not a diffusers model (a DDPMPipeline needs a UNet2DModel); "
                            f"export takes runs with model.kind = 'unet'")
    if run.config.diffusion.process != "discrete":
        raise DiffpropError(f"{run_dir}: a run on the {run.config.diffusion.process} process is not a diffusers "
                            f"DDPMPipeline (its scheduler is the discrete chain); export takes diffusion.process = "
                            f"'discrete' runs")
    if m.smd:
        raise DiffpropError(f"{run_dir}: an SMD run is not a diffusers model (its network also takes latent noise "
                            f"eta); export takes runs without model.smd")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DiffpropError(f"{out}: exists and is not an empty folder; choose a new --out")
    pipe = DDPMPipeline(unet=run.denoiser.net.model, scheduler=DDPMScheduler(**scheduler_config(run.config)))
    pipe.save_pretrained(out, safe_serialization=True)
    return out


__all__ = ["export_run", "scheduler_config"]
