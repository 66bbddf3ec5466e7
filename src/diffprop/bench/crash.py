"""``diffprop bench crash``: kill -9 training runs at random moments, resume each, compare bit for bit.

Each kill lands at a random moment of a tiny run (start-up included), or inside a checkpoint write: the writer is
patched in the killed process only, to stop for good right after one of its files, the very first checkpoint's
included. Every killed run is then resumed with ``--resume latest`` and must end with the same final checkpoint (every
tensor of the model, EMA, optimizer and generator states, and ``state.json``) and the same log (all but timings) as an
uninterrupted run. ``tests/test_crash.py`` does a handful of kills in forked processes (seconds); this does many, as
real ``diffprop train`` processes, and then races: two ``diffprop train`` started together into one folder (one
trains, the other is refused in one line), and ``sample`` read again and again while a training with ``keep_last = 1``
writes and prunes a checkpoint at every step.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from safetensors.torch import load_file

# 30 steps of a tiny MLP on gmm-grid, a checkpoint and a log line every 10 (the tests' tiny config)
TINY = ["model.width=32", "model.depth=2", "model.time_dim=16", "data.num_samples=512", "train.batch_size=64",
        "train.steps=30", "train.log_every=10", "train.checkpoint_every=10", "train.warmup_steps=5", "diffusion.T=100"]
PARTS = ("model", "ema", "optimizer", "rng")
KILLS = 16  # half inside checkpoint writes (a third of those in the first), half at random moments (while it
# trains, or at any time of the process's life)


def train_argv(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(config), "--out", str(out), "--quiet", *[x for o in TINY for x in ("--set", o)], *extra]


def pause_in_checkpoint_write(step: int, after: str, signal_ready: Callable[[], None]) -> None:
    """Patch this process's checkpoint writer to stop for good right after writing ``after`` (a part name) of
    checkpoint ``step``, once ``signal_ready()`` has told whoever is waiting to kill it there."""
    from .. import checkpoint

    real = checkpoint.save_file

    def save_file(tensors, path):
        real(tensors, path)
        if Path(path).parent.name == f".tmp_step_{step:08d}" and Path(path).name == f"{after}.safetensors":
            signal_ready()
            time.sleep(3600)
    checkpoint.save_file = save_file


def signal_when_training(signal_ready: Callable[[], None]) -> None:
    """Patch this process's trainer to call ``signal_ready()`` as its training loop starts (after start-up)."""
    from .. import training

    real = training.Trainer.train

    def train(self):
        signal_ready()
        return real(self)
    training.Trainer.train = train


def child(argv: list[str], step: int | None, after: str | None, training: bool) -> None:
    """A ``diffprop train`` process to be killed (``python -c``): it prints ``ready`` inside checkpoint ``step``'s
    write, or with ``training`` as its training loop starts."""
    from ..cli import main

    if step is not None:
        pause_in_checkpoint_write(step, after, lambda: print("ready", flush=True))
    elif training:
        signal_when_training(lambda: print("ready", flush=True))
    sys.exit(main(argv))


def kill_forked(argv: list[str], *, step: int | None = None, after: str | None = None, delay: float = 0.0) -> None:
    """Fork, train in the child, and SIGKILL it inside checkpoint ``step``'s write (after its part ``after``) or
    ``delay`` seconds after it starts. Fast (no start-up): the child is this process, imports done."""
    from ..cli import main

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(r)
        try:
            if step is None:
                os.write(w, b"!")
            else:
                pause_in_checkpoint_write(step, after, lambda: os.write(w, b"!"))
            main(argv)
        finally:
            os._exit(0)
    os.close(w)
    try:
        if not select.select([r], [], [], 300)[0]:
            raise TimeoutError("the child never reached its moment")
        time.sleep(delay)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def kill_process(argv: list[str], *, step: int | None = None, after: str | None = None, delay: float = 0.0,
                 training: bool = False) -> None:
    """Start ``diffprop train`` as a real process and SIGKILL it at its moment: inside checkpoint ``step``'s write
    (after its part ``after``), or ``delay`` seconds after its training loop starts (``training``) or after the
    process starts, its imports included."""
    code = f"from diffprop.bench.crash import child; child({argv!r}, {step!r}, {after!r}, {training!r})"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV)
    try:
        if step is not None or training:
            p.stdout.readline()
        time.sleep(delay)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two run folders: the final checkpoint (name, every tensor, state.json) and the log
    (every record without its timing)."""
    from ..checkpoint import list_checkpoints

    ca, cb = list_checkpoints(a)[-1:], list_checkpoints(b)[-1:]
    if not ca or not cb or ca[0].name != cb[0].name:
        return [f"final checkpoints {[p.name for p in ca]} and {[p.name for p in cb]}"]
    out = []
    for part in PARTS:
        ta, tb = load_file(ca[0] / f"{part}.safetensors"), load_file(cb[0] / f"{part}.safetensors")
        out += [f"{part}: {k}" for k in sorted(set(ta) | set(tb))
                if k not in ta or k not in tb or not ta[k].equal(tb[k])]
    if json.loads((ca[0] / "state.json").read_text()) != json.loads((cb[0] / "state.json").read_text()):
        out.append("state.json")

    def log(run):
        return [{k: v for k, v in json.loads(x).items() if k != "it_s"} for x in (run / "log.jsonl").open()]
    return out + (["log.jsonl"] if log(a) != log(b) else [])


def _quiet(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` with its output kept: the exit status and the last line it wrote to stderr."""
    from ..cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, (err.getvalue().strip().splitlines() or [""])[-1]


