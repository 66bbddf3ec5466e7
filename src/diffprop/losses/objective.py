"""The training objective: ``lambda_nl * denoising + sum_i weight_i * regularizer_i`` (000 Eq. 15, generalised).

A regularizer is a small callable ``reg(denoiser, x0, generator) -> Term``: a scalar to minimise and the
parts worth logging (MMD value, chain length, bandwidth, ...). Each is built from its config section by
``from_config(cfg)``; they compose with any backbone and with each other.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

import torch

from .denoising import DenoisingLoss

# the main loss, ``objective.loss``: name -> (module, class), each with ``from_config(cfg)`` and a per-sample
# ``__call__(denoiser, x0, generator)``
LOSSES = {"denoising": ("diffprop.losses.denoising", "DenoisingLoss"),
          # score matching (004 Sec. 4) over denoiser.score, weighted by score_matching.weighting
          "dsm": ("diffprop.losses.score_matching", "DSM"), "ssm": ("diffprop.losses.score_matching", "SSM"),
          "ssm-vr": ("diffprop.losses.score_matching", "SSMVR"), "ism": ("diffprop.losses.score_matching", "ISM"),
          # consistency models (Song et al. 2023), the denoiser's parameterization cm, options in [cm]
          "cd": ("diffprop.losses.consistency_models", "ConsistencyDistillation"),
          "ct": ("diffprop.losses.consistency_models", "ConsistencyTraining")}
# name -> (module, class); imported when used, so a regularizer's dependencies load only if it is on
REGISTRY = {"epdm": ("diffprop.losses.epdm", "EPDM"),
            "consistency": ("diffprop.losses.consistency", "Consistency"),
            "input_perturbation": ("diffprop.losses.input_perturbation", "InputPerturbation"),
            "fokker_planck": ("diffprop.losses.fokker_planck", "FokkerPlanck"),
            "chain_mmd": ("diffprop.losses.chain_mmd", "ChainMMD"),
            "chain_denoise": ("diffprop.losses.chain_denoise", "ChainDenoise")}
# regularizers defined on the discrete chain only, and why (refused with a continuous-time diffusion.process)
DISCRETE_ONLY = {"epdm": "its bootstrapped chain of L ancestral steps and its time weights w_t are over integer "
                         "timesteps",
                 "consistency": "its reverse trajectories are DDPM sub-chains between integer timesteps",
                 "fokker_planck": "its d/dt of the score is a stencil over integer timesteps",
                 "chain_mmd": "its buffer follows the DDPM chain over integer timesteps",
                 "chain_denoise": "its buffer follows the DDPM chain over integer timesteps"}


class Term(NamedTuple):
    value: torch.Tensor  # scalar
    logs: dict  # name -> float or 0-dim tensor (detached)
    parts: dict | None = None  # name -> the weighted scalar it adds to ``value`` (not detached), for gradient norms


def build_loss(cfg):
    """The main loss named by ``cfg.objective.loss`` (:data:`LOSSES`)."""
    module, cls = LOSSES[cfg.objective.loss]
    return getattr(importlib.import_module(module), cls).from_config(cfg)


def build_regularizer(name: str, cfg, sample_data=None):
    """``sample_data(n, generator) -> x0`` draws fresh training examples (EPDM's second batch S_0')."""
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(module), cls).from_config(cfg, sample_data=sample_data)


class Objective:
    """The main loss (by default the denoising loss) weighted by ``lambda_nl`` plus weighted regularizers; logs
    every part, the main loss under ``name``."""

    def __init__(self, lambda_nl: float = 1.0, regularizers: dict | None = None, time_sampler=None, loss=None,
                 name: str = "denoising"):
        self.lambda_nl, self.name = lambda_nl, name
        self.denoising = loss or DenoisingLoss(time_sampler)
        self.regularizers = regularizers or {}  # name -> (weight, callable)

    @classmethod
    def from_config(cls, cfg, sample_data=None) -> "Objective":
        regs = {}
        for name in cfg.objective.regularizers:
            reg = build_regularizer(name, cfg, sample_data)
            regs[name] = (reg.weight, reg)
        return cls(cfg.objective.lambda_nl, regs, loss=build_loss(cfg), name=cfg.objective.loss)

    def attach(self, denoiser):
        """Called by the trainer with its denoiser before training; returns the main loss's target network (a
        consistency model's EMA ``theta-``, :class:`~diffprop.losses.consistency_models.TargetNetwork`), which the
        trainer updates after every step and checkpoints, or None."""
        if hasattr(self.denoising, "attach"):
            self.denoising.attach(denoiser)
        return getattr(self.denoising, "target", None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The regularizers' state (a replay buffer, say) as ``NAME.KEY`` tensors, for the checkpoint."""
        return {f"{name}.{k}": v for name, (_, reg) in self.regularizers.items() if hasattr(reg, "state_dict")
                for k, v in reg.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], device=None) -> None:
        """Restore :meth:`state_dict`; a stateful regularizer without entries starts afresh."""
        for name, (_, reg) in self.regularizers.items():
            if hasattr(reg, "load_state_dict"):
                reg.load_state_dict({k.removeprefix(f"{name}."): v for k, v in state.items()
                                     if k.startswith(f"{name}.")}, device)

    def __call__(self, denoiser, x0: torch.Tensor, generator: torch.Generator) -> Term:
        total, logs, parts = x0.new_zeros(()), {}, {}
        if self.lambda_nl or not self.regularizers:  # lambda_nl = 0 (pure ADM-IP, say): skip the unused loss
            nl = self.denoising(denoiser, x0, generator).mean()
            total, logs = self.lambda_nl * nl, {self.name: nl.detach()}
            parts[self.name] = total
        for name, (weight, reg) in self.regularizers.items():
            term = reg(denoiser, x0, generator)
            parts[name] = weight * term.value
            total = total + parts[name]
            logs[name] = term.value.detach()
            logs.update({f"{name}.{k}": v for k, v in term.logs.items()})
        return Term(total, logs, parts)
