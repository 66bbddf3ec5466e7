"""A full ``measure`` on ``digits`` with the tiny U-Net (N = M = 1000, T = 1000, 20 grid points, 3 kernels):
total time and the share spent in MMD (the chain should dominate). The U-Net is freshly initialised:
its cost per step does not depend on its weights."""
from __future__ import annotations

import time

import torch

from ..config import load_config
from ..data import load_dataset
from ..diagnostics import propagation as prop
from ..runs import build_denoiser


def measure_bench(num: int = 1000, grid_points: int = 20) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_config(None, ["data.name=digits", "model.kind=unet", "model.preset=tiny"])
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
    try:
        t0 = time.perf_counter()
        prop.propagation(denoiser, data.x, num=num, grid=prop.time_grid(cfg.diffusion.T, grid_points),
                         kernels=("rbf", "laplace", "imq"), device=device, progress=False)
        total = time.perf_counter() - t0
    finally:
        prop.mmd, prop.mmd_test = originals
    return {"dataset": "digits", "model": "unet tiny (random init)", "N": num, "M": num, "T": cfg.diffusion.T,
            "grid_points": grid_points, "kernels": 3, "device": device, "threads": torch.get_num_threads(),
            "total_s": round(total, 1), "mmd_s": round(spent["mmd"], 1), "mmd_share": round(spent["mmd"] / total, 3),
            "target_mmd_share_max": 0.20}
