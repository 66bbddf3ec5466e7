"""MMD at N = M = 1000 and dimensions 2, 64, 3072 for every kernel: diffprop's chunked ``mmd`` against a
plain reference that materialises the full ``torch.cdist`` matrices, timed side by side, with peak memory."""
from __future__ import annotations

import json
import statistics
import time

import torch

from ..diagnostics.mmd import KERNELS, median_bandwidth, mmd
from .memory import in_fresh_process, peak_memory_mb

N, DIMS, REPEATS = 1000, (2, 64, 3072), 3


def reference_mmd(x, y, kernel):
    """Unbiased MMD^2 from full N x N, M x M, N x M kernel matrices (no chunking)."""
    h = median_bandwidth(x, y).to(x.dtype)
    k = KERNELS[kernel]
    kxx, kyy, kxy = (k(torch.cdist(a, b).pow(2), h) for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * kxy.mean())


def _time(fn):
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _inputs(d, device):
    g = torch.Generator(device).manual_seed(0)
    return torch.randn(N, d, generator=g, device=device), torch.randn(N, d, generator=g, device=device) + 0.1


def peak_in_fresh_process(d: int, kernel: str, which: str, device: str) -> float | None:
    """Peak memory (MB) of one call, in a fresh interpreter so no earlier allocation hides it."""
    return in_fresh_process(__name__, f"_one({d}, {kernel!r}, {which!r}, {device!r})")


def _one(d, kernel, which, device):
    x, y = _inputs(d, device)
    fn = (lambda: mmd(x, y, kernel)) if which == "ours" else (lambda: reference_mmd(x, y, kernel))
    return json.dumps(peak_memory_mb(fn, device)[1])


def mmd_bench() -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = []
    for d in DIMS:
        x, y = _inputs(d, device)
        for kernel in KERNELS:
            ours, ref = (lambda: mmd(x, y, kernel)), (lambda: reference_mmd(x, y, kernel))
            v_ours, v_ref = ours(), ref()
            t_ours, t_ref = _time(ours), _time(ref)
            mem_ours, mem_ref = (peak_in_fresh_process(d, kernel, w, device) for w in ("ours", "reference"))
            cases.append({"dim": d, "kernel": kernel, "ms": round(t_ours * 1e3, 2), "reference_ms": round(t_ref * 1e3, 2),
                          "ratio": round(t_ours / t_ref, 3), "peak_mb": mem_ours and round(mem_ours, 1),
                          "reference_peak_mb": mem_ref and round(mem_ref, 1),
                          "abs_diff": float(abs(v_ours - v_ref))})
    return {"N": N, "M": N, "device": device, "repeats": REPEATS, "cases": cases}
