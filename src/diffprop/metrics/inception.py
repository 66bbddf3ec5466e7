"""Inception-v3 pool3 features (2048-d), the FID / KID feature space at CIFAR-10 scale, through torch-fidelity's
port of the TensorFlow FID network (optional extra: ``pip install 'diffprop[fid]'``).

Weights come only from a local file: the FID Inception weights released by pytorch-fid as
``pt_inception-2015-12-05-6726825d.pth`` (torch-fidelity releases the same bytes as
``weights-inception-2015-12-05-6726825d.pth``), checked against their SHA-256 and read with
``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or a container. Nothing
is downloaded.

torch-fidelity's package ``__init__`` imports its CLIP, VGG and DINOv2 extractors, which need torchvision; its
Inception module needs only torch. Where torchvision is missing (``pip install --no-deps torch-fidelity``), the
Inception module is imported under a bare package object, without running that ``__init__``.

Preprocessing (torch-fidelity's Inception takes uint8 RGB at any size): ``[-1, 1] -> round((x + 1) 127.5)``
as uint8 (what saving the images as PNG does), one channel repeated to three; inside torch-fidelity a
TF1-compatible bilinear resize to 299x299 and ``(x - 128) / 128``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import DiffpropError
from .features import FeatureExtractor, tensors_sha256

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"  # 95,628,359 bytes
FEATURE_DIM = 2048
_INSTALL = "pip install 'diffprop[fid]' (or pip install --no-deps torch-fidelity where torchvision is unavailable)"


def _import_inception_module():
    """torch-fidelity's ``feature_extractor_inceptionv3`` module, with or without torchvision installed."""
    name = "torch_fidelity.feature_extractor_inceptionv3"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            raise DiffpropError(f"--features inception needs the package torch-fidelity (missing module {e.name}): "
                                f"{_INSTALL}") from None
    spec = importlib.util.find_spec("torch_fidelity")
    previous = sys.modules.get("torch_fidelity")
    sys.modules["torch_fidelity"] = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
    try:
        return importlib.import_module(name)
    finally:
        if previous is None:
            del sys.modules["torch_fidelity"]
        else:
            sys.modules["torch_fidelity"] = previous


def _fidelity_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-fidelity")
    except PackageNotFoundError:
        return "unknown version"


def _empty_state() -> io.BytesIO:
    buf = io.BytesIO()
    torch.save({}, buf)
    buf.seek(0)
    return buf


def inception_network(state_dict: dict[str, torch.Tensor] | None = None, seed: int = 0) -> nn.Module:
    """torch-fidelity's FID Inception-v3 returning ``(pool3,)``, in eval mode: loaded with ``state_dict``,
    or randomly initialized from ``seed`` when None (for tests of the plumbing).

    torch-fidelity's constructor loads its weights with ``torch.load(path, weights_only=False)``; it is handed an
    empty dict serialized here instead, and the (already safely loaded) weights are loaded afterwards.
    """
    base = _import_inception_module().FeatureExtractorInceptionV3

    class _Inception(base):
        def load_state_dict(self, state, *args, **kwargs):
            return super().load_state_dict(state, *args, **kwargs) if state else None

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _Inception("inception-v3-compat", ["2048"], feature_extractor_weights_path=_empty_state())
    if state_dict is not None:
        try:
            nn.Module.load_state_dict(net, state_dict)
        except RuntimeError as e:
            detail = str(e).splitlines()[0]
            raise DiffpropError(f"the Inception weights do not fit torch-fidelity's network ({detail})") from None
    return net.eval()


def load_fid_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The FID Inception weights at ``path`` and their SHA-256, after checking it against :data:`FID_WEIGHTS_SHA256`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DiffpropError(f"{path}: Inception weights file not found (diffprop never downloads it: give a local "
                            f"copy of {FID_WEIGHTS_NAME}, SHA-256 {FID_WEIGHTS_SHA256[:16]}...)")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != FID_WEIGHTS_SHA256:
        raise DiffpropError(f"{path}: SHA-256 {sha[:16]}... is not that of the FID Inception weights "
                            f"{FID_WEIGHTS_NAME} ({FID_WEIGHTS_SHA256[:16]}...)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for files it will not unpickle safely
        raise DiffpropError(f"{path}: cannot load the weights safely ({' '.join(str(e).split())[:200]})") from None
    if not (isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())):
        raise DiffpropError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state, sha


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (N, 1 or 3, H, W) -> uint8 (N, 3, H, W), ``round((x + 1) 127.5)`` clamped to 0..255."""
    if x.shape[1] not in (1, 3):
        raise DiffpropError(f"inception features take 1- or 3-channel images, got {x.shape[1]} channels")
    u8 = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


def inception_extractor(data_shape: tuple[int, ...], weights=None, device: str = "cpu", *,
                        network: nn.Module | None = None, seed: int = 0) -> FeatureExtractor:
    """Inception pool3 features of images of shape ``data_shape``. ``weights``: path of the FID weights file;
    ``network``: any module with torch-fidelity's interface (uint8 (N, 3, H, W) in, ``(features,)`` out) to use
    instead; with neither, :func:`inception_network` randomly initialized from ``seed`` (tests only)."""
    if data_shape[0] not in (1, 3):
        raise DiffpropError(f"inception features take 1- or 3-channel images, got data of shape {tuple(data_shape)}")
    if network is not None:
        weights_hash, origin = tensors_sha256(network.state_dict()), f"given network {type(network).__name__}"
    elif weights is not None:
        state, weights_hash = load_fid_weights(weights)
        network, origin = inception_network(state), f"torch-fidelity {_fidelity_version()}, {FID_WEIGHTS_NAME}"
    else:
        network = inception_network(seed=seed)
        weights_hash, origin = (tensors_sha256(network.state_dict()),
                                 f"torch-fidelity {_fidelity_version()}, RANDOM weights (seed {seed})")
    network = network.to(device).eval()
    return FeatureExtractor("inception", weights_hash,
                            f"[-1, 1] -> uint8 round((x + 1) * 127.5), gray -> RGB; TF1 bilinear resize to 299, "
                            f"(x - 128) / 128; pool3 ({origin})", FEATURE_DIM,
                            lambda x: network(to_uint8_rgb(x))[0], batch_size=64, device=device)


__all__ = ["FEATURE_DIM", "FID_WEIGHTS_NAME", "FID_WEIGHTS_SHA256", "inception_extractor", "inception_network",
           "load_fid_weights", "to_uint8_rgb"]
