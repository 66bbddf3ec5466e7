"""Soft mixture denoising's cost: time per training step and memory of each SMD variant against the plain
backbone, for the MLP on gmm-grid and the tiny U-Net on digits. Time side by side (each round times every variant
once, in turn; the median over rounds). Memory two ways: ``activations_mb``, the tensors autograd keeps for the
backward pass of one loss (parameters excluded; exact on any device), and ``peak_mb``, in a fresh process per
variant, the peak of two steps past a warm-up one (CUDA: the allocator's; CPU: the resident high-water mark, which
the allocator's reuse of freed pages makes coarse at the MLP's few MB)."""
from __future__ import annotations

import json
import tempfile

import torch

from ..config import load_config
from ..training import Trainer
from .memory import in_fresh_process, peak_memory_mb
from .train_overhead import CASES, time_side_by_side

ROUNDS, STEPS = 5, 5
VARIANTS = {
    "plain": [],
    "official": ["model.smd=true", "smd.variant=official"],
    "embedding": ["model.smd=true", "smd.variant=embedding"],
    "official n_eta=2": ["model.smd=true", "smd.variant=official", "smd.n_eta=2"],
    "embedding n_eta=2": ["model.smd=true", "smd.variant=embedding", "smd.n_eta=2"],
}


def _trainer(case: str, variant: str, run_dir: str) -> Trainer:
    return Trainer(load_config(None, CASES[case] + VARIANTS[variant] + [f"train.steps={10**9}"]), run_dir,
                   progress=False)


def step_peak_mb(case: str, variant: str) -> str:
    """Peak memory (MB, JSON) of two training steps after a warm-up step, in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        t = _trainer(case, variant, tmp)
        t.train_step()
        return json.dumps(peak_memory_mb(lambda: [t.train_step() for _ in range(2)], t.device)[1])


def saved_activations_mb(trainer: Trainer) -> float:
    """MB of the distinct tensors autograd saves for backward while computing one training loss, parameters
    excluded."""
    params = {p.untyped_storage().data_ptr() for p in trainer.net.parameters()}
    saved = {}

    def pack(x):
        storage = x.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        trainer.objective(trainer.denoiser, trainer.batch(trainer.step), trainer.generator)
    return sum(saved.values()) / 2**20


def smd_bench(memory: bool = True) -> dict:
    """Per case: parameters, ms per step, time relative to the plain backbone, saved activations and (``memory``)
    the peak MB."""
    cases = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            trainers = {v: _trainer(case, v, f"{tmp}/{i}") for i, v in enumerate(VARIANTS)}
            ms = {v: s * 1e3 for v, s in time_side_by_side(trainers, ROUNDS, STEPS).items()}
            params = {v: sum(p.numel() for p in t.net.parameters()) for v, t in trainers.items()}
            saved = {v: round(saved_activations_mb(t), 2) for v, t in trainers.items()}
            device = str(trainers["plain"].device)
        row = {"case": case, "device": device, "params": params, "ms_per_step": {v: round(m, 2) for v, m in ms.items()},
               "relative": {v: round(m / ms["plain"], 2) for v, m in ms.items()}, "activations_mb": saved}
        if memory:
            peak = {v: in_fresh_process(__name__, f"step_peak_mb({case!r}, {v!r})") for v in VARIANTS}
            row["peak_mb"] = {v: p and round(p, 1) for v, p in peak.items()}
        cases.append(row)
    return {"rounds": ROUNDS, "steps_per_round": STEPS, "cases": cases}
