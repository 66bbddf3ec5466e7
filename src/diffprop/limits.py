"""Sizes refused before anything is allocated: a request that cannot fit is a one-line error naming the limit, not
a traceback from the allocator, or the kernel's OOM killer, minutes later."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import DiffpropError

MAX_SEED = 2**32 - 1  # numpy's RandomState, behind scikit-learn's toy datasets, takes 32-bit seeds
MAX_SAMPLES = 10**6  # samples per `sample` call (an FID needs 5e4); more in several calls with other seeds
MAX_INT = 2**63 - 1  # torch, numpy and JSON readers hold integers in 64 bits


def memory_bytes() -> int:
    """This machine's memory, or the container's (cgroup v2) limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def check_fits(nbytes: float, what: str) -> None:
    """Refuse ``what`` (a sentence naming the request and its size) when ``nbytes`` exceed this machine's memory."""
    have = memory_bytes()
    if nbytes > have:
        raise DiffpropError(f"{what} needs {gib(nbytes)}, more than this machine's {gib(have)} of memory")
