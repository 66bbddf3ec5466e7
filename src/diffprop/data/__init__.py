"""Datasets by name: ``load_dataset("gmm-grid")``, ``load_dataset("csv:/path/data.csv")``, ...

Every dataset is one float32 tensor ``x`` of shape (N, *data_shape); images are (N, C, H, W) in
[-1, 1]. ``num_samples`` and ``seed`` only apply to the generated 2-D datasets and ``image_size``
only to image datasets; each is ignored elsewhere. Only ``csv:`` data is standardized; its scaler
maps model units back to the file's units.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DiffpropError
from ..mixtures import GaussianMixture
from .images import load_cifar10, load_digits, load_image_folder
from .tabular import load_csv, load_npz
from .toy import TOY_NAMES, load_toy

__all__ = ["Dataset", "load_dataset", "DATASET_NAMES"]

_FOLDER_PREFIXES = ("image-folder", "cifar10")
_FILE_PREFIXES = ("npz", "csv")
DATASET_NAMES: tuple[str, ...] = (*TOY_NAMES, "digits",
                                  *(f"{p}:PATH" for p in _FOLDER_PREFIXES + _FILE_PREFIXES))


@dataclass
class Dataset:
    name: str  # the spec given, e.g. "gmm-grid" or "csv:/path/x.csv"
    x: torch.Tensor  # float32 (N, *data_shape); images in [-1, 1] as (N, C, H, W)
    data_shape: tuple[int, ...]
    is_image: bool
    mixture: GaussianMixture | None = None  # exact parameters of gmm-grid / gmm-ring
    scaler: dict | None = None  # csv only: {"columns": [...], "mean": [...], "std": [...]}

    def to_data_units(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> the file's units (``x * std + mean`` per column); identity without a scaler."""
        return to_data_units(x, self.scaler)

    def from_data_units(self, x: torch.Tensor) -> torch.Tensor:
        """The file's units -> model units (``(x - mean) / std``); identity without a scaler."""
        if self.scaler is None:
            return x
        mean, std = _affine(x, self.scaler)
        return (x - mean) / std


def _affine(x: torch.Tensor, scaler: dict) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(scaler["mean"], dtype=x.dtype, device=x.device)
    return mean, torch.tensor(scaler["std"], dtype=x.dtype, device=x.device)


def to_data_units(x: torch.Tensor, scaler: dict | None) -> torch.Tensor:
    """Model units -> data units with a saved scaler (a run's ``data.json``); identity for ``None``."""
    if scaler is None:
        return x
    mean, std = _affine(x, scaler)
    return x * std + mean


def _existing(spec: str, path: Path, folder: bool) -> Path:
    """``path`` after checking it exists and is a folder (or a file)."""
    if not path.exists():
        raise DiffpropError(f"dataset '{spec}': {path} does not exist")
    if folder != path.is_dir():
        raise DiffpropError(f"dataset '{spec}': {path} is {'not ' if folder else ''}a folder; "
                            f"expected a {'folder' if folder else 'file'}")
    return path


def load_dataset(spec: str, *, num_samples: int = 20000, image_size: int | None = None,
                 seed: int = 0, scaler: dict | None = None) -> Dataset:
    """Load the dataset named by ``spec`` (one of :data:`DATASET_NAMES`, ``PATH`` filled in).

    ``scaler`` (csv only) is a scaler saved from an earlier load, reused instead of fitting anew.
    """
    prefix, colon, rest = spec.partition(":")
    if image_size is not None and image_size < 1:
        raise DiffpropError(f"dataset '{spec}': image_size must be at least 1, got {image_size}")
    if scaler is not None and not (colon and prefix == "csv"):
        raise DiffpropError(f"dataset '{spec}': a scaler applies only to csv: datasets")
    mixture = None
    if spec in TOY_NAMES:
        x, mixture = load_toy(spec, num_samples, seed)
    elif spec == "digits":
        x = load_digits(image_size)
    elif colon and prefix in _FOLDER_PREFIXES + _FILE_PREFIXES:
        if not rest.strip():
            raise DiffpropError(f"dataset '{spec}': a path is needed after '{prefix}:', e.g. {prefix}:PATH")
        path = _existing(spec, Path(rest).expanduser(), prefix in _FOLDER_PREFIXES)
        if prefix == "image-folder":
            x = load_image_folder(path, image_size)
        elif prefix == "cifar10":
            x = load_cifar10(path, image_size)
        elif prefix == "npz":
            x = load_npz(path, image_size)
        else:
            x, scaler = load_csv(path, scaler)
    else:
        raise DiffpropError(f"unknown dataset '{spec}'; choose one of: {', '.join(DATASET_NAMES)}")
    return Dataset(name=spec, x=x, data_shape=tuple(x.shape[1:]), is_image=x.ndim == 4,
                   mixture=mixture, scaler=scaler)
