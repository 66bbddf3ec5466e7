"""Backbones: every net is called as net(x, t) with x (B, *data_shape), t (B,) in [0, T-1],
and returns a tensor shaped like x; an SMD net (:mod:`.smd`) as net(x, t, eta)."""

import math

from torch import nn

from diffprop.errors import DiffpropError
from diffprop.nets.mlp import TimeMLP, timestep_embedding
from diffprop.nets.smd import SMD_VARIANTS, EmbeddingSMD, OfficialSMD
from diffprop.nets.unet import PRESETS, UNet

NET_KINDS = ("mlp", "unet")
UNET_PRESETS = tuple(PRESETS)
MLP_OPTIONS = ("width", "depth", "time_dim", "dropout")

__all__ = ["NET_KINDS", "SMD_VARIANTS", "UNET_PRESETS", "EmbeddingSMD", "OfficialSMD", "TimeMLP", "UNet", "build_net",
           "build_smd_net", "timestep_embedding"]


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


def build_smd_net(kind: str, data_shape: tuple[int, ...], variant: str = "official", *, latent_dim: int = 16,
                  hyper_layers: int = 2, eta_dim: int = 16, g_width: int | None = None, **options) -> nn.Module:
    """An SMD network of ``variant`` around a backbone ``build_net(kind, data_shape, **options)`` (002 Sec. 4)."""
    if variant == "official":
        return OfficialSMD(build_net(kind, data_shape, **options), tuple(data_shape), latent_dim, hyper_layers, g_width)
    if variant == "embedding":
        if kind == "unet":  # f_phi's output enters as the class embedding
            options["class_embed_type"] = "identity"
        return EmbeddingSMD(build_net(kind, data_shape, **options), tuple(data_shape), latent_dim, eta_dim, g_width)
    raise DiffpropError(f"unknown SMD variant {variant!r}; allowed: {', '.join(SMD_VARIANTS)}")
