"""A run folder: what it holds and how to turn it back into a denoiser.

``RUN_DIR/config.toml`` (the resolved config), ``RUN_DIR/data.json`` (data shape, scaler), for a continuous-time
process ``RUN_DIR/process.json`` (its resolved parameters: VE's ``sigma_max`` and EDM's ``sigma_data`` default from
the training data), ``RUN_DIR/checkpoints/`` (see :mod:`.checkpoint`), ``RUN_DIR/log.jsonl``, plots and samples;
while a trainer writes it, ``RUN_DIR/.lock`` (see :func:`lock_run`).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import check_tensors, list_checkpoints, load_checkpoint, read_json, resolve_checkpoint
from .config import Config, load_config, read_toml
from .denoisers import Denoiser, ProcessDenoiser, SMDDenoiser
from .errors import DiffpropError
from .limits import check_fits
from .nets import build_net, build_smd_net
from .processes import PROCESS_CONFIGS, Process, build_process
from .schedules import NoiseSchedule


def made_with(run_dir: Path, cfg: Config) -> bool:
    """Whether ``run_dir`` holds a run of exactly ``cfg``: its ``config.toml`` names every key with the same value. (Not
    :func:`load_config`, which fills keys added since with today's defaults, so a run made before a new option
    existed would pass for one made with it.) One exception: a whole section added since (a new regularizer's),
    which ``cfg`` leaves at its defaults, is no difference, as a section is read only when a compared key (its
    name in ``objective.regularizers``, ...) switches it on."""
    try:
        saved = read_toml(run_dir / "config.toml")
    except DiffpropError:  # no config or not TOML: not a run of ours
        return False
    want, default = cfg.to_dict(), Config().to_dict()
    for name in set(want) - set(saved):
        if isinstance(want[name], dict) and want[name] == default.get(name):
            del want[name]
    return saved == want


def build_schedule(cfg: Config) -> NoiseSchedule:
    d = cfg.diffusion
    return NoiseSchedule.from_config(d.schedule, d.T, d.beta_start, d.beta_end)  # None: scaled


def _net(cfg: Config, shape: tuple[int, ...]) -> torch.nn.Module:
    m, s = cfg.model, cfg.smd
    opts = (dict(width=m.width, depth=m.depth, time_dim=m.time_dim, dropout=m.dropout or 0.0) if m.kind == "mlp"
            else dict(preset=m.preset, **({"dropout": m.dropout} if m.dropout is not None else {})))
    if not m.smd:
        return build_net(m.kind, shape, **opts)
    return build_smd_net(m.kind, shape, s.variant, latent_dim=s.latent_dim, hyper_layers=s.hyper_layers,
                         eta_dim=s.eta_dim, g_width=s.g_width, **opts)


TRAINING_COPIES = 5  # float32 copies of the weights while training: weights, gradient, EMA, AdamW's two moments


def process_params(process: Process) -> dict:
    """A continuous-time process's resolved parameters (the fields of its config dataclass) and name."""
    return {"name": process.name, **{f.name: float(getattr(process, f.name))
                                     for f in dataclasses.fields(PROCESS_CONFIGS[process.name])}}


def build_run_process(cfg: Config, data: torch.Tensor | None = None, params: dict | None = None) -> Process | None:
    """The config's continuous-time process (None for the discrete chain): from saved ``params``
    (``process.json``), else from ``diffusion.*`` with the defaults that depend on the training ``data``."""
    d = cfg.diffusion
    if d.process == "discrete":
        return None
    if params is not None:
        return build_process(d.process, **{k: v for k, v in params.items() if k != "name"})
    options = {f.name: getattr(d, f.name) for f in dataclasses.fields(PROCESS_CONFIGS[d.process])}
    return build_process(d.process, data=data, **options)


def build_denoiser(cfg: Config, data_shape: tuple[int, ...], *, copies: int = 1, data: torch.Tensor | None = None,
                   process: dict | None = None) -> Denoiser | ProcessDenoiser:
    """The config's denoiser: its backbone, with ``model.smd`` an :class:`SMDDenoiser` around it, or on a
    continuous-time ``diffusion.process`` a :class:`ProcessDenoiser` (its process from the saved parameters
    ``process``, else from the config and the training ``data``). Refused before any weight is allocated when
    ``copies`` float32 copies of its parameters exceed this machine's memory."""
    m, shape = cfg.model, tuple(data_shape)
    with torch.device("meta"):  # counted without allocating (and without drawing from the seeded generator)
        n = sum(p.numel() for p in _net(cfg, shape).parameters())
    size = f"width {m.width}, depth {m.depth}" if m.kind == "mlp" else f"preset {m.preset!r}"
    check_fits(4.0 * n * copies, f"config: a model of {n:.3g} parameters (model.kind = {m.kind!r}, {size}, data "
               f"{shape})" + (" in training (weights, gradient, EMA, two AdamW moments)" if copies > 1 else ""))
    net = _net(cfg, shape)
    proc = build_run_process(cfg, data, process)
    if proc is not None:
        return ProcessDenoiser(net, proc, cfg.diffusion.parameterization).set_var_type(cfg.diffusion.var_type)
    if not m.smd:
        return Denoiser(net, build_schedule(cfg), cfg.diffusion.parameterization, cfg.diffusion.var_type)
    return SMDDenoiser(net, build_schedule(cfg), cfg.diffusion.parameterization, n_eta=cfg.smd.n_eta,
                       loss=cfg.smd.loss, var_type=cfg.diffusion.var_type)


def write_data_info(run_dir: Path, dataset) -> None:
    info = {"name": dataset.name, "data_shape": list(dataset.data_shape), "is_image": dataset.is_image,
            "scaler": dataset.scaler}
    (Path(run_dir) / "data.json").write_text(json.dumps(info, indent=1))


def write_process_info(run_dir: Path, denoiser) -> None:
    """``RUN_DIR/process.json``: the resolved parameters of a continuous-time process (nothing for the discrete chain,
    which the config fixes)."""
    if isinstance(denoiser, ProcessDenoiser):
        (Path(run_dir) / "process.json").write_text(json.dumps(process_params(denoiser.process), indent=1))


def read_process_info(run_dir: Path, cfg: Config) -> dict | None:
    """The saved parameters of the run's continuous-time process (None for the discrete chain), checked: the
    config's process name and its config dataclass's keys, each a finite number."""
    name = cfg.diffusion.process
    if name == "discrete":
        return None
    path = Path(run_dir) / "process.json"
    info = read_json(path, "run's noise process")
    keys = {f.name for f in dataclasses.fields(PROCESS_CONFIGS[name])}
    if info.get("name") != name or set(info) - {"name"} != keys or not all(
            type(info[k]) in (int, float) and math.isfinite(info[k]) for k in keys):
        raise DiffpropError(f"{path}: needs 'name' = {name!r} (the config's diffusion.process) and exactly "
                            f"{', '.join(sorted(keys))}, finite numbers")
    return info


def read_data_info(run_dir: Path) -> dict:
    """``RUN_DIR/data.json`` after checking what is read from it: the dataset's name, 1 to 3 positive sizes of one
    example and, for csv data, a scaler of one finite mean and positive std per column (or null)."""
    path = Path(run_dir) / "data.json"
    info = read_json(path, "run's data description")
    name, shape, scaler = info.get("name"), info.get("data_shape"), info.get("scaler")
    if not (isinstance(name, str) and isinstance(shape, list) and 1 <= len(shape) <= 3
            and all(type(n) is int and 1 <= n <= 2**20 for n in shape)):
        raise DiffpropError(f"{path}: needs 'name' (a string) and 'data_shape' (1 to 3 sizes in 1..{2**20}); got "
                            f"{str(name)[:40]!r} and {str(shape)[:40]}")
    if scaler is not None:
        ok = (isinstance(scaler, dict) and len(shape) == 1 and all(
            isinstance(scaler.get(k), list) and len(scaler[k]) == shape[0]
            and all(type(v) in (int, float) and math.isfinite(v) for v in scaler[k]) for k in ("mean", "std"))
            and all(v > 0 for v in scaler["std"]))
        if not ok:
            raise DiffpropError(f"{path}: 'scaler' must be null or hold 'mean' and 'std', {shape[0]} finite numbers "
                                f"each (one per column), every std > 0")
    return info


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
    data = read_data_info(run_dir)
    part = "ema" if ema else "model"
    for attempt in (1, 2):
        ckpt_dir = resolve_checkpoint(run_dir, checkpoint)
        try:
            ckpt = load_checkpoint(ckpt_dir, parts=(part,))
            break
        except DiffpropError:
            # a training still running prunes its oldest checkpoint (keep_last) once a newer one is complete, so the
            # newest one can vanish while it is read: read the one that replaced it
            if attempt == 2 or checkpoint != "latest" or list_checkpoints(run_dir)[-1:] == [ckpt_dir]:
                raise
    denoiser = build_denoiser(cfg, tuple(data["data_shape"]), process=read_process_info(run_dir, cfg))
    check_tensors(ckpt_dir / f"{part}.safetensors", ckpt[part], denoiser.net.state_dict())
    denoiser.net.load_state_dict(ckpt[part])
    return Run(run_dir, cfg, data, denoiser.to(device).eval(), ckpt["state"]["step"])


_HELD: dict[Path, list] = {}  # run folders this process holds locked: resolved path -> [fd, holders, created]


def lock_run(run_dir: str | Path) -> Callable[[], None]:
    """Take ``run_dir``'s exclusive lock, ``RUN_DIR/.lock``, creating the folder if needed; returns the function that
    releases it (and removes the folder again if it was created here and is still empty).

    An OS lock (``fcntl.flock``) rather than a lock file whose existence counts: the kernel drops it when the process
    exits or is killed, so a crash never leaves a stale lock to clear by hand. (The ``filelock`` package wraps the same
    call; a plain flock needs no dependency.) Re-entrant within a process; another process gets a one-line error."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        return _releaser(key)
    if run_dir.exists() and not run_dir.is_dir():
        raise DiffpropError(f"{run_dir}: is a file, not a run folder; choose another --out")
    created = not run_dir.exists()
    path = run_dir / ".lock"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 20, 0).decode(errors="replace").strip()
                os.close(fd)
                raise DiffpropError(f"{run_dir}: another process{f' (pid {holder})' if holder.isdigit() else ''} is "
                                    f"training this run; wait for it to end or choose another --out") from None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed that lock file while we waited for it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as e:
        raise DiffpropError(f"{path}: cannot create the run's lock file ({e.strerror})") from None
    _HELD[key] = [fd, 1, run_dir if created else None]
    return _releaser(key)


def _releaser(key: Path) -> Callable[[], None]:
    done = []

    def release() -> None:
        if done or key not in _HELD:
            return
        done.append(True)
        held = _HELD[key]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            fd, _, created = held
            (key / ".lock").unlink(missing_ok=True)  # ours: no one else unlinks a lock file that is held
            os.close(fd)
            if created is not None:
                try:
                    created.rmdir()  # a run refused before it wrote anything leaves no folder behind
                except OSError:
                    pass
    return release
