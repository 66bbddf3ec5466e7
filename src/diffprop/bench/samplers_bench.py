"""Sampling speed, side by side in one run (issue 15's performance acceptance):

- ``driver``: :func:`~diffprop.samplers.driver.sample_from` walking ``ddpm_step`` against a hand-written loop over the
  same steps with the same noise on the same denoiser (a small MLP denoiser and the exact oracle of gmm-grid); the
  per-step time ratio is the driver's overhead (recording, progress, evaluation counting);
- ``diffusers``: DDPM and DDIM sampling through :func:`~diffprop.samplers.sample` (``noise="stream"``, the scheduler's
  ``leading`` spacing) against diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` loop (``unet(x, t)`` then
  ``scheduler.step``, as its pipelines do) on the same small ``UNet2DModel``; both draw the same noise, so the
  samples are compared too (``max_abs_diff``).

Rounds alternate between the two sides so that drift on a shared machine hits both alike; the median per-step time
of each side is reported, and ``ratio``, the median over pairs of diffprop's time over the other's.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from functools import partial

import torch

from ..config import load_config
from ..diffusers_io import load_diffusers
from ..mixtures import grid_mixture
from ..oracle import OracleDenoiser
from ..runs import build_denoiser, build_schedule
from ..samplers import ddpm_step, sample, sample_from
from ..samplers.driver import as_times

ROUNDS = 9
STEPS = 250  # of the discrete chain's 1000 (even spacing): the per-step cost is what is compared


def _side_by_side(ours, theirs, rounds: int) -> tuple[float, float, float]:
    """Median seconds of ``ours`` and of ``theirs`` over ``rounds`` adjacent pairs (after one warm-up call each),
    and the median of the pairs' ratios (adjacent calls share the machine's load)."""
    ours(), theirs()
    a, b = [], []
    for _ in range(rounds):
        for fn, acc in ((ours, a), (theirs, b)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in zip(a, b))


@torch.no_grad()
def _driver_case(denoiser, shape, num: int, steps: int, rounds: int) -> dict:
    times = denoiser.process.grid(steps)
    step = partial(ddpm_step, var_type=denoiser.var_type)
    x_T = torch.randn(num, *shape, generator=torch.Generator().manual_seed(0))

    def driver():
        return sample_from(denoiser, x_T, times, step, generator=torch.Generator().manual_seed(1)).x

    def hand():
        x, g, ts = x_T, torch.Generator().manual_seed(1), as_times(times)
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = ddpm_step(denoiser, x, t, t_next, g, var_type=denoiser.var_type)
        return x

    same = bool(torch.equal(driver(), hand()))
    ours, theirs, ratio = _side_by_side(driver, hand, rounds)
    n = len(times) - 1
    return {"steps": n, "batch": num, "driver_ms_per_step": round(1e3 * ours / n, 4),
            "hand_loop_ms_per_step": round(1e3 * theirs / n, 4), "ratio": round(ratio, 3),
            "identical_samples": same}


def driver_overhead(rounds: int = ROUNDS) -> dict:
    cfg = load_config(None, ["model.kind=mlp", "data.name=gmm-grid"])
    torch.manual_seed(0)
    mlp = build_denoiser(cfg, (2,)).eval()
    oracle = OracleDenoiser(grid_mixture(), build_schedule(cfg))
    return {"mlp/gmm-grid": _driver_case(mlp, (2,), 256, STEPS, rounds),
            "oracle/gmm-grid": _driver_case(oracle, (2,), 1000, STEPS, rounds),
            "target_ratio_max": 1.05}


def _unet_checkpoint(folder):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    unet.save_pretrained(f"{folder}/unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(f"{folder}/scheduler")
    return unet.eval()


@torch.no_grad()
def _diffusers_loop(unet, scheduler, num: int, steps: int, seed: int, **step_kw) -> torch.Tensor:
    """diffusers' pipeline loop without the pipeline's pre- and post-processing."""
    g = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn(num, 1, 8, 8, generator=g)
    for t in scheduler.timesteps:
        eps = unet(x, t).sample
        x = scheduler.step(eps, t, x, generator=g, **step_kw).prev_sample
    return x


def diffusers_sampling(num: int = 16, rounds: int = ROUNDS) -> dict:
    from diffusers import DDIMScheduler, DDPMScheduler

    out = {}
    with tempfile.TemporaryDirectory() as folder:
        unet = _unet_checkpoint(folder)
        denoiser, settings = load_diffusers(folder)
        denoiser.net.model = unet  # one UNet object for both sides
        ddpm = DDPMScheduler.from_pretrained(f"{folder}/scheduler")
        ddim = DDIMScheduler.from_config(ddpm.config)
        for name, scheduler, steps, kw in (("ddpm", ddpm, 50, {}), ("ddim", ddim, 50, {"eta": 0.0})):
            def ours(name=name, steps=steps):
                return sample(denoiser, num, (1, 8, 8), sampler=name, steps=steps, seed=0, noise="stream",
                              spacing=settings["timestep_spacing"], progress=False,
                              **({"var_type": denoiser.var_type} if name == "ddpm" else {})).x

            def theirs(scheduler=scheduler, steps=steps, kw=kw):
                return _diffusers_loop(unet, scheduler, num, steps, 0, **kw)

            a, b, ratio = _side_by_side(ours, theirs, rounds)
            diff = float((ours() - theirs()).abs().max())
            out[name] = {"steps": steps, "batch": num, "diffprop_ms_per_step": round(1e3 * a / steps, 3),
                         "diffusers_ms_per_step": round(1e3 * b / steps, 3), "ratio": round(ratio, 3),
                         "max_abs_diff": diff}
    return {"unet": "UNet2DModel 8x8x1, channels (32, 64), 1 layer per block", "T": 1000, **out,
            "target_ratio_max": 1.05}


def samplers_bench() -> dict:
    return {"driver": driver_overhead(), "diffusers": diffusers_sampling(), "threads": torch.get_num_threads()}
