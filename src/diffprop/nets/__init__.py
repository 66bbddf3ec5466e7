"""Backbones: every net is called as net(x, t) with x (B, *data_shape), t (B,) in [0, T-1],
and returns a tensor shaped like x."""

import math

from torch import nn

from diffprop.errors import DiffpropError
from diffprop.nets.mlp import TimeMLP, timestep_embedding
from diffprop.nets.unet import PRESETS, UNet

NET_KINDS = ("mlp", "unet")
UNET_PRESETS = tuple(PRESETS)
MLP_OPTIONS = ("width", "depth", "time_dim", "dropout")

__all__ = ["NET_KINDS", "UNET_PRESETS", "TimeMLP", "UNet", "build_net", "timestep_embedding"]


def build_net(kind: str, data_shape: tuple[int, ...], **options) -> nn.Module:
    """Build a backbone of `kind` ("mlp" or "unet") for data of shape `data_shape`.

    mlp options: width=256, depth=4, time_dim=128, dropout=0.0.
    unet options: preset="tiny" plus overrides block_out_channels, layers_per_block, dropout, attention.
    """
    if kind == "mlp":
        bad = sorted(set(options) - set(MLP_OPTIONS))
        if bad:
            raise DiffpropError(f"unknown mlp option {bad[0]!r}; allowed: {', '.join(MLP_OPTIONS)}")
        return TimeMLP(math.prod(data_shape), **options)
    if kind == "unet":
        return UNet.from_preset(tuple(data_shape), **options)
    raise DiffpropError(f"unknown net kind {kind!r}; allowed: {', '.join(NET_KINDS)}")
