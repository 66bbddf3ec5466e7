"""Checkpoints: tensors in safetensors, everything else in JSON. Loading never executes code.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX/`` holding ``model.safetensors``,
``ema.safetensors``, ``optimizer.safetensors`` (its per-parameter state), ``rng.safetensors``
(generator states as uint8 tensors) and ``state.json`` (step, optimizer hyper-parameters, ...).
It is written into a temporary folder and renamed into place, so a crash never leaves half a
checkpoint behind, and only the newest ``keep_last`` are kept.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DiffpropError

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def resolve_checkpoint(run_dir: str | Path, which: str = "latest") -> Path:
    """``latest`` or a path to one checkpoint folder."""
    if which != "latest":
        path = Path(which)
        if not (path / "state.json").is_file():
            raise DiffpropError(f"{path}: not a diffprop checkpoint folder (no state.json)")
        return path
    found = list_checkpoints(run_dir)
    if not found:
        raise DiffpropError(f"{run_dir}: no checkpoints found (looked in {Path(run_dir) / 'checkpoints'})")
    return found[-1]


def optimizer_to_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON-able remainder."""
    tensors, scalars = {}, {}
    for idx, st in state_dict["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | Path, step: int, *, model: dict, ema: dict, optimizer: dict,
                    rng: dict[str, torch.Tensor], extra: dict, keep_last: int) -> Path:
    """Atomically write checkpoint ``step`` and prune to the newest ``keep_last``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, tmp / "model.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({k: v.cpu().contiguous() for k, v in rng.items()}, tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **extra}, indent=1))
    for f in tmp.iterdir():  # make the data durable before the rename publishes it
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise DiffpropError(f"{path}: cannot read checkpoint tensors ({e})") from None


def load_checkpoint(path: str | Path, parts=("model", "ema", "optimizer", "rng")) -> dict:
    """Read a checkpoint folder: ``state`` (the JSON) plus the requested tensor files."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DiffpropError(f"{path / 'state.json'}: cannot read checkpoint state ({e})") from None
    out = {"state": state}
    for part in parts:
        out[part] = load_tensors(path / f"{part}.safetensors")
    if "optimizer" in out:
        out["optimizer"] = optimizer_from_tensors(out["optimizer"], state["optimizer"])
    return out
