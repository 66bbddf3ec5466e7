"""Image backbone: a thin wrapper around diffusers' UNet2DModel returning a plain tensor."""

import torch
from diffusers import UNet2DModel
from torch import nn

from diffprop.errors import DiffpropError

# UNet2DModel keyword arguments per preset, except that the block types are derived from
# `attn_levels`: the resolution levels (0 = full resolution) whose down/up blocks have attention.
PRESETS = {
    "tiny": dict(  # 8x8 single-channel digits, fast on CPU
        block_out_channels=(32, 64), layers_per_block=1, attn_levels=(1,),
        norm_num_groups=8, attention_head_dim=32, dropout=0.0,
    ),
    "small": dict(  # 16-32 px images
        block_out_channels=(64, 128, 128), layers_per_block=2, attn_levels=(1,),
        norm_num_groups=32, attention_head_dim=32, dropout=0.0,
    ),
    "ddpm-cifar10": dict(  # Ho et al. 2020, as in diffusers' google/ddpm-cifar10-32 (35.7M params)
        block_out_channels=(128, 256, 256, 256), layers_per_block=2, attn_levels=(1,),
        norm_num_groups=32, attention_head_dim=None, dropout=0.1, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, resnet_time_scale_shift="default",
    ),
}
OVERRIDES = ("block_out_channels", "layers_per_block", "dropout", "attention")


def unet_config(data_shape: tuple[int, ...], preset: str = "tiny", **overrides) -> dict:
    """UNet2DModel kwargs for `preset` on images of shape (C, H, W), with overrides applied.

    attention=False removes every attention layer (down/up blocks and the mid block).
    """
    if preset not in PRESETS:
        raise DiffpropError(f"unknown unet preset {preset!r}; allowed: {', '.join(PRESETS)}")
    bad = sorted(set(overrides) - set(OVERRIDES))
    if bad:
        raise DiffpropError(f"unknown unet option {bad[0]!r}; allowed: {', '.join(OVERRIDES)}")
    if len(data_shape) != 3:
        raise DiffpropError(f"unet needs data_shape (C, H, W), got {tuple(data_shape)}")
    cfg = {**PRESETS[preset], **overrides}
    attention, attn_levels = bool(cfg.pop("attention", True)), cfg.pop("attn_levels")
    attn_levels = attn_levels if attention else ()
    channels, groups = tuple(cfg["block_out_channels"]), cfg["norm_num_groups"]
    if not channels or any(c <= 0 or c % groups for c in channels):
        raise DiffpropError(f"block_out_channels {list(channels)} must be positive multiples of {groups} (unet preset {preset!r})")
    c, h, w = data_shape
    n = len(channels)
    if h != w or h % 2 ** (n - 1):
        raise DiffpropError(f"unet preset {preset!r} needs square images with side divisible by {2 ** (n - 1)}, got {h}x{w}")
    return dict(
        cfg, sample_size=h, in_channels=c, out_channels=c, block_out_channels=channels, add_attention=attention,
        down_block_types=tuple("AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n)),
        up_block_types=tuple("AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(n))),
    )


class UNet(nn.Module):
    """net(x, t) -> tensor shaped like x; the diffusers model is `.model`."""

    def __init__(self, model: UNet2DModel):
        super().__init__()
        if not isinstance(model, UNet2DModel):
            raise DiffpropError(f"UNet wraps a diffusers UNet2DModel, got {type(model).__name__}")
        self.model = model

    @classmethod
    def from_preset(cls, data_shape: tuple[int, ...], preset: str = "tiny", class_embed_type: str | None = None,
                    **overrides) -> "UNet":
        """A freshly initialised UNet for images of shape (C, H, W); ``class_embed_type="identity"`` makes it
        add ``class_labels`` (B, time-embedding width) to its time embedding."""
        return cls(UNet2DModel(**unet_config(data_shape, preset, **overrides), class_embed_type=class_embed_type))

    @classmethod
    def from_diffusers(cls, model: UNet2DModel) -> "UNet":
        """Wrap an existing (e.g. pretrained) UNet2DModel."""
        return cls(model)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, t, class_labels=class_labels).sample
