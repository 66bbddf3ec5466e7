"""A full ``measure`` on ``digits`` with the tiny U-Net (N = M = 1000, T = 1000, 20 grid points, 3 kernels):
total time, the share spent in MMD (the chain should dominate), and the time of drawing the chain alone (the same
DDPM chain, the same states recorded) measured beside it: ``measure_over_chain`` should stay <= 1.5. The U-Net is
freshly initialised: its cost per step does not depend on its weights."""
from __future__ import annotations

import time

import torch

from ..config import load_config
from ..data import load_dataset
from ..diagnostics import propagation as prop
from ..runs import build_denoiser
from ..samplers import sample


def measure_bench(num: int = 1000, grid_points: int = 20, T: int | None = None) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_config(None, ["data.name=digits", "model.kind=unet", "model.preset=tiny",
                             *([f"diffusion.T={T}"] if T else [])])
    data = load_dataset("digits")
    torch.manual_seed(0)
    denoiser = build_denoiser(cfg, data.data_shape).to(device).eval()
    spent = {"mmd": 0.0}

    def timed(fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent["mmd"] += time.perf_counter() - t0
        return wrapper

    originals = prop.mmd, prop.mmd_test
    prop.mmd, prop.mmd_test = timed(prop.mmd), timed(prop.mmd_test)
    grid = prop.time_grid(cfg.diffusion.T, grid_points)

    def chain() -> float:  # the chain alone, as propagation draws it
        t0 = time.perf_counter()
        sample(denoiser, num, tuple(data.data_shape), sampler="ddpm", device=device, progress=False,
               record=sorted({u for t in grid for u in (t - 1, t)}))
        return time.perf_counter() - t0

    before = chain()  # before and after the measurement: drift on a shared machine hits both sides alike
    try:
        t0 = time.perf_counter()
        prop.propagation(denoiser, data.x, num=num, grid=grid, kernels=("rbf", "laplace", "imq"), device=device,
                         progress=False)
        total = time.perf_counter() - t0
    finally:
        prop.mmd, prop.mmd_test = originals
    chain_s = (before + chain()) / 2
    return {"dataset": "digits", "model": "unet tiny (random init)", "N": num, "M": num, "T": cfg.diffusion.T,
            "grid_points": grid_points, "kernels": 3, "device": device, "threads": torch.get_num_threads(),
            "total_s": round(total, 1), "mmd_s": round(spent["mmd"], 1), "mmd_share": round(spent["mmd"] / total, 3),
            "target_mmd_share_max": 0.20, "chain_s": round(chain_s, 1), "measure_over_chain": round(total / chain_s, 3),
            "target_measure_over_chain_max": 1.5}
