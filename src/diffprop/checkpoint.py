"""Checkpoints: tensors in safetensors, everything else in JSON. Loading never executes code.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX/`` holding ``model.safetensors``,
``ema.safetensors``, ``optimizer.safetensors`` (its per-parameter state), ``rng.safetensors``
(generator states as uint8 tensors) and ``state.json`` (step, optimizer hyper-parameters, ...).
It is written into a temporary folder and renamed into place, so a crash never leaves half a
checkpoint behind, and only the newest ``keep_last`` are kept. Weights that are NaN or infinite are
never written. Everything read back is checked (names, shapes, dtypes, finiteness, sizes) before use,
and every problem is a one-line :class:`DiffpropError` naming the file.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DiffpropError, one_line

_STEP_DIR = re.compile(r"^step_(\d{8,})$")  # 8 digits, more past step 99,999,999
MAX_STEP = 2**63 - 1  # steps are int64 in torch and in every JSON reader
ADAM_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # AdamW's per-parameter state shaped like the parameter


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (by step, not by name)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def remove_partial(run_dir: str | Path) -> None:
    """Clear what a crash in :func:`save_checkpoint` can leave: a ``.tmp_step_N`` folder (removed) and, between its two
    renames, a step moved aside to ``.old_step_N`` (put back when ``step_N`` is missing). Only under the run lock."""
    root = Path(run_dir) / "checkpoints"
    for old in root.glob(".old_step_*") if root.is_dir() else ():
        final = root / old.name.removeprefix(".old_")
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)
    for tmp in root.glob(".tmp_step_*") if root.is_dir() else ():
        shutil.rmtree(tmp)


def set_aside(run_dir: str | Path, step: int) -> Path | None:
    """Rename checkpoint ``step`` (if there is one) to ``diverged_step_N``, out of :func:`list_checkpoints`' sight: a
    diverged run keeps it for inspection, and ``--resume latest`` no longer picks it."""
    ckpt = Path(run_dir) / "checkpoints" / f"step_{step:08d}"
    if not ckpt.is_dir():
        return None
    aside = ckpt.with_name(f"diverged_{ckpt.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(ckpt, aside)
    return aside


def last_good(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose model and EMA weights read back and are all finite; None if there is none."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            parts = [load_tensors(ckpt / f"{part}.safetensors") for part in ("model", "ema")]
        except DiffpropError:
            continue
        if not any(_nonfinite(p) for p in parts):
            return ckpt
    return None


def _nonfinite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_checkpoint(run_dir: str | Path, which: str = "latest") -> Path:
    """``latest`` or a path to one checkpoint folder (with a ``state.json``)."""
    if which != "latest":
        path = Path(which)
        if not (path / "state.json").is_file():
            raise DiffpropError(f"{path}: not a diffprop checkpoint folder (no state.json)")
        return path
    found = list_checkpoints(run_dir)
    if not found:
        aside = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("diverged_step_*"))
        raise DiffpropError(f"{run_dir}: no checkpoints found (looked in {Path(run_dir) / 'checkpoints'}"
                            + (f"; only {aside[-1]}, set aside when the run diverged)" if aside else ")"))
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
                    rng: dict[str, torch.Tensor], extra: dict, keep_last: int,
                    more: dict[str, dict] | None = None) -> Path:
    """Atomically write checkpoint ``step`` and prune to the newest ``keep_last``.

    ``more``: further named weight sets, each written as ``NAME.safetensors`` (a consistency model's target network).
    Non-finite model or EMA weights are refused (a diverged run must not leave a checkpoint that looks like its
    latest good one). A write that fails (a full disk) removes its partial folder and leaves the others as they were.
    """
    for name, tensors in (("model", model), ("EMA", ema)):
        if bad := _nonfinite(tensors):
            raise DiffpropError(f"training stopped at step {step}: the run diverged ({len(bad)} {name} weight tensors "
                                f"hold NaN or infinite values, e.g. {bad[0]!r}); no checkpoint written; last good "
                                f"checkpoint: {last_good(run_dir) or 'none'}")
    root = Path(run_dir) / "checkpoints"
    final, tmp, old = root / f"step_{step:08d}", root / f".tmp_step_{step:08d}", root / f".old_step_{step:08d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, tmp / "model.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file({k: v.cpu().contiguous() for k, v in rng.items()}, tmp / "rng.safetensors")
        for name, tensors in (more or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / f"{name}.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **extra}, indent=1))
        for f in tmp.iterdir():  # make the data durable before the rename publishes it
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error type
        shutil.rmtree(tmp, ignore_errors=True)
        prev = list_checkpoints(run_dir)
        raise DiffpropError(f"{tmp}: cannot write checkpoint step {step} ({_os_reason(e)}); the partial folder was "
                            f"removed; "
                            + (f"the previous checkpoint {prev[-1]} is intact" if prev else
                               "there is no earlier checkpoint")
                            ) from None
    if final.exists():  # the same step again (a resumed earlier checkpoint): replaced only once the new one is whole
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    for stale in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _os_reason(e: Exception) -> str:
    """The operating system's words for a failed write (safetensors wraps them: "... (os error 28)")."""
    if getattr(e, "strerror", None):
        return e.strerror
    m = re.search(r"os error (\d+)", str(e))
    return os.strerror(int(m.group(1))) if m else one_line(e)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DiffpropError(f"{path}: cannot read checkpoint tensors ({one_line(e)})") from None


def read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (a run's or a checkpoint's ``what``), or a one-line error naming the file."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DiffpropError(f"{path}: missing ({what})") from None
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, bad UTF-8, a 5000-digit number
        raise DiffpropError(f"{path}: cannot read the {what} ({one_line(e)[:200]})") from None
    if not isinstance(data, dict):
        raise DiffpropError(f"{path}: the {what} must be a JSON object, got {type(data).__name__}")
    return data


def read_state(ckpt: Path) -> dict:
    """``ckpt/state.json`` after checking its step, world size and optimizer metadata."""
    path = ckpt / "state.json"
    state = read_json(path, "checkpoint state")
    step, world = state.get("step"), state.get("world_size", 1)
    if type(step) is not int or not 0 <= step <= MAX_STEP:
        raise DiffpropError(f"{path}: 'step' must be an integer in 0..{MAX_STEP}, got {_short(step)}")
    if (m := _STEP_DIR.match(ckpt.name)) and int(m.group(1)) != step:
        raise DiffpropError(f"{path}: 'step' is {step} but the folder is {ckpt.name}")
    if type(world) is not int or not 1 <= world <= 2**20:
        raise DiffpropError(f"{path}: 'world_size' must be an integer in 1..{2**20}, got {_short(world)}")
    opt = state.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) for g in opt["param_groups"]) and isinstance(opt.get("scalars"), dict)):
        raise DiffpropError(f"{path}: 'optimizer' must be an object with a 'param_groups' list of objects and a "
                            f"'scalars' object")
    return state


