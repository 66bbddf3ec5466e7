"""Runs survive kill -9, full disks, divergence and a second trainer (issue 13). Each kill is a forked copy of this
process training a tiny run, SIGKILLed at its moment; ``diffprop bench crash`` does many more as real processes."""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffprop import checkpoint, runs
from diffprop.bench.crash import differences, kill_forked, train_argv
from diffprop.checkpoint import list_checkpoints, save_checkpoint
from diffprop.cli import main
from diffprop.errors import DiffpropError


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run (30 steps, checkpoints at 10, 20, 30), its config file and how long it took."""
    root = tmp_path_factory.mktemp("crash")
    (root / "tiny.toml").write_text("")
    assert main(train_argv(root / "tiny.toml", root / "warm-up")) == 0  # first-call costs out of the timing
    t0 = time.perf_counter()
    assert main(train_argv(root / "tiny.toml", root / "reference")) == 0
    return root / "tiny.toml", root / "reference", time.perf_counter() - t0


RANDOM = random.Random(13)


def _one_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("diffprop: note:")]
    assert len(err) == 1 and err[0].startswith("diffprop: error: "), err
    return err[0]


@pytest.mark.parametrize("moment", [dict(step=10, after="model"), dict(step=20, after="optimizer"),
                                    dict(step=30, after="rng"), *(dict(fraction=RANDOM.uniform(0.05, 0.95))
                                                                  for _ in range(2))],
                         ids=["first-checkpoint", "second-checkpoint", "last-checkpoint", "random-1", "random-2"])
def test_kill_9_then_resume_is_bit_exact(moment, reference, tmp_path, capsys):
    config, ref, seconds = reference
    run = tmp_path / "run"
    if "fraction" in moment:  # a random moment of the run's life, set-up included
        kill_forked(train_argv(config, run), delay=moment["fraction"] * seconds)
    else:
        kill_forked(train_argv(config, run), **moment)
    left = {p.name for p in (run / "checkpoints").iterdir()} if (run / "checkpoints").is_dir() else set()
    if "step" in moment:  # killed inside that checkpoint's write: its partial folder is all there is of it
        assert f".tmp_step_{moment['step']:08d}" in left and f"step_{moment['step']:08d}" not in left
    again = ["--resume", "latest"] if (run / "config.toml").is_file() else []
    if moment.get("step") == 10:  # before any complete checkpoint a fresh start works as well as a resume
        shutil.copytree(run, tmp_path / "fresh")
        assert main(train_argv(config, tmp_path / "fresh")) == 0
        assert differences(ref, tmp_path / "fresh") == []
    assert main(train_argv(config, run, *again)) == 0, capsys.readouterr().err
    assert differences(ref, run) == []
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_second_trainer_is_refused_while_the_first_holds_the_run(reference, tmp_path, capsys):
    config, *_ = reference
    run = tmp_path / "run"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # holds the run's lock, as a training process does, until killed
        try:
            runs.lock_run(run)
            os.write(w, b"!")
            while True:  # (os.pause is missing from some Python builds, this one's included)
                time.sleep(3600)
        finally:
            os._exit(0)
    os.read(r, 1)
    try:
        for again in ([], ["--resume", "latest"]):
            assert main(train_argv(config, run, *again)) == 2
            assert f"{run}: another process (pid {pid}) is training this run; wait for it to end or choose another " \
                   f"--out" in _one_error(capsys)
    finally:
        os.kill(pid, 9)  # the kernel drops a killed process's lock: no stale lock to clear by hand
        os.waitpid(pid, 0)
    assert main(train_argv(config, run)) == 0
    assert not (run / ".lock").exists()


def test_disk_full_in_a_checkpoint_write(reference, tmp_path, monkeypatch, capsys):
    config, ref, _ = reference
    real = checkpoint.save_file

    def full_disk(tensors, path):  # the writer of step 20 finds the disk full after two files
        if Path(path).parent.name == ".tmp_step_00000020" and Path(path).name == "optimizer.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(tensors, path)
    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    run = tmp_path / "run"
    assert main(train_argv(config, run)) == 2
    assert (f"cannot write checkpoint step 20 (No space left on device); the partial folder was removed; the "
            f"previous checkpoint {run / 'checkpoints/step_00000010'} is intact") in _one_error(capsys)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000010"]
    for part in ("model", "ema", "optimizer", "rng"):
        a, b = (load_file(r / "checkpoints/step_00000010" / f"{part}.safetensors") for r in (ref, run))
        assert all(a[k].equal(b[k]) for k in a)
    monkeypatch.setattr(checkpoint, "save_file", real)  # space again: the run goes on from step 10
    assert main(train_argv(config, run, "--resume", "latest")) == 0
    assert differences(ref, run) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_disk_full_on_a_real_tiny_tmpfs(reference, tmp_path, capsys):
    config, ref, _ = reference
    disk = tmp_path / "disk"
    disk.mkdir()
    pages = sum(-(-f.stat().st_size // 4096) for f in (ref / "checkpoints/step_00000010").iterdir())
    # room for the run's small files and one checkpoint, not for a second one
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={(pages + 10) * 4096}", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("a tmpfs cannot be mounted here")
    try:
        assert main(train_argv(config, disk / "run")) == 2
        err = _one_error(capsys)
        assert "cannot write checkpoint step 20 (No space left on device); the partial folder was removed; the " \
               f"previous checkpoint {disk / 'run/checkpoints/step_00000010'} is intact" in err, err
        assert [p.name for p in (disk / "run/checkpoints").iterdir()] == ["step_00000010"]
        assert main(["sample", str(disk / "run"), "--num", "4", "--steps", "2", "--out", str(tmp_path / "s.npz")]) == 0
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_diverging_run_leaves_only_finite_checkpoints_and_resumes_with_a_smaller_lr(reference, tmp_path, capsys):
    config, *_ = reference
    run = tmp_path / "run"
    fast = ["--set", "train.lr=1e4", "--set", "train.checkpoint_every=1", "--set", "train.warmup_steps=0"]
    assert main(train_argv(config, run, *fast)) == 2
    err = _one_error(capsys)
    assert "training stopped: the loss is nan at step 3; the weights were not updated; their checkpoint moved to " \
           f"{run / 'checkpoints/diverged_step_00000002'}; last good checkpoint: {run / 'checkpoints/step_00000001'}" \
           in err, err
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001"]
    for part in ("model", "ema"):
        weights = load_file(run / f"checkpoints/step_00000001/{part}.safetensors")
        assert all(t.isfinite().all() for t in weights.values())
    assert main(["sample", str(run), "--num", "16", "--steps", "5", "--out", str(tmp_path / "s.npz")]) == 0
    calm = ["--set", "train.lr=1e-3", "--set", "train.steps=5", "--set", "train.warmup_steps=0"]
    assert main(train_argv(config, run, *calm, "--resume", "latest")) == 0
    assert "diffprop: note: resuming with train.steps = 5 (was 30), train.lr = 0.001 (was 10000.0), " \
           "train.checkpoint_every = 10 (was 1)" in capsys.readouterr().err
    assert list_checkpoints(run)[-1].name == "step_00000005"
    state = json.loads((list_checkpoints(run)[-1] / "state.json").read_text())
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)


def test_non_finite_weights_are_never_written(tmp_path):
    good = {"w": torch.ones(2)}
    save_checkpoint(tmp_path, 1, model=good, ema=good, optimizer={"state": {}, "param_groups": []},
                    rng={"torch": torch.zeros(1, 3, dtype=torch.uint8)}, extra={}, keep_last=3)
    for bad in ({"w": torch.tensor([1.0, float("nan")])}, {"w": torch.tensor([float("inf"), 0.0])}):
        with pytest.raises(DiffpropError, match=r"training stopped at step 2: the run diverged \(1 EMA weight tensors "
                           r"hold NaN or infinite values, e.g. 'w'\); no checkpoint written; last good checkpoint: .*"
                           r"step_00000001"):
            save_checkpoint(tmp_path, 2, model=good, ema=bad, optimizer={"state": {}, "param_groups": []},
                            rng={}, extra={}, keep_last=3)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]


def test_sample_reads_the_newest_checkpoint_when_a_training_prunes_the_one_it_was_reading(reference, tmp_path,
                                                                                          monkeypatch, capsys):
    _, ref, _ = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    real, calls = runs.load_checkpoint, []

    def pruned_meanwhile(path, parts):  # as a training with keep_last = 1 does: publish step 40, then prune 30
        calls.append(Path(path).name)
        if len(calls) == 1:
            shutil.copytree(path, path.with_name("step_00000040"))
            st = json.loads((path.with_name("step_00000040") / "state.json").read_text())
            (path.with_name("step_00000040") / "state.json").write_text(json.dumps({**st, "step": 40}))
            shutil.rmtree(path)
        return real(path, parts)
    monkeypatch.setattr(runs, "load_checkpoint", pruned_meanwhile)
    assert main(["sample", str(run), "--num", "8", "--steps", "2"]) == 0, capsys.readouterr().err
    assert calls == ["step_00000030", "step_00000040"]
