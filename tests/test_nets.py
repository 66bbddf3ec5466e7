import math

import pytest
import torch
from diffusers import UNet2DModel

from diffprop.errors import DiffpropError
from diffprop.nets import NET_KINDS, UNET_PRESETS, UNet, build_net, timestep_embedding

CASES = [
    ("mlp", (2,), {}),
    ("mlp", (5,), {"width": 32, "depth": 2}),
    ("unet", (1, 8, 8), {"preset": "tiny"}),
    ("unet", (3, 16, 16), {"preset": "small"}),
]


def _t(b, long=True):
    return torch.randint(0, 1000, (b,)) if long else torch.rand(b) * 999


@pytest.mark.parametrize("kind,shape,opts", CASES)
def test_output_shape(kind, shape, opts):
    torch.manual_seed(0)
    net = build_net(kind, shape, **opts)
    x = torch.randn(3, *shape)
    for long in (True, False):
        assert net(x, _t(3, long)).shape == x.shape


def test_constants():
    assert NET_KINDS == ("mlp", "unet")
    assert UNET_PRESETS == ("tiny", "small", "ddpm-cifar10")


def test_ddpm_cifar10_parameter_count():
    net = build_net("unet", (3, 32, 32), preset="ddpm-cifar10")
    n = sum(p.numel() for p in net.parameters())
    assert n == 35_746_307
    assert abs(n - 35.7e6) < 0.05e6
    cfg = net.model.config
    assert tuple(cfg.down_block_types) == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    assert tuple(cfg.up_block_types) == ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    assert cfg.dropout == 0.1 and cfg.sample_size == 32


@pytest.mark.parametrize("kind,shape,opts", [CASES[0], CASES[2]])
def test_gradients_reach_every_parameter(kind, shape, opts):
    torch.manual_seed(0)
    net = build_net(kind, shape, **opts)
    x = torch.randn(8, *shape)
    net(x, _t(8)).pow(2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind,shape,opts", [CASES[0], CASES[2]])
def test_time_conditioning_matters(kind, shape, opts):
    torch.manual_seed(0)
    net = build_net(kind, shape, **opts).eval()
    x = torch.randn(4, *shape).repeat(2, *[1] * len(shape))
    t = torch.tensor([0, 10, 100, 999, 1, 11, 500, 998])
    out = net(x, t)
    assert (out[:4] - out[4:]).abs().flatten(1).amax(1).min() > 1e-4
    assert torch.allclose(net(x, t), out)


def test_unet_wraps_diffusers_model():
    inner = UNet2DModel.from_config(build_net("unet", (1, 8, 8)).model.config)
    net = UNet.from_diffusers(inner)
    assert net.model is inner
    x, t = torch.randn(2, 1, 8, 8), _t(2)
    assert torch.equal(net(x, t), inner(x, t).sample)


def test_unet_overrides():
    net = build_net("unet", (1, 8, 8), block_out_channels=[16, 32, 32], layers_per_block=2, dropout=0.2, attention=False)
    cfg = net.model.config
    assert tuple(cfg.block_out_channels) == (16, 32, 32) and cfg.layers_per_block == 2 and cfg.dropout == 0.2
    assert "Attn" not in "".join(cfg.down_block_types + cfg.up_block_types) and not cfg.add_attention
    assert net(torch.randn(2, 1, 8, 8), _t(2)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    "args,opts,word",
    [
        (("transformer", (2,)), {}, "transformer"),
        (("unet", (1, 8, 8)), {"preset": "huge"}, "huge"),
        (("unet", (1, 8, 8)), {"channels": 3}, "channels"),
        (("mlp", (2,)), {"hidden": 3}, "hidden"),
        (("unet", (1, 8, 6)), {}, "8x6"),
        (("unet", (3, 20, 20)), {"preset": "ddpm-cifar10"}, "20x20"),
        (("unet", (64,)), {}, "(64,)"),
        (("unet", (1, 8, 8)), {"block_out_channels": [30, 64]}, "30"),
    ],
)
def test_errors_name_the_bad_value(args, opts, word):
    with pytest.raises(DiffpropError) as err:
        build_net(*args, **opts)
    msg = str(err.value)
    assert word in msg and "\n" not in msg


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 250, 999])
    dim = 6
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim)
    for row, tv in zip(emb, t.tolist()):
        freqs = [10000 ** (-i / 3) for i in range(3)]
        expected = [math.cos(tv * f) for f in freqs] + [math.sin(tv * f) for f in freqs]
        assert torch.allclose(row, torch.tensor(expected), atol=1e-4)
    odd = timestep_embedding(t.float(), 7)
    assert odd.shape == (4, 7) and torch.all(odd[:, -1] == 0)
    assert torch.allclose(timestep_embedding(torch.tensor([2.0]), 2, max_period=10), torch.tensor([[math.cos(2), math.sin(2)]]))
