"""Peak memory of a call: the CUDA allocator's peak on a GPU, the process's resident high-water mark on Linux."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch


def peak_memory_mb(fn, device) -> tuple[object, float | None]:
    """Run ``fn()``; return its result and the peak memory in MB it reached (None where it cannot be read)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return out, (torch.cuda.max_memory_allocated() - base) / 2**20
    status, refs = Path("/proc/self/status"), Path("/proc/self/clear_refs")
    try:
        refs.write_text("5")  # reset the resident-set high-water mark (Linux >= 4.0)
        before = _vm(status, "VmRSS")
        out = fn()
        return out, (_vm(status, "VmHWM") - before) / 1024
    except OSError:
        return fn(), None


def _vm(status: Path, key: str) -> int:
    for line in status.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    raise OSError(key)


def in_fresh_process(module: str, call: str):
    """The JSON that ``module.call`` returns, evaluated in a fresh interpreter so that no earlier allocation
    hides a peak (the resident high-water mark only grows); None if it failed."""
    code = f"import importlib; print(importlib.import_module({module!r}).{call})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    return json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
