"""Start a run from pretrained weights (``diffprop train CONFIG --init-from SOURCE``): fine-tuning.

``SOURCE`` is a diffusers folder (a ``DDPMPipeline`` or a bare ``UNet2DModel`` with its scheduler config, read by
:func:`~diffprop.diffusers_io.load_diffusers`), a diffprop run folder (its newest checkpoint) or one checkpoint
folder of a run; a run gives its EMA weights, the model it samples with. Only the weights are taken: the optimizer
starts afresh and the trainer's EMA starts from the loaded weights. The config decides everything else, so its model
must be the source's model and its schedule (T and every beta) and parameterization the source's; a mismatch is
refused naming both. Regularizers then train around the pretrained model as around any other, as FP-Diffusion
(Lai et al. 2022) and Consistent Diffusion Models (Daras et al. 2023) fine-tune pretrained models.

With ``model.smd`` the weights go into the SMD network's backbone and SMD's modulation starts at zero (the
official variant's hypernet blocks end in a zeroed layer, the embedding variant's ``f_phi`` already does), so at
step 0 the SMD denoiser is the pretrained model for every eta (002 Sec. 4); a source that is itself an SMD run
of the same settings initialises the whole network.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .config import Config
from .denoisers import Denoiser, SMDDenoiser
from .errors import DiffpropError
from .nets import UNet

IGNORED = ("dropout", "num_train_timesteps")  # UNet2DModel settings a fine-tune may change / that do not matter


def _schedule_text(name: str, betas: torch.Tensor) -> str:
    return f"{name}, T = {len(betas) - 1}, beta_1 = {betas[1]:.6g} .. beta_T = {betas[-1]:.6g}"


def _unet_settings(model, ignore=()) -> dict:
    return {k: json.loads(json.dumps(v)) for k, v in model.config.items()
            if not k.startswith("_") and k not in IGNORED + tuple(ignore)}


def _check_unet(source: str, theirs: UNet, ours: UNet, cfg: Config) -> None:
    ignore = ("class_embed_type",) if cfg.model.smd and cfg.smd.variant == "embedding" else ()
    a, b = _unet_settings(theirs.model, ignore), _unet_settings(ours.model, ignore)
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            raise DiffpropError(f"--init-from {source}: its UNet2DModel has {k} = {a.get(k)!r}, the config's "
                                f"(model.preset {cfg.model.preset!r}, data {cfg.data.name}) has {b.get(k)!r}")


def _load(source: str, target: nn.Module, weights: dict) -> None:
    """``target.load_state_dict(weights)``, a mismatch named in one line."""
    mine = target.state_dict()
    for k in sorted(set(mine) | set(weights)):
        if k not in mine or k not in weights or mine[k].shape != weights[k].shape:
            theirs = tuple(weights[k].shape) if k in weights else "nothing"
            ours = tuple(mine[k].shape) if k in mine else "nothing"
            raise DiffpropError(f"--init-from {source}: its weights do not fit the config's model: {k} is {theirs} "
                                f"there and {ours} here")
    target.load_state_dict(weights)


def _source(path: Path) -> tuple[Denoiser, str, dict]:
    """The source as a denoiser, its schedule's name, and what to record about it."""
    from .runs import load_run

    if (path / "state.json").is_file() and (path.parent.parent / "config.toml").is_file():  # one checkpoint
        run = load_run(path.parent.parent, checkpoint=str(path))
    elif (path / "config.toml").is_file():
        run = load_run(path)
    else:
        from .diffusers_io import load_diffusers

        denoiser, settings = load_diffusers(path)
        return denoiser, settings["beta_schedule"], {"kind": "diffusers", "scheduler": settings}
    return (run.denoiser, run.config.diffusion.schedule,
            {"kind": "run", "run": str(run.dir), "step": run.step, "ema": True, "smd": run.config.model.smd})


def init_from(denoiser: Denoiser, cfg: Config, source: str | Path) -> dict:
    """Load ``source``'s weights into ``denoiser`` (built from ``cfg``); returns what was loaded (for init.json)."""
    path = Path(source)
    if not path.is_dir():
        raise DiffpropError(f"--init-from {source}: folder not found")
    if cfg.diffusion.process != "discrete":
        raise DiffpropError(f"--init-from starts from a model of the discrete chain; the config's diffusion.process is "
                            f"{cfg.diffusion.process!r}")
    theirs, schedule, record = _source(path)
    if theirs.schedule is None:
        raise DiffpropError(f"--init-from {source}: its model is on the {theirs.process.name} process; the config's "
                            f"is the discrete chain")
    ours_b, theirs_b = denoiser.schedule.betas, theirs.schedule.betas
    if len(ours_b) != len(theirs_b) or not torch.allclose(ours_b, theirs_b, rtol=1e-10, atol=0):
        raise DiffpropError(f"--init-from {source}: its schedule ({_schedule_text(schedule, theirs_b)}) is not the "
                            f"config's ({_schedule_text(cfg.diffusion.schedule, ours_b)})")
    if theirs.parameterization != denoiser.parameterization:
        raise DiffpropError(f"--init-from {source}: its model predicts {theirs.parameterization!r}, the config's "
                            f"diffusion.parameterization is {denoiser.parameterization!r}")
    smd_source = isinstance(theirs, SMDDenoiser)
    if smd_source and not isinstance(denoiser, SMDDenoiser):
        raise DiffpropError(f"--init-from {source}: it is an SMD model and the config's is not (model.smd = false)")
    if smd_source and type(theirs.net) is not type(denoiser.net):
        raise DiffpropError(f"--init-from {source}: its SMD network is an {type(theirs.net).__name__}, the config's "
                            f"(smd.variant = {cfg.smd.variant!r}) an {type(denoiser.net).__name__}")
    ours_backbone = denoiser.net.backbone if isinstance(denoiser, SMDDenoiser) else denoiser.net
    theirs_backbone = theirs.net.backbone if smd_source else theirs.net
    if type(theirs_backbone) is not type(ours_backbone):
        raise DiffpropError(f"--init-from {source}: its backbone is a {type(theirs_backbone).__name__}, the "
                            f"config's (model.kind = {cfg.model.kind!r}) a {type(ours_backbone).__name__}")
    if isinstance(ours_backbone, UNet):
        _check_unet(str(source), theirs_backbone, ours_backbone, cfg)
    _load(str(source), denoiser.net if smd_source else ours_backbone, theirs.net.state_dict())
    if isinstance(denoiser, SMDDenoiser) and not smd_source:
        denoiser.net.start_as_backbone()
    return {"init_from": str(source), **record}


__all__ = ["init_from"]
