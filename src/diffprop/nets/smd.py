"""Soft mixture denoising networks (002 Sec. 4, Eq. 10-12): ``net(x, t, eta)``, shaped like ``x``.

A backbone ``eps_theta`` (:class:`~diffprop.nets.TimeMLP` or :class:`~diffprop.nets.UNet`, unchanged) is
modulated by ``f_phi(z_t)`` with the latent ``z_t = g_xi(eta, x_t, t)``, ``eta ~ N(0, I)`` (002 Eq. 11; the
``eta`` comes from :class:`~diffprop.denoisers.SMDDenoiser`). Two variants:

- ``official``, as the public code (vanderschaarlab/smd, ``nn.py``) does it: ``g_xi`` is a small U-Net on
  ``cat(x_t, eta)`` (``eta`` shaped like ``x_t``) giving a per-pixel latent map; ``f_phi`` is two residual
  hypernet blocks, on the output of the backbone's first layer and on the input of its last, each
  ``h + W_out M_K ... M_1 W_in h`` per pixel with ``M_k = u_k u_k^T + softplus(s_k) I``, ``u_k = Linear_k(z)``.
  On the MLP: ``g_xi`` is an MLP on ``cat(x_t, eta, temb(t))`` giving one ``z`` per example, and the same blocks
  act on the hidden features after ``inp`` and before the last Linear.
- ``embedding``: ``g_xi`` is an MLP on ``cat(flatten(x_t), eta, temb(t))`` (``eta`` of size ``eta_dim``) giving
  one ``z`` per example; ``f_phi`` turns it into a modulation of the backbone's time embedding: the U-Net adds
  it as the class embedding of ``UNet2DModel(class_embed_type="identity")``, the MLP applies it as FiLM,
  ``temb (1 + gamma) + beta``. ``f_phi``'s last layer starts at zero: the network starts as its backbone.

The backbone's internals are reached through forward hooks held for one call, so its own forward (diffusers'
included) runs unchanged.

What training teaches these networks is another matter: 002's loss (Eq. 14) is minimised, for every eta, by
``E[eps | x_t]`` (eta is independent of ``x_0`` and ``eps``), so it gives no reason to use eta, and trained on
gmm-grid the predictions barely vary with it (README). Fitted with a distributional objective they do express
a mixture: ``[smd] loss = "energy"`` (with ``n_eta >= 2``) scores the draws with the energy score
(:func:`diffprop.losses.denoising.regression_loss`; tests/test_smd.py).
"""
from __future__ import annotations

import contextlib
import math

import torch
from diffusers import UNet2DModel
from torch import nn
from torch.nn import functional as F

from diffprop.errors import DiffpropError
from diffprop.nets.mlp import TimeMLP, timestep_embedding
from diffprop.nets.unet import UNet

SMD_VARIANTS = ("official", "embedding")
TIME_DIM = 32  # sinusoidal time embedding of the MLP g_xi
GROUPS = 4  # GroupNorm groups of the U-Net g_xi: its width must be a multiple


def _ends(backbone: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    """The backbone's first and last layer and the feature width after / before them."""
    if isinstance(backbone, TimeMLP):
        return backbone.inp, backbone.out[-1], backbone.inp.out_features
    if isinstance(backbone, UNet):
        return backbone.model.conv_in, backbone.model.conv_out, backbone.model.conv_in.out_channels
    raise DiffpropError(f"SMD wraps a TimeMLP or a UNet backbone, got {type(backbone).__name__}")


@contextlib.contextmanager
def hooked(outputs=(), inputs=()):
    """For the duration of the block, ``(module, fn)`` pairs map a module's output (``outputs``) or its first
    input (``inputs``) through ``fn``."""
    handles = [m.register_forward_hook(lambda mod, args, out, fn=fn: fn(out)) for m, fn in outputs]
    handles += [m.register_forward_pre_hook(lambda mod, args, fn=fn: (fn(args[0]), *args[1:])) for m, fn in inputs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class HyperBlock(nn.Module):
    """One ``f_phi`` block of the official variant: ``h + W_out M_K ... M_1 W_in h`` with
    ``M_k = u_k u_k^T + softplus(s_k) I``, ``u_k = Linear_k(z)``, per example (``h``: (B, C), ``z``: (B, L)) or per
    pixel (``h``: (B, C, H, W), ``z``: (B, L, H, W)). The public code forms the L x L matrices ``M_k``;
    ``M v = u (u . v) + softplus(s) v`` is the same product without them."""

    def __init__(self, width: int, latent_dim: int, layers: int):
        super().__init__()
        self.inp, self.out = nn.Linear(width, latent_dim), nn.Linear(latent_dim, width)
        self.u = nn.ModuleList(nn.Linear(latent_dim, latent_dim) for _ in range(layers))
        self.s = nn.Parameter(torch.randn(layers))

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        v, z = self.inp(h.movedim(1, -1)), z.movedim(1, -1)  # channels last
        for u_k, s_k in zip(self.u, F.softplus(self.s)):
            u = u_k(z)
            v = u * (u * v).sum(-1, keepdim=True) + s_k * v  # M_k v
        return h + self.out(v).movedim(-1, 1)


class LatentMLP(nn.Module):
    """``g_xi`` with one latent per example: an MLP on ``cat(flatten(x_t), flatten(eta), temb(t))``."""

    def __init__(self, in_dim: int, width: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim + TIME_DIM, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, latent_dim))

    def forward(self, x: torch.Tensor, eta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtype = self.net[0].weight.dtype
        parts = (x.flatten(1), eta.flatten(1), timestep_embedding(t, TIME_DIM))
        return self.net(torch.cat([p.to(dtype) for p in parts], 1))


class LatentUNet(nn.Module):
    """``g_xi`` of the official image variant: a two-level, attention-free U-Net on ``cat(x_t, eta)`` giving a
    per-pixel latent map (B, latent_dim, H, W) (the public code: half-width levels of a quarter-width U-Net)."""

    def __init__(self, channels: int, size: int, width: int, latent_dim: int):
        super().__init__()
        if width % GROUPS:
            raise DiffpropError(f"the U-Net g_xi needs a width that is a multiple of {GROUPS}, got {width}")
        self.model = UNet2DModel(sample_size=size, in_channels=2 * channels, out_channels=latent_dim,
                                 block_out_channels=(width, 2 * width), layers_per_block=1, add_attention=False,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                 norm_num_groups=GROUPS)

    def forward(self, x: torch.Tensor, eta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x, eta.to(x.dtype)], 1), t).sample


