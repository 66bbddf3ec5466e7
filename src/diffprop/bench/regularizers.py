"""Time per training step with each regularizer, relative to the vanilla (denoising-only) step on the same
model and batch, measured side by side: each round times every variant once, in turn."""
from __future__ import annotations

import tempfile

from ..config import load_config
from ..training import Trainer
from .train_overhead import CASES, time_side_by_side

ROUNDS, STEPS = 5, 5
VARIANTS = {
    "vanilla": [],
    **{f"epdm L={L} grad={g}": ['objective.regularizers=["epdm"]', f"epdm.L={L}", f"epdm.grad={g}"]
       for L in (1, 3, 5, 7, 10) for g in ("last", "all")},
    "consistency": ['objective.regularizers=["consistency"]'],
    "input_perturbation": ['objective.regularizers=["input_perturbation"]'],
    "fokker_planck": ['objective.regularizers=["fokker_planck"]'],
    # the chain-started term (losses.chain_mmd): L steps of the model's own chain per training step
    "chain_mmd L=5 grad=last": ['objective.regularizers=["chain_mmd"]', "chain_mmd.L=5", "chain_mmd.grad=last"],
    # denoising at the chain's states (losses.chain_denoise): L no-grad steps and a 4096-example posterior mean
    "chain_denoise L=5": ['objective.regularizers=["chain_denoise"]', "chain_denoise.L=5"],
}


def regularizers_bench() -> dict:
    cases = []
    for case, overrides in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            trainers = {name: Trainer(load_config(None, overrides + extra + [f"train.steps={10**9}"]),
                                      f"{tmp}/{i}", progress=False)
                        for i, (name, extra) in enumerate(VARIANTS.items())}
            times = time_side_by_side(trainers, ROUNDS, STEPS)
        base = times["vanilla"]
        cases.append({"case": case, "vanilla_ms": round(base * 1e3, 2),
                      "relative": {n: round(v / base, 2) for n, v in times.items()}})
    return {"rounds": ROUNDS, "steps_per_round": STEPS, "targets": {"epdm L=5 grad=last": 2.0, "consistency": 1.5,
                                                                 "chain_mmd L=5 grad=last": 2.0},
            "cases": cases}
