"""The GPU-hour estimate printed before a paper-scale reproduction starts.

How it is estimated (a guide, not a promise; real throughput varies 2-3x with the GPU, precision and data loading):
- a vanilla training step of Ho et al. 2020's 35.7M CIFAR-10 U-Net at batch 128 costs 8 / 21 V100-seconds: their
  App. B trains it at 21 steps/s on a TPU v3-8, which they liken to 8 V100 GPUs;
- one sample with T = 1000 DDPM steps costs 8 * 17 / 256 V100-seconds (they draw 256 samples in 17 s);
- both scale with the pixel count over 32 x 32, the batch over 128 and T over 1000;
- a regularized step costs the vanilla step times the regularizer's relative step cost, measured side by side on CPU
  with the tiny U-Net on digits (``RELATIVE``; ``diffprop bench regularizers`` measures the same ratios);
- SMD multiplies the denoising loss's cost by its network's relative cost (``SMD_NET``) times ``n_eta``;
- a propagation curve of N chains costs about N samples.
"""
from __future__ import annotations

import math

from ..config import Config
from ..losses.epdm import PRESETS as EPDM_PRESETS

STEP_V100_S = 8 / 21  # Ho et al. 2020 App. B: 21 steps/s at batch 128 on a TPU v3-8 (~8 V100s)
SAMPLE_V100_S = 8 * 17 / 256  # ... and 256 samples (T = 1000) in 17 s
# Extra cost of each regularizer per step, relative to a vanilla step (1.0): tiny U-Net on digits, batch 64, CPU, two
# side-by-side runs of 3 and 5 rounds (diffprop.bench.train_overhead.time_side_by_side), averaged. EPDM: each
# bootstrapped model step (forward and backward on the second batch) costs about one vanilla step; a least-squares
# fit over L in {1, 3, 5, 7, 10} gives 1.07 per step with E[s - t] = (L + 1) / 2 steps (gradients through all).
EPDM_PER_CHAIN_STEP = 1.07
EXTRA = {"consistency": 4.9, "fokker_planck": 7.4, "input_perturbation": 0.77}
# SMD's network per forward+backward relative to the plain U-Net (``diffprop bench smd``, tiny U-Net on digits, batch
# 128, 8 interleaved rounds: 141 / 110 ms official, 109 / 110 ms embedding); n_eta draws multiply the denoising loss
SMD_NET = {"official": 1.28, "embedding": 1.0}


def relative_step_cost(cfg: Config) -> float:
    """A training step of ``cfg`` in units of a vanilla (denoising-loss only) step."""
    cost = 1.0 if cfg.objective.lambda_nl or not cfg.objective.regularizers else 0.0
    if cfg.model.smd:
        cost *= SMD_NET[cfg.smd.variant] * cfg.smd.n_eta
    for name in cfg.objective.regularizers:
        if name == "epdm":
            L = cfg.epdm.L if cfg.epdm.L is not None else EPDM_PRESETS[cfg.epdm.preset]["L"]
            cost += EPDM_PER_CHAIN_STEP * (L + 1) / 2  # s ~ U{t+1..t+L} (000 Sec. 5.2)
        else:
            cost += EXTRA[name]
    return cost


def gpu_hours(configs: list[Config], seeds: int, samples: int, chains: int, data_shape) -> dict:
    """V100-hours of training every config ``seeds`` times, then ``samples`` samples and ``chains`` curve chains."""
    pixels = math.prod(data_shape[1:]) / 32**2 if len(data_shape) == 3 else 0.0
    train = sum(c.train.steps * c.train.batch_size / 128 * relative_step_cost(c) for c in configs) * STEP_V100_S
    draw = len(configs) * (samples + chains) * configs[0].diffusion.T / 1000 * SAMPLE_V100_S
    return {"train": seeds * pixels * train / 3600, "sample": seeds * pixels * draw / 3600}


def describe(configs: list[Config], seeds: int, samples: int, chains: int, data_shape) -> str:
    h = gpu_hours(configs, seeds, samples, chains, data_shape)
    if len(data_shape) != 3:
        return "paper-scale estimate: none for vector data (the cost model is the CIFAR-10 U-Net's)"
    return (f"paper-scale estimate: ~{h['train'] + h['sample']:,.0f} V100 GPU-hours ({len(configs)} variants x "
            f"{seeds} seeds: training {h['train']:,.0f} h, sampling and curves {h['sample']:,.0f} h). Estimated from "
            f"Ho et al. 2020's reported throughput for this U-Net (21 steps/s at batch 128 and 256 samples in 17 s on "
            f"a TPU v3-8, ~8 V100s), scaled by pixels and by each regularizer's step cost measured relative to "
            f"vanilla; an A100/H100 is about 2-4x faster than a V100.")