class OfficialSMD(nn.Module):
    """The public code's SMD: per-pixel (U-Net) or per-example (MLP) latent, hypernet blocks at both ends.

    ``g_width`` of ``g_xi`` (U-Net channels or MLP units; None: a quarter of the backbone's feature width, at least
    8 channels or 16 units); ``hyper_layers`` matrices ``M_k`` per block (the public code: 2).
    """

    def __init__(self, backbone: nn.Module, data_shape: tuple[int, ...], latent_dim: int = 16, hyper_layers: int = 2,
                 g_width: int | None = None):
        super().__init__()
        _, _, features = _ends(backbone)
        self.backbone, self.eta_shape = backbone, tuple(data_shape)
        if isinstance(backbone, UNet):
            c, size, _ = data_shape
            self.g = LatentUNet(c, size, g_width or max(2 * GROUPS, features // (4 * GROUPS) * GROUPS), latent_dim)
        else:
            self.g = LatentMLP(2 * math.prod(data_shape), g_width or max(16, features // 4), latent_dim)
        self.f_in, self.f_out = (HyperBlock(features, latent_dim, hyper_layers) for _ in range(2))

    @torch.no_grad()
    def start_as_backbone(self) -> "OfficialSMD":
        """Zero both hypernet blocks' last layer: each block is then the identity and the network its backbone for
        every eta (for fine-tuning a pretrained backbone; the public code initialises them at random)."""
        for block in (self.f_in, self.f_out):
            nn.init.zeros_(block.out.weight)
            nn.init.zeros_(block.out.bias)
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        z = self.g(x, eta, t)  # z_t = g_xi(eta, x_t, t), 002 Alg. 1 line 6
        first, last, _ = _ends(self.backbone)
        # theta-hat = theta u f_phi(z_t, t), 002 Alg. 1 line 7
        with hooked(outputs=[(first, lambda h: self.f_in(h, z))], inputs=[(last, lambda h: self.f_out(h, z))]):
            return self.backbone(x, t)


class EmbeddingSMD(nn.Module):
    """One latent per example modulating the backbone's time embedding (see the module docstring).

    ``g_width`` of the MLP ``g_xi`` (None: a quarter of the backbone's time-embedding width, at least 16).
    """

    def __init__(self, backbone: nn.Module, data_shape: tuple[int, ...], latent_dim: int = 16, eta_dim: int = 16,
                 g_width: int | None = None):
        super().__init__()
        self.backbone, self.eta_shape = backbone, (eta_dim,)
        if isinstance(backbone, UNet):
            if backbone.model.config.class_embed_type != "identity":
                raise DiffpropError("SMD embedding needs a UNet2DModel built with class_embed_type='identity'")
            temb = out = backbone.model.time_embedding.linear_2.out_features
        elif isinstance(backbone, TimeMLP):
            temb = backbone.time_mlp[-1].out_features
            out = 2 * temb  # FiLM: gamma and beta
        else:
            raise DiffpropError(f"SMD wraps a TimeMLP or a UNet backbone, got {type(backbone).__name__}")
        self.g = LatentMLP(math.prod(data_shape) + eta_dim, g_width or max(16, temb // 4), latent_dim)
        self.f = nn.Sequential(nn.SiLU(), nn.Linear(latent_dim, out))
        self.start_as_backbone()

    @torch.no_grad()
    def start_as_backbone(self) -> "EmbeddingSMD":
        """Zero ``f_phi``'s last layer (as at construction): the network is then its backbone for every eta."""
        nn.init.zeros_(self.f[-1].weight)
        nn.init.zeros_(self.f[-1].bias)
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        m = self.f(self.g(x, eta, t))  # f_phi(g_xi(eta, x_t, t)), 002 Alg. 1 lines 6-7
        if isinstance(self.backbone, UNet):
            return self.backbone(x, t, class_labels=m)
        gamma, beta = m.chunk(2, dim=1)
        with hooked(outputs=[(self.backbone.time_mlp, lambda e: e * (1 + gamma) + beta)]):
            return self.backbone(x, t)
