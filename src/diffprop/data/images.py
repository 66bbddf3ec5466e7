"""Image datasets, all returned as float32 (N, C, H, W) in [-1, 1]: sklearn digits, a folder of
PNG/JPEG files, and the CIFAR-10 python batches (read with a restricted unpickler)."""
from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DiffpropError, one_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

# Pillow mode of the first image -> the mode every image is converted to (anything else -> "RGB").
_TARGET_MODE = {"1": "L", "L": "L", "I": "L", "I;16": "L", "F": "L", "LA": "LA", "La": "LA",
                "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) so the shorter side is ``size`` (bilinear, antialiased), then center-crop
    to ``size`` x ``size``: the same rule as for image folders."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size].contiguous()


def _to_unit_range(u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [-1, 1]."""
    return torch.from_numpy(u8).float() / 127.5 - 1.0


def load_digits(image_size: int | None) -> torch.Tensor:
    """scikit-learn's 8x8 digits (1797 images, no download), 0..16 mapped to [-1, 1] as ``x / 8 - 1``;
    an ``image_size`` other than 8 resizes with :func:`resize_images`."""
    from sklearn.datasets import load_digits as sk_load_digits

    x = torch.from_numpy(sk_load_digits().data).float().reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return x if image_size is None else resize_images(x, image_size)


def _open_image(path: Path, mode: str | None):
    """The image at ``path``, fully decoded and converted to ``mode`` (its own mode when None)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode or _TARGET_MODE.get(im.mode, "RGB"))
    except Exception as e:  # Pillow raises many types for bad files
        raise DiffpropError(f"{path}: cannot read image ({one_line(e)})") from None


def load_image_folder(root: Path, image_size: int | None) -> torch.Tensor:
    """Every .png/.jpg/.jpeg under ``root`` (recursive, sorted by path).

    The first image fixes the channels (grayscale 1, LA 2, RGB and palette 3, RGBA 4; 8-bit) and the
    default ``image_size`` (its shorter side); each image is converted to that mode, resized so its
    shorter side is ``image_size`` (LANCZOS) and center-cropped to a square, so any sizes stack.
    """
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DiffpropError(f"{root}: no PNG/JPEG images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    first = _open_image(files[0], None)
    mode, size = first.mode, image_size or min(first.size)
    arrays = []
    for path in files:
        im = first if path == files[0] else _open_image(path, mode)
        w, h = im.size
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.LANCZOS)
        left, top = (nw - size) // 2, (nh - size) // 2
        arrays.append(np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8))
    u8 = np.stack(arrays).reshape(len(arrays), size, size, -1).transpose(0, 3, 1, 2)
    return _to_unit_range(np.ascontiguousarray(u8))


def save_image_folder(x: torch.Tensor, root: Path) -> list[Path]:
    """Images (N, C, H, W) in [-1, 1] as ``root/000000.png``, ... (8-bit, ``round((x + 1) 127.5)`` clamped to
    0..255), the layout torch-fidelity and clean-fid read; :func:`load_image_folder` reads them back."""
    from PIL import Image

    if x.ndim != 4 or not 1 <= x.shape[1] <= 4:
        raise DiffpropError(f"PNG images need (N, C, H, W) with C in 1..4, got shape {tuple(x.shape)}")
    u8 = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    root.mkdir(parents=True, exist_ok=True)
    width, paths = max(6, len(str(len(u8) - 1))), []
    for i, im in enumerate(u8):
        paths.append(root / f"{i:0{width}d}.png")
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(paths[-1])  # mode from the channels
    return paths


def _numpy_core(submodule: str, name: str):
    """``numpy._core.<submodule>.<name>`` (numpy 2) or ``numpy.core.<submodule>.<name>`` (numpy 1)."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{submodule}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{submodule}"), name)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled dict of numpy arrays needs (any protocol,
    Python 2 or 3); every other global is refused before it can be called."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")  # the original batches were pickled by Python 2
        self.path = path

    def find_class(self, module: str, name: str):
        sub = module.removeprefix("numpy._core.").removeprefix("numpy.core.")
        if sub != module and (sub, name) in {("multiarray", "_reconstruct"), ("numeric", "_frombuffer")}:
            return _numpy_core(sub, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # bytes pickled by Python 3 with protocol < 3
            return codecs.encode
        raise DiffpropError(f"{self.path}: refusing to unpickle global {module}.{name}")


def _read_cifar_batch(path: Path) -> np.ndarray:
    """The (n, 3, 32, 32) uint8 images of one CIFAR-10 batch file."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, path).load()
    except DiffpropError:
        raise
    except Exception as e:
        raise DiffpropError(f"{path}: not a valid CIFAR-10 batch pickle ({one_line(e)})") from None
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise DiffpropError(f"{path}: expected a dict with b'data' a uint8 array of shape (n, 3072), "
                            f"got {type(data).__name__} of shape {shape}")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(root: Path, image_size: int | None) -> torch.Tensor:
    """The 50,000 training images of the CIFAR-10 python version (``data_batch_1..5`` in ``root`` or
    in ``root/cifar-10-batches-py``); an ``image_size`` other than 32 resizes with :func:`resize_images`."""
    if not (root / CIFAR_BATCHES[0]).exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    missing = [b for b in CIFAR_BATCHES if not (root / b).is_file()]
    if missing:
        raise DiffpropError(f"{root}: missing CIFAR-10 batch file(s) {', '.join(missing)} "
                            "(expected the extracted python version, cifar-10-batches-py)")
    x = _to_unit_range(np.concatenate([_read_cifar_batch(root / b) for b in CIFAR_BATCHES]))
    return x if image_size is None else resize_images(x, image_size)
