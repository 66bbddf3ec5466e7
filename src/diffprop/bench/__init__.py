"""Performance benchmarks: each measures its alternatives side by side in one run and returns JSON."""
from __future__ import annotations

import platform

import torch

from .crash import crash_bench
from .measure_bench import measure_bench
from .metrics_bench import metrics_bench
from .mmd_bench import mmd_bench
from .regularizers import regularizers_bench
from .samplers_bench import samplers_bench
from .smd import smd_bench
from .train_overhead import train_overhead

BENCHMARKS = {"train-overhead": train_overhead, "mmd": mmd_bench, "measure": measure_bench,
              "regularizers": regularizers_bench, "smd": smd_bench, "crash": crash_bench, "metrics": metrics_bench,
              "samplers": samplers_bench}


def run_benchmark(name: str) -> dict:
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
           platform.machine(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    return {"benchmark": name, "environment": env, **BENCHMARKS[name]()}
