"""Array files: ``.npz`` (vectors or images, used as-is) and numeric ``.csv`` (standardized per column)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import DiffpropError
from .images import one_line, resize_images

FLOAT32_MAX = float(np.finfo(np.float32).max)


def load_npz(path: Path, image_size: int | None) -> torch.Tensor:
    """Array ``x``, else ``samples``, else the only array of an ``.npz`` (a plain ``.npy`` also works),
    as float32, never unpickling. 2-D -> vectors (N, D); 3-D -> one-channel images (N, 1, H, W);
    4-D -> images (N, C, H, W). Image values are used as-is and are expected in [-1, 1]; an
    ``image_size`` different from the stored size resizes them with :func:`resize_images`."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy falls back to (refused) pickle for files that are neither zip nor .npy
        detail = "neither a zip archive of .npy arrays nor a .npy file" if "pickle" in str(e) else one_line(e)
        raise DiffpropError(f"{path}: not a valid .npz file ({detail})") from None
    if isinstance(loaded, np.ndarray):
        key, arr = "the array", loaded
    else:
        with loaded:
            keys = loaded.files
            if not keys:
                raise DiffpropError(f"{path}: the .npz holds no arrays")
            key = next((k for k in ("x", "samples") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DiffpropError(f"{path}: no array named 'x' or 'samples' among {keys}")
            try:
                arr = loaded[key]
            except Exception as e:  # object arrays need pickle, which allow_pickle=False refuses
                problem = "holds Python objects (object or ragged array), refusing to unpickle" \
                    if "pickle" in str(e) else "is corrupt"
                raise DiffpropError(f"{path}: array '{key}' {problem} ({one_line(e)})") from None
    if not isinstance(arr, np.ndarray):  # a zip member that is no .npy file comes back as its raw bytes
        raise DiffpropError(f"{path}: member '{key}' is not a .npy array")
    if arr.dtype.kind not in "biuf":
        raise DiffpropError(f"{path}: array '{key}' has non-numeric dtype {arr.dtype}")
    if arr.ndim not in (2, 3, 4) or 0 in arr.shape:
        raise DiffpropError(f"{path}: array '{key}' has shape {arr.shape}; expected (N, D) vectors, "
                            "(N, H, W) or (N, C, H, W) images, every size >= 1")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise DiffpropError(f"{path}: array '{key}' contains NaN or infinite values, or values beyond float32's "
                            f"{FLOAT32_MAX:.3g}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return resize_images(x, image_size) if x.ndim == 4 and image_size is not None else x


def _is_number(field: str) -> bool:
    try:
        float(field)
        return True
    except ValueError:
        return False


def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Column names and float64 rows of a numeric CSV. The first row is a header when none of its
    fields is a number; without one the columns are named col1, col2, ..."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DiffpropError(f"{path}: not a readable CSV text file ({one_line(e)})") from None
    if lines and not any(_is_number(c) for c in lines[0][1]):
        columns, lines = [c.strip() for c in lines[0][1]], lines[1:]
    else:
        columns = [f"col{i + 1}" for i in range(len(lines[0][1]))] if lines else []
    if not lines:
        raise DiffpropError(f"{path}: the CSV file has no data rows")
    rows = []
    for line, row in lines:
        if len(row) != len(columns):
            raise DiffpropError(f"{path}: line {line} has {len(row)} fields, expected {len(columns)}")
        values = []
        for name, field in zip(columns, row):
            try:
                v = float(field)
            except ValueError:
                raise DiffpropError(f"{path}: column '{name}' is not numeric "
                                    f"(value {field.strip()!r} on line {line})") from None
            if not math.isfinite(v):
                raise DiffpropError(f"{path}: column '{name}' has a non-finite value "
                                    f"({field.strip()!r} on line {line})")
            if abs(v) > FLOAT32_MAX:  # samples come back in the file's units as float32
                raise DiffpropError(f"{path}: column '{name}' has {field.strip()[:30]!r} on line {line}, beyond "
                                    f"float32's {FLOAT32_MAX:.3g}; rescale the column")
            values.append(v)
        rows.append(values)
    return columns, np.array(rows, dtype=np.float64)


def _check_scaler(path: Path, scaler: dict, columns: list[str]) -> dict:
    """A given scaler as plain lists, after checking it fits this file's columns."""
    try:
        mean, std = [float(v) for v in scaler["mean"]], [float(v) for v in scaler["std"]]
        names = [str(c) for c in scaler.get("columns", columns)]
    except (KeyError, TypeError, ValueError) as e:
        raise DiffpropError(f"{path}: invalid scaler, need lists 'mean' and 'std' ({one_line(e)})") from None
    if names != columns or len(mean) != len(columns) or len(std) != len(columns):
        raise DiffpropError(f"{path}: the scaler's columns {names} (with {len(mean)} means, {len(std)} stds) "
                            f"do not match the file's columns {columns}")
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise DiffpropError(f"{path}: invalid scaler, means must be finite and stds finite and positive")
    return {"columns": names, "mean": mean, "std": std}


def load_csv(path: Path, scaler: dict | None) -> tuple[torch.Tensor, dict]:
    """Standardized float32 (N, D) data and its scaler ``{"columns", "mean", "std"}``: each column
    has zero mean and unit (population) std, a constant column std 1. A given ``scaler`` is reused
    instead of fitting a new one."""
    columns, data = _read_csv(path)
    if scaler is None:
        std = data.std(axis=0)
        scaler = {"columns": columns, "mean": data.mean(axis=0).tolist(),
                  "std": np.where(std > 0, std, 1.0).tolist()}
    else:
        scaler = _check_scaler(path, scaler, columns)
    x = (data - np.array(scaler["mean"])) / np.array(scaler["std"])
    return torch.from_numpy(x).float(), scaler