def races(config: Path, tmp: Path, reference: Path, pairs: int = 3, reads: int = 40) -> dict:
    """Two trainers started together into one folder, ``pairs`` times; then ``reads`` samplings of a run whose
    training replaces its only checkpoint at every step."""
    together = []
    for i in range(pairs):
        run = tmp / f"pair{i}"
        procs = [subprocess.Popen([sys.executable, "-m", "diffprop.cli", *train_argv(config, run)], env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        done = [(p.wait(), p.stderr.read().strip()) for p in procs]
        together.append({"exit_codes": sorted(c for c, _ in done), "refusal": [e for c, e in done if c][:1],
                         "bit_exact": not differences(reference, run)})
    run = tmp / "pruning"
    p = subprocess.Popen([sys.executable, "-m", "diffprop.cli", *train_argv(config, run, *(
        x for o in ("train.steps=100000", "train.checkpoint_every=1", "train.keep_last=1", "train.log_every=1000")
        for x in ("--set", o)))], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failed = []
    try:
        while not list((run / "checkpoints").glob("step_*")):
            time.sleep(0.1)
        for _ in range(reads):
            code, last = _quiet(["sample", str(run), "--num", "8", "--steps", "2", "--out", str(tmp / "s.npz")])
            if code:
                failed.append(last)
    finally:
        p.kill()
        p.wait()
    return {"two_trainers_together": together, "sample_while_pruning": {"reads": reads, "failed": len(failed),
                                                                       "errors": failed[:3]}}


def crash_bench(kills: int = KILLS, seed: int = 0) -> dict:
    import torch

    torch.set_num_threads(1)  # as the killed processes (OMP_NUM_THREADS=1): the same float reductions everywhere
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "tiny.toml"
        config.write_text("")
        t0 = time.perf_counter()  # the killed processes' lifetime, start-up included
        subprocess.run([sys.executable, "-m", "diffprop.cli", *train_argv(config, tmp / "timed")], check=True,
                       env=ENV, stdout=subprocess.DEVNULL)
        lifetime = time.perf_counter() - t0
        from ..training import Trainer

        span, real = [], Trainer.train

        def timed(self):  # the training loop alone: the span of the kills "while it trains"
            span.append(time.perf_counter())
            try:
                return real(self)
            finally:
                span.append(time.perf_counter())
        Trainer.train = timed
        try:
            assert _quiet(train_argv(config, tmp / "reference"))[0] == 0
        finally:
            Trainer.train = real
        training = span[1] - span[0]
        results = []
        for i in range(kills):
            run = tmp / f"run{i}"
            if i % 2:  # inside a checkpoint write: the first one every third time, else any
                moment = {"step": 10 if i % 6 == 1 else 10 * rng.randint(1, 3), "after": rng.choice(PARTS)}
                kill_process(train_argv(config, run), **moment)
            elif i % 4:  # while it trains
                moment = {"seconds_into_training": round(rng.uniform(0, training), 3)}
                kill_process(train_argv(config, run), delay=moment["seconds_into_training"], training=True)
            else:  # any time in the process's life, start-up included
                moment = {"seconds": round(rng.uniform(0, lifetime), 2)}
                kill_process(train_argv(config, run), delay=moment["seconds"])
            left = sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").is_dir() else []
            # what a user does: continue a run that started, else start it
            again = ("--resume", "latest") if (run / "config.toml").is_file() else ()
            code, last = _quiet(train_argv(config, run, *again))
            diff = differences(tmp / "reference", run) if code == 0 else [f"the resumed run failed: {last}"]
            results.append({**moment, "left": left, "resumed": code == 0, "bit_exact": not diff, "differences": diff})
            shutil.rmtree(run, ignore_errors=True)
        raced = races(config, tmp, tmp / "reference")
    in_writes = [r for r in results if "step" in r]
    return {"kills": len(results), "inside_checkpoint_writes": len(in_writes),
            "inside_the_first_checkpoint": sum(r["step"] == 10 for r in in_writes),
            "resumed": sum(r["resumed"] for r in results), "bit_exact": sum(r["bit_exact"] for r in results),
            "uninterrupted_process_seconds": round(lifetime, 2), "its_training_seconds": round(training, 2), **raced,
            "runs": results}