def load_checkpoint(path: str | Path, parts=("model", "ema", "optimizer", "rng")) -> dict:
    """Read a checkpoint folder: ``state`` (the checked JSON) plus the requested tensor files, as stored; check them
    against the model with :func:`check_tensors`, :func:`check_optimizer` and :func:`check_rng` before use."""
    path = Path(path)
    out = {"state": read_state(path)}
    for part in parts:
        out[part] = load_tensors(path / f"{part}.safetensors")
    return out


def check_tensors(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Refuse ``tensors`` (read from ``path``) unless they have exactly ``expected``'s names, shapes and dtypes and are
    finite: ``load_state_dict`` would cast another dtype silently, and NaN weights only show as NaN samples."""
    missing, extra = [k for k in expected if k not in tensors], [k for k in tensors if k not in expected]
    if missing or extra:
        which = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which"
        raise DiffpropError(f"{path}: does not match the run's model: it {which} the model does not have "
                            f"({len(missing)} missing, {len(extra)} unexpected of {len(expected)} tensors)")
    for k, ref in expected.items():
        t = tensors[k]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise DiffpropError(f"{path}: tensor {k!r} is {t.dtype} {tuple(t.shape)} but the run's model has "
                                f"{ref.dtype} {tuple(ref.shape)}")
    if bad := _nonfinite(tensors):
        raise DiffpropError(f"{path}: {bad[0]!r} (and {len(bad) - 1} more tensors) hold NaN or infinite values: the "
                            f"run diverged by this checkpoint; use an earlier one")


def check_optimizer(path: Path, tensors: dict[str, torch.Tensor], scalars: dict, params: list[torch.Tensor]) -> None:
    """AdamW state read from ``path``: every entry ``INDEX.NAME`` names one of ``params``; moments have its shape and
    dtype, ``step`` is a scalar; all finite."""
    for key, value in list(tensors.items()) + list(scalars.items()):
        idx, _, name = key.partition(".")
        if not idx.isdigit() or int(idx) >= len(params):
            raise DiffpropError(f"{path}: optimizer entry {_short(key)} names no parameter (the model has "
                                f"{len(params)}: 0..{len(params) - 1})")
        p = params[int(idx)]
        if key in scalars:
            if type(value) not in (int, float):
                raise DiffpropError(f"{path.parent / 'state.json'}: optimizer scalar {_short(key)} must be a number, "
                                    f"got {_short(value)}")
            continue
        want = (p.shape, p.dtype) if name in ADAM_SHAPED else (torch.Size([]), value.dtype) if name == "step" else None
        if want is None:
            raise DiffpropError(f"{path}: unknown optimizer entry {_short(key)}; AdamW keeps "
                                f"{', '.join(ADAM_SHAPED)} and step")
        if (value.shape, value.dtype) != want or not value.is_floating_point():
            raise DiffpropError(f"{path}: optimizer entry {key!r} is {value.dtype} {tuple(value.shape)} but parameter "
                                f"{idx} is {p.dtype} {tuple(p.shape)}")
    if bad := _nonfinite(tensors):
        raise DiffpropError(f"{path}: optimizer entry {bad[0]!r} holds NaN or infinite values: the run diverged by "
                            f"this checkpoint; use an earlier one")


def _same_kind(value, ref) -> bool:
    if isinstance(ref, bool) or ref is None or isinstance(ref, str):
        return type(value) is type(ref)
    if isinstance(ref, (int, float)):
        return type(value) in (int, float) and math.isfinite(value)
    if isinstance(ref, (list, tuple)):
        return isinstance(value, list) and len(value) == len(ref) and all(map(_same_kind, value, ref))
    return True  # a setting of a kind JSON cannot hold was not written


def check_param_groups(path: Path, saved: list[dict], live: list[dict]) -> None:
    """The optimizer's parameter groups read from ``path`` against the live ones: as many, over the same parameters,
    every setting of the same kind and finite (``load_state_dict`` takes anything and the next step fails on it).
    Settings only one side has are left to torch, which fills those a newer version added."""
    if len(saved) != len(live):
        raise DiffpropError(f"{path}: {len(saved)} optimizer parameter groups, the run's optimizer has {len(live)}")
    for g, ref in zip(saved, live):
        if g.get("params") != list(ref["params"]):
            raise DiffpropError(f"{path}: an optimizer parameter group lists parameters {_short(g.get('params'))}; "
                                f"the run's model has {len(ref['params'])} (0..{len(ref['params']) - 1})")
        for k in ("lr", "betas", "eps", "weight_decay"):
            if k not in g:
                raise DiffpropError(f"{path}: the optimizer parameter group lacks {k!r}")
        for k in set(g) & set(ref) - {"params"}:
            if not _same_kind(g[k], ref[k]):
                raise DiffpropError(f"{path}: optimizer setting {k!r} is {_short(g[k])}; expected one like "
                                    f"{_short(ref[k])}")


def check_rng(path: Path, tensors: dict[str, torch.Tensor], sizes: dict[str, int], world: int) -> None:
    """Generator states read from ``path``: one row of the right size per process for each of ``sizes``."""
    for name, size in sizes.items():
        t = tensors.get(name)
        if t is None:
            held = ", ".join(map(repr, tensors)) or "none"
            raise DiffpropError(f"{path}: no {name!r} generator state (holds {held})")
        if t.dtype != torch.uint8 or tuple(t.shape) != (world, size):
            raise DiffpropError(f"{path}: generator state {name!r} is {t.dtype} {tuple(t.shape)}; expected uint8 "
                                f"({world}, {size}): one {size}-byte state per process")
