"""Training runs of a reproduction, each trained once: a finished run of the same config is reused, an unfinished
one resumed, and independent runs can train in parallel processes (``diffprop reproduce --jobs N``).

A run folder is finished when it holds ``train.json`` (the record written here at the end) and was made with the
same config (:func:`diffprop.runs.made_with`); folders from before the record existed count as finished when their
last checkpoint is the config's last step.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import list_checkpoints, read_json
from .config import Config, config_from_dict
from .errors import DiffpropError
from .runs import made_with
from .training import Trainer

RECORD = "train.json"


def _source(init_from: str | Path | None) -> str | None:
    return None if init_from is None else str(Path(init_from).resolve())


def finished(run_dir: Path, cfg: Config, init_from: str | Path | None = None) -> bool:
    """``run_dir`` holds a finished run of ``cfg`` (fine-tuned from ``init_from``, as its record says, when given)."""
    if not made_with(run_dir, cfg):
        return False
    if (run_dir / RECORD).is_file():
        return read_json(run_dir / RECORD, "training record").get("init_from") == _source(init_from)
    if init_from is not None:  # no record: nothing says where its weights came from
        return False
    done = list_checkpoints(run_dir)
    return bool(done) and not cfg.train.time_budget and done[-1].name == f"step_{cfg.train.steps:08d}"


def train_or_reuse(cfg: Config, run_dir: str | Path, *, progress: bool = True, init_from: str | Path | None = None,
                   force: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir`` unless it holds a finished run of it (and ``force`` is off); an unfinished one of
    the same config on a step budget resumes from its latest checkpoint. ``init_from``: fine-tune from that run's
    weights (:mod:`diffprop.init_from`), which the record names, so a run of the same config from other weights is
    not reused. Returns the record: folder, steps, seconds and ms per step of the training done (``reused``: none
    was)."""
    run_dir = Path(run_dir)
    if not force and finished(run_dir, cfg, init_from):
        record = read_json(run_dir / RECORD, "training record") if (run_dir / RECORD).is_file() else \
            {"steps": cfg.train.steps, "seconds": 0.0}
        return {**record, "dir": str(run_dir), "reused": True}
    same = not force and init_from is None and made_with(run_dir, cfg)
    resume = "latest" if same and not cfg.train.time_budget and list_checkpoints(run_dir) else None
    if resume is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir, resume=resume, progress=progress, init_from=init_from)
    start = trainer.step
    trainer.train()
    seconds = time.perf_counter() - t0
    record = {"dir": str(run_dir), "steps": trainer.step, "seconds": round(seconds, 2),
              "ms_per_step": round(1e3 * seconds / max(trainer.step - start, 1), 3),
              **({"init_from": _source(init_from)} if init_from is not None else {})}
    tmp = run_dir / f".tmp-{RECORD}"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, run_dir / RECORD)  # whole or absent
    return {**record, "reused": False}


def _train_in_worker(data: dict, run_dir: str, threads: int, init_from: str | None) -> dict:
    torch.set_num_threads(threads)
    return train_or_reuse(config_from_dict(data), run_dir, progress=False, init_from=init_from)


def train_all(todo: list[tuple], jobs: int = 1, progress: bool = True, desc: str = "runs") -> list[dict]:
    """Every ``(cfg, run_dir)`` or ``(cfg, run_dir, init_from)`` trained or reused, ``jobs`` at a time in separate
    processes (each with its share of the CPU threads; a run's result does not depend on which process trains it, as
    every random draw is seeded from its config). The records, in the order of ``todo``."""
    if jobs < 1:
        raise DiffpropError(f"--jobs must be at least 1, got {jobs}")
    todo = [(cfg, d, init[0] if init else None) for cfg, d, *init in todo]
    if jobs == 1 or len(todo) <= 1:
        return [train_or_reuse(cfg, d, progress=progress, init_from=i) for cfg, d, i in todo]
    threads = max(1, torch.get_num_threads() // jobs)
    records: list[dict | None] = [None] * len(todo)
    # spawn, not fork: a forked child inherits the parent's torch thread pools and any CUDA state
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_in_worker, cfg.to_dict(), str(d), threads, i and str(i)): n
                   for n, (cfg, d, i) in enumerate(todo)}
        try:
            for f in tqdm(as_completed(futures), total=len(futures), desc=f"{desc} ({jobs} processes)", unit="run",
                          disable=not progress):
                records[futures[f]] = f.result()
        except BaseException:  # a run failed (or ^C): the queued ones do not start
            pool.shutdown(cancel_futures=True)
            raise
    return records
