"""Feature extractors for image metrics: images (N, C, H, W) in [-1, 1] in, (N, D) float64 features out.

Every extractor records what a reader needs to compare numbers: its ``name``, ``weights_hash`` (SHA-256 of its
weights, None for raw pixels), ``preprocessing`` and feature ``dim``. Registered by name:

- ``pixels``: the flattened images;
- ``random-projection``: the flattened images times a fixed Gaussian matrix ``W`` (``W_ij ~ N(0, 1 / C H W)``,
  seeded), ``dim`` columns;
- ``digits-classifier``: the penultimate layer of a CNN trained on ``digits`` (:mod:`.digits_classifier`);
- ``inception``: Inception-v3 pool3 features through torch-fidelity (:mod:`.inception`).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from ..errors import DiffpropError

EXTRACTOR_NAMES = ("digits-classifier", "inception", "pixels", "random-projection")
_OPTIONS = {"digits-classifier": ("cache_dir", "progress"), "inception": (), "pixels": (),
            "random-projection": ("dim", "seed")}  # besides batch_size


@dataclass
class FeatureExtractor:
    """``fn`` maps a float32 batch on ``device`` to (B, dim) features; calls run it batch by batch, no grad."""
    name: str
    weights_hash: str | None
    preprocessing: str
    dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    batch_size: int = 256
    device: str = "cpu"
    progress: bool = False  # a bar over the batches of every call

    @torch.no_grad()
    def batches(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """Features of ``images`` as a sequence of (B, dim) float64 CPU batches."""
        if images.ndim != 4:
            raise DiffpropError(f"{self.name} features take images (N, C, H, W), got shape {tuple(images.shape)}")
        for i in tqdm(range(0, len(images), self.batch_size), desc=f"{self.name} features", unit="batch",
                      disable=not self.progress, leave=False):
            yield self.fn(images[i:i + self.batch_size].to(self.device, torch.float32)).to("cpu", torch.float64)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(self.batches(images))) if len(images) else torch.zeros(0, self.dim, dtype=torch.float64)

    def describe(self) -> dict:
        return {"extractor": self.name, "weights_hash": self.weights_hash, "preprocessing": self.preprocessing,
                "feature_dim": self.dim}


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def pixels(data_shape: tuple[int, ...]) -> FeatureExtractor:
    return FeatureExtractor("pixels", None, "none (flattened [-1, 1] pixels)", math.prod(data_shape),
                            lambda x: x.reshape(len(x), -1))


def random_projection(data_shape: tuple[int, ...], dim: int = 64, seed: int = 0) -> FeatureExtractor:
    d_in = math.prod(data_shape)
    w = torch.randn(d_in, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / math.sqrt(d_in)
    return FeatureExtractor("random-projection", tensors_sha256({"w": w}),
                            f"flattened [-1, 1] pixels times a {d_in}x{dim} Gaussian matrix (seed {seed})", dim,
                            lambda x: x.reshape(len(x), -1).double() @ w.to(x.device))


def default_extractor(dataset_name: str, inception_weights=None) -> str:
    """``digits-classifier`` for digits; ``inception`` for other images when its weights are given."""
    if dataset_name == "digits":
        return "digits-classifier"
    if inception_weights is not None:
        return "inception"
    raise DiffpropError(f"{dataset_name}: image metrics need a feature extractor: --inception-weights PATH (the FID "
                        "Inception-v3 weights, pt_inception-2015-12-05-6726825d.pth) or --features pixels")


def get_extractor(name: str | None, data_shape: tuple[int, ...], *, dataset_name: str | None = None,
                  inception_weights=None, device: str = "cpu", **opts) -> FeatureExtractor:
    """The extractor ``name`` (one of :data:`EXTRACTOR_NAMES`; None: :func:`default_extractor` of
    ``dataset_name``) for images of shape ``data_shape`` (C, H, W). ``opts``: ``dim``, ``seed`` for
    random-projection; ``cache_dir``, ``progress`` for digits-classifier; ``batch_size`` for any."""
    name = name or default_extractor(dataset_name or "", inception_weights)
    if name not in EXTRACTOR_NAMES:
        raise DiffpropError(f"unknown feature extractor {name!r}; allowed: {', '.join(EXTRACTOR_NAMES)}")
    if len(data_shape) != 3:
        raise DiffpropError(f"{name} features need image data (C, H, W), got data of shape {tuple(data_shape)}")
    batch_size = opts.pop("batch_size", None)
    bad = sorted(set(opts) - set(_OPTIONS[name]))
    if bad:
        raise DiffpropError(f"unknown {name} option {bad[0]!r}; allowed: {', '.join(_OPTIONS[name] + ('batch_size',))}")
    if name == "pixels":
        ext = pixels(data_shape)
    elif name == "random-projection":
        ext = random_projection(data_shape, **opts)
    elif name == "digits-classifier":
        from .digits_classifier import digits_classifier_extractor

        ext = digits_classifier_extractor(data_shape, device=device, **opts)
    else:
        from .inception import FID_WEIGHTS_NAME, inception_extractor

        if inception_weights is None:
            raise DiffpropError(f"inception features need the FID Inception-v3 weights file: --inception-weights PATH "
                                f"({FID_WEIGHTS_NAME})")
        ext = inception_extractor(data_shape, inception_weights, device=device)
    ext.device = device
    ext.batch_size = batch_size or ext.batch_size
    return ext


__all__ = ["EXTRACTOR_NAMES", "FeatureExtractor", "default_extractor", "get_extractor", "pixels", "random_projection",
           "tensors_sha256"]
