"""The demo's recipes (:mod:`diffprop.demo`): data only, so that ``diffprop demo --help`` can state their times."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    data: str
    T: int
    model: dict  # [model] overrides of the MLP
    base: dict  # [train] of the base run (``finetune``) or of both models trained from scratch (no ``finetune``)
    finetune: dict | None  # [train] of the two fine-tunes from the base run's weights
    samples: int  # DDPM samples per model
    measure: dict  # propagation settings: N = M, grid, kernels
    minutes: float  # measured wall time on 2 idle cores, fresh (docs/results.md); the overall bar's scale
    phases: tuple[float, ...]  # share of that time per phase: base, one per model of METHODS, sampling, measuring


# a median-bandwidth RBF (what 000 uses) is blind inside a mode of std 0.05; a 0.1 bandwidth sees it
KERNELS = ("rbf", "rbf@0.1")
RECIPES = {
    # T = 1000, not fewer: with sigma_t^2 = beta_t even the exact oracle's chain is off by ~0.1 nats near t = 1 at
    # T = 100 (its steps are 10x larger), and the demo would show no floor to compare with
    "quick": Recipe("gmm-ring", 1000, {"width": 128, "depth": 3},
                    {"steps": 1500, "batch_size": 512, "lr": 5e-3, "lr_schedule": "cosine"},
                    {"steps": 300, "batch_size": 512, "lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 0},
                    1000, dict(num=1000, grid=[1, 2, 3, 5, 10, 30, 100, 1000], kernels=KERNELS),
                    1.9, (0.15, 0.03, 0.12, 0.06, 0.09, 0.52)),
    "default": Recipe("gmm-grid", 1000, {"width": 128, "depth": 3},
                      {"steps": 12000, "batch_size": 512, "lr": 3e-3, "lr_schedule": "cosine"},
                      {"steps": 1000, "batch_size": 512, "lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 0},
                      2000, dict(num=1000, grid=[1, 2, 3, 5, 10, 30, 100, 300, 1000], kernels=KERNELS),
                      6.4, (0.40, 0.04, 0.15, 0.08, 0.08, 0.25)),  # docs/results.md: how this was estimated
    "full": Recipe("gmm-grid", 1000, {},
                   {"steps": 12000, "batch_size": 512, "lr": 1e-3, "lr_schedule": "cosine", "checkpoint_every": 2000},
                   None, 2000, dict(num=1000, grid=[1, 3, 10, 30, 100, 200, 400, 700, 1000], kernels=KERNELS),
                   45.0, (0.0, 0.15, 0.55, 0.22, 0.03, 0.05)),
}
# the regularized model: 000's text (lambda_nl 0.8, lambda_reg 0.2, L = 5; configs/epdm-paper.toml)
EPDM = {"objective": {"lambda_nl": 0.8, "regularizers": ["epdm"]}, "epdm": {"preset": "paper"}}
# the best method of `diffprop reproduce reduce --scale small` (docs/results.md), with how the report names it
BEST = "chain-denoise"
METHODS = {"ddpm": ({}, "the plain denoising loss"),
           "epdm": (EPDM, "the cumulative-error regularizer of Li & van der Schaar (2024) as the paper describes it "
                          "(Sec. 5: `0.8 L_nl + 0.2 T w_t MMD^2(x~_t, x_t)`, L = 5 bootstrapped steps from a warm "
                          "start, rho = 0.003, median-bandwidth RBF)"),
           BEST: ({"objective": {"regularizers": ["chain_denoise"]}},
                  "diffprop's denoising at the chain's own states added to the plain loss (the network regressed, at "
                  "the states of its own DDPM chain kept in a replay buffer, on the posterior mean of 4096 training "
                  "examples; `[chain_denoise]`), the best of the methods `diffprop reproduce reduce` compares")}
HIGH_QUALITY = 0.9  # the share of samples near a mode the vanilla model should reach
REPORTED = ("high_quality_fraction", "mode_coverage", "mode_weight_tv", "within_mode_std_ratio",
            "log_likelihood", "mmd_rbf")
