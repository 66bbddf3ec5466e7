"""A run folder: what it holds and how to turn it back into a denoiser.

``RUN_DIR/config.toml`` (the resolved config), ``RUN_DIR/data.json`` (data shape, scaler),
``RUN_DIR/checkpoints/`` (see :mod:`.checkpoint`), ``RUN_DIR/log.jsonl``, plots and samples.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import Config, load_config, read_toml
from .denoisers import Denoiser, SMDDenoiser
from .errors import DiffpropError
from .nets import build_net, build_smd_net
from .schedules import NoiseSchedule


def made_with(run_dir: Path, cfg: Config) -> bool:
    """Whether ``run_dir`` holds a run of exactly ``cfg``: its ``config.toml`` names every key with the same value. (Not
    :func:`load_config`, which fills keys added since with today's defaults, so a run made before a new option
    existed would pass for one made with it.)"""
    try:
        return read_toml(run_dir / "config.toml") == cfg.to_dict()
    except DiffpropError:  # no config or not TOML: not a run of ours
        return False


def build_schedule(cfg: Config) -> NoiseSchedule:
    d = cfg.diffusion
    return NoiseSchedule.from_config(d.schedule, d.T, d.beta_start or None, d.beta_end or None)  # 0: scaled


def build_denoiser(cfg: Config, data_shape: tuple[int, ...]) -> Denoiser:
    """The config's denoiser: its backbone, or with ``model.smd`` an :class:`SMDDenoiser` around it."""
    m, s, shape = cfg.model, cfg.smd, tuple(data_shape)
    opts = (dict(width=m.width, depth=m.depth, time_dim=m.time_dim, dropout=m.dropout) if m.kind == "mlp"
            else dict(preset=m.preset, **({"dropout": m.dropout} if m.dropout else {})))
    if not m.smd:
        return Denoiser(build_net(m.kind, shape, **opts), build_schedule(cfg), cfg.diffusion.parameterization,
                        cfg.diffusion.var_type)
    net = build_smd_net(m.kind, shape, s.variant, latent_dim=s.latent_dim, hyper_layers=s.hyper_layers,
                        eta_dim=s.eta_dim, g_width=s.g_width, **opts)
    return SMDDenoiser(net, build_schedule(cfg), cfg.diffusion.parameterization, n_eta=s.n_eta,
                       loss=s.loss, var_type=cfg.diffusion.var_type)


def write_data_info(run_dir: Path, dataset) -> None:
    info = {"name": dataset.name, "data_shape": list(dataset.data_shape), "is_image": dataset.is_image,
            "scaler": dataset.scaler}
    (Path(run_dir) / "data.json").write_text(json.dumps(info, indent=1))


@dataclass
class Run:
    dir: Path
    config: Config
    data: dict  # data.json
    denoiser: Denoiser
    step: int


def load_run(run_dir: str | Path, *, ema: bool = True, checkpoint: str = "latest",
             device: str | torch.device = "cpu") -> Run:
    """The trained denoiser of a run (its EMA weights unless ``ema=False``), in eval mode on ``device``."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise DiffpropError(f"{run_dir}: not a diffprop run folder (no config.toml)")
    cfg = load_config(run_dir / "config.toml", saved=True)
    try:
        data = json.loads((run_dir / "data.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DiffpropError(f"{run_dir / 'data.json'}: cannot read ({e})") from None
    ckpt_dir = resolve_checkpoint(run_dir, checkpoint)
    part = "ema" if ema else "model"
    ckpt = load_checkpoint(ckpt_dir, parts=(part,))
    denoiser = build_denoiser(cfg, tuple(data["data_shape"]))
    try:
        denoiser.net.load_state_dict(ckpt[part])
    except RuntimeError as e:
        raise DiffpropError(f"{ckpt_dir}: weights do not match the run's config ({str(e).splitlines()[0]})") from None
    return Run(run_dir, cfg, data, denoiser.to(device).eval(), ckpt["state"]["step"])
