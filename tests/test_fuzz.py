"""Malformed input through every command, in-process through ``diffprop.cli.main`` (issue 13).

Every case must end with exit status 2 and exactly one line ``diffprop: error: ...`` holding the expected words (notes
aside), must leave the files it was given byte for byte as they were and create none, and a case that hands over a
malicious pickle must not run it (its payload would create ``PWNED``). The cases: output paths, run folders (JSON,
logs, configs, checkpoint tensors, generator states, a checkpoint of another run), numbers and sizes (refused before
allocating, the limit named), nesting and archives, options that do not apply or values that must be refused,
requests that would hang, and reports that point outside their folder. Every config field is also given a value of
the wrong kind and one out of range. A tiny trained run is copied for each case that reads one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffprop import config as config_module
from diffprop.cli import main

from .conftest import TINY

READ_ONLY = Path("/sys/diffprop-fuzz")  # refused to everyone, root included (a chmod does not stop root)
CKPT = "r/checkpoints/step_00000030"


class Evil:
    """A pickle whose loading would run code: it creates the file ``PWNED`` beside it."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        return os.system, (f"touch {self.folder / 'PWNED'}",)


# -- what a case starts from --------------------------------------------------------------------------------------
def _tiny_toml(t: Path) -> None:
    lines = [f"{k.split('.')[1]} = {v}" for k, v in (o.split("=") for o in TINY)]
    sections = {}
    for o, line in zip(TINY, lines):
        sections.setdefault(o.split(".")[0], []).append(line)
    (t / "tiny.toml").write_text("".join(f"[{s}]\n" + "\n".join(v) + "\n" for s, v in sections.items()))


def _edit_json(rel: str, text: str | bytes):
    def setup(t: Path) -> None:
        path = t / rel
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def _edit_state(**changes):
    def setup(t: Path) -> None:
        path = t / CKPT / "state.json"
        state = json.loads(path.read_text())
        for k, v in changes.items():
            if v is _DROP:
                state.pop(k)
            else:
                state[k] = v
        path.write_text(json.dumps(state))
    return setup


def _edit_groups(change):
    def setup(t: Path) -> None:
        path = t / CKPT / "state.json"
        state = json.loads(path.read_text())
        change(state["optimizer"])
        path.write_text(json.dumps(state))
    return setup


def _edit_data(**changes):
    def setup(t: Path) -> None:
        info = json.loads((t / "r/data.json").read_text())
        info.update(changes)
        (t / "r/data.json").write_text(json.dumps(info))
    return setup


def _edit_tensors(part: str, change):
    """Rewrite ``part``.safetensors of the newest checkpoint with ``change(tensors)`` applied."""
    def setup(t: Path) -> None:
        path = t / CKPT / f"{part}.safetensors"
        tensors = load_file(path)
        change(tensors)
        save_file(tensors, path)
    return setup


def _first(tensors: dict, fn):
    k = sorted(tensors)[0]
    tensors[k] = fn(tensors[k])


def _replace_file(rel: str, data):
    def setup(t: Path) -> None:
        path = t / rel
        payload = data(t) if callable(data) else data
        if payload is None:
            path.unlink()
        else:
            path.write_bytes(payload)
    return setup


_DROP = object()
DEEP = "[" * 100_000 + "]" * 100_000


def _npz(name: str, **arrays):
    def setup(t: Path) -> None:
        np.savez(t / name, **arrays)
    return setup


def _evil_npz(name: str, key: str = "x"):
    def setup(t: Path) -> None:
        np.savez(t / name, **{key: np.array([Evil(t), 1], dtype=object)})
    return setup


def _evil_pickle(name: str):
    def setup(t: Path) -> None:
        (t / name).write_bytes(pickle.dumps(Evil(t)))
    return setup


def _zip_member(name: str, member: str, data: bytes):
    def setup(t: Path) -> None:
        with zipfile.ZipFile(t / name, "w") as z:
            z.writestr(member, data)
    return setup


def _write(rel: str, text: str | bytes):
    def setup(t: Path) -> None:
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def _evil_cifar(t: Path) -> None:
    (t / "cifar").mkdir()
    for i in range(1, 6):
        (t / "cifar" / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": Evil(t)}, protocol=2))


def _report(body: str, files=()):
    def setup(t: Path) -> None:
        (t / "rep").mkdir()
        (t / "rep/report.md").write_text(f"# evil\n\n{body}\n\n**Reproduces?** yes\n")
        for name, data in files:
            target = t / "rep" / name
            if isinstance(data, Path):
                target.symlink_to(data)
            else:
                target.write_bytes(data)
    return setup


def _symlink_png(t: Path) -> None:
    _report("![f](f.png)", [("f.png", Path("/etc/passwd"))])(t)


def _pipeline(t: Path) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=10)).save_pretrained(t / "pipe")


def _nested(*setups):
    def setup(t: Path) -> None:
        for s in setups:
            s(t)
    return setup


RUN = "{r}"  # argv placeholder: the copied run
SAMPLES = _npz("s.npz", samples=np.zeros((8, 2), np.float32))
DIGITS = _npz("d.npz", samples=np.zeros((4, 1, 8, 8), np.float32))
REP = _report("text")
BAD_PICKLE = lambda t: pickle.dumps(Evil(t))  # noqa: E731

# (id, argv, expected words, setup, needs a run copy)
CASES: list[tuple[str, list[str], str, object, bool]] = []


def case(name, argv, message, setup=None, run=False):
    CASES.append((name, argv, message, setup, run))


# -- output paths: under a file, read-only, the wrong kind ---------------------------------------------------------
_OUT_COMMANDS = {
    "train": (["train", "{t}/tiny.toml", "--quiet"], True, None),
    "sample": (["sample", "--oracle", "gmm-grid", "--num", "8", "--steps", "2"], False, None),
    "evaluate": (["evaluate", "{t}/s.npz", "--dataset", "gmm-grid"], False, SAMPLES),
    "measure": (["measure", "--oracle", "gmm-grid", "--num", "8", "--quiet"], True, None),
    "demo": (["demo", "--quick", "--quiet"], True, None),
    "reproduce": (["reproduce", "epdm-quick", "--scale", "tiny", "--quiet"], True, None),
    "report": (["report", "{t}/rep"], False, REP),
    "bench": (["bench", "mmd"], False, None),
}
for cmd, (argv, folder, setup) in _OUT_COMMANDS.items():
    name = "o" if folder else "o.json" if cmd in ("evaluate", "bench") else "o.md" if cmd == "report" else "o.npz"
    case(f"out-under-file-{cmd}", [*argv, "--out", f"{{t}}/afile/{name}"], "afile is a file, so nothing can be created",
         _nested(setup or (lambda t: None), _write("afile", "x")))
    case(f"out-read-only-{cmd}", [*argv, "--out", str(READ_ONLY / name)], "cannot write in /sys", setup)
    wrong = _write("o", "x") if folder else (lambda t, name=name: (t / name).mkdir())
    case(f"out-wrong-kind-{cmd}", [*argv, "--out", f"{{t}}/{name}"],
         "is a file; give a folder" if folder else "is a folder; give a file", _nested(setup or (lambda t: None), wrong))

# -- run folders read without checks -------------------------------------------------------------------------------
SAMPLE = ["sample", RUN, "--num", "8", "--steps", "2"]
RESUME = ["train", "{t}/tiny.toml", "--out", RUN, "--resume", "latest", "--quiet", "--set", "train.steps=40"]
for cmd, argv in (("sample", SAMPLE), ("resume", RESUME)):
    state = f"{CKPT}/state.json"
    for name, setup, message in [
        ("state-not-utf8", _edit_json(state, b"\xff\xfe\x00{"), "state.json: cannot read the checkpoint state"),
        ("state-empty-object", _edit_json(state, "{}"), "'step' must be an integer in 0..9223372036854775807, got None"),
        ("state-list", _edit_json(state, "[]"), "the checkpoint state must be a JSON object, got list"),
        ("state-truncated", _edit_json(state, '{"step": 3'), "cannot read the checkpoint state"),
        ("state-empty-file", _edit_json(state, ""), "cannot read the checkpoint state"),
        ("state-deep", _edit_json(state, DEEP), "cannot read the checkpoint state (maximum recursion depth"),
        ("state-step-1e30", _edit_state(step=1e30), "'step' must be an integer in 0..9223372036854775807, got 1e+30"),
        ("state-step-2**64", _edit_state(step=2**64), "got 18446744073709551616"),
        ("state-step-negative", _edit_state(step=-1), "got -1"),
        ("state-step-string", _edit_state(step="30"), "got '30'"),
        ("state-step-bool", _edit_state(step=True), "got True"),
        ("state-step-mismatch", _edit_state(step=10), "'step' is 10 but the folder is step_00000030"),
        ("state-world-zero", _edit_state(world_size=0), "'world_size' must be an integer in 1..1048576, got 0"),
        ("state-no-optimizer", _edit_state(optimizer=_DROP), "'optimizer' must be an object"),
        ("state-optimizer-list", _edit_state(optimizer=[]), "'optimizer' must be an object"),
        ("state-missing", _replace_file(state, None), "state.json: missing (checkpoint state)"),
    ]:
        case(f"{cmd}-{name}", argv, message, setup, run=True)
    for name, setup, message in [
        ("data-not-utf8", _edit_json("r/data.json", b"\xff\xfe"), "data.json: cannot read the run's data description"),
        ("data-empty-object", _edit_json("r/data.json", "{}"), "needs 'name' (a string) and 'data_shape'"),
        ("data-list", _edit_json("r/data.json", "[]"), "must be a JSON object, got list"),
        ("data-deep", _edit_json("r/data.json", DEEP), "data.json: cannot read the run's data description"),
        ("data-shape-zero", _edit_data(data_shape=[0]), "1 to 3 sizes in 1..1048576"),
        ("data-shape-string", _edit_data(data_shape="2"), "1 to 3 sizes"),
        ("data-shape-4d", _edit_data(data_shape=[1, 1, 2, 2]), "1 to 3 sizes"),
        ("data-shape-float", _edit_data(data_shape=[2.0]), "1 to 3 sizes"),
        ("data-scaler-bad", _edit_data(scaler={"mean": [0, 0], "std": [1, 0]}), "'scaler' must be null or hold"),
        ("data-scaler-nan", _edit_data(scaler={"mean": [float("nan"), 0], "std": [1, 1]}), "'scaler' must be null"),
        ("data-missing", _replace_file("r/data.json", None), "data.json: missing (run's data description)"),
    ]:
        case(f"{cmd}-{name}", argv, message, setup, run=True)
    model = "model" if cmd == "resume" else "ema"  # sample reads the EMA weights, a resume every part
    for name, setup, message in [
        ("weights-shape", _edit_tensors(model, lambda ts: _first(ts, lambda v: torch.zeros(3, 3))),
         "but the run's model has torch.float32"),
        ("weights-dtype", _edit_tensors(model, lambda ts: _first(ts, lambda v: v.double())),
         "is torch.float64"),
        ("weights-missing-key", _edit_tensors(model, lambda ts: ts.pop(sorted(ts)[0])), "does not match the run's model"),
        ("weights-extra-key", _edit_tensors(model, lambda ts: ts.update(extra=torch.zeros(1))),
         "has 'extra', which the model does not have"),
        ("weights-nan", _edit_tensors(model, lambda ts: _first(ts, lambda v: v * float("nan"))),
         "hold NaN or infinite values: the run diverged by this checkpoint"),
        ("weights-inf", _edit_tensors(model, lambda ts: _first(ts, lambda v: v + float("inf"))),
         "hold NaN or infinite values"),
        ("weights-truncated", _replace_file(f"{CKPT}/{model}.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"),
         "cannot read checkpoint tensors"),
        ("weights-garbage", _replace_file(f"{CKPT}/{model}.safetensors", b"garbage" * 10), "cannot read checkpoint tensors"),
        ("weights-empty", _replace_file(f"{CKPT}/{model}.safetensors", b""), "cannot read checkpoint tensors"),
        ("weights-pickle", _replace_file(f"{CKPT}/{model}.safetensors", BAD_PICKLE), "cannot read checkpoint tensors"),
        ("weights-missing", _replace_file(f"{CKPT}/{model}.safetensors", None), "cannot read checkpoint tensors"),
        ("config-not-toml", _edit_json("r/config.toml", "[train\nsteps = 1"), "config.toml: not valid TOML"),
        ("config-deep", _edit_json("r/config.toml", "a = " + DEEP), "config.toml: not valid TOML (nested too deeply)"),
        ("config-not-utf8", _edit_json("r/config.toml", b"\xff\xfe = 1"), "config.toml: not valid TOML"),
        ("config-unknown-key", _edit_json("r/config.toml", "[train]\nstepz = 1\n"), "unknown key 'train.stepz'"),
        ("config-section-value", _edit_json("r/config.toml", "train = 3\n"), "[train] must be a section"),
        ("config-renamed-section", _edit_json("r/config.toml", "diffusion = 3\n"), "[diffusion] must be a section"),
    ]:
        case(f"{cmd}-{name}", argv, message, setup, run=True)

for name, setup, message in [
    ("ema-shape", _edit_tensors("ema", lambda ts: _first(ts, lambda v: torch.zeros(2))), "ema.safetensors: tensor"),
    ("optimizer-shape", _edit_tensors("optimizer", lambda ts: ts.update({"0.exp_avg": torch.zeros(7)})),
     "optimizer entry '0.exp_avg' is torch.float32 (7,) but parameter 0 is torch.float32"),
    ("optimizer-index", _edit_tensors("optimizer", lambda ts: ts.update({"999.exp_avg": torch.zeros(1)})),
     "optimizer entry '999.exp_avg' names no parameter"),
    ("optimizer-name", _edit_tensors("optimizer", lambda ts: ts.update({"0.momentum": torch.zeros(1)})),
     "unknown optimizer entry '0.momentum'"),
    ("optimizer-step-shape", _edit_tensors("optimizer", lambda ts: ts.update({"0.step": torch.zeros(2)})),
     "optimizer entry '0.step'"),
    ("optimizer-nan", _edit_tensors("optimizer", lambda ts: ts.update({"0.exp_avg_sq": ts["0.exp_avg_sq"] * np.nan})),
     "optimizer entry '0.exp_avg_sq' holds NaN or infinite values"),
    ("optimizer-garbage", _replace_file(f"{CKPT}/optimizer.safetensors", b"x" * 9), "optimizer.safetensors: cannot read"),
    ("optimizer-scalar", _edit_groups(lambda o: o["scalars"].update({"0.foo": "x"})), "optimizer scalar '0.foo'"),
    ("groups-two", _edit_groups(lambda o: o["param_groups"].append(o["param_groups"][0])),
     "2 optimizer parameter groups, the run's optimizer has 1"),
    ("groups-params", _edit_groups(lambda o: o["param_groups"][0].update(params=[0, 1])),
     "an optimizer parameter group lists parameters [0, 1]"),
    ("groups-lr-string", _edit_groups(lambda o: o["param_groups"][0].update(lr="fast")),
     "optimizer setting 'lr' is 'fast'"),
    ("groups-betas", _edit_groups(lambda o: o["param_groups"][0].update(betas=[0.9])), "optimizer setting 'betas'"),
    ("groups-no-eps", _edit_groups(lambda o: o["param_groups"][0].pop("eps")), "group lacks 'eps'"),
    ("rng-size", _edit_tensors("rng", lambda ts: ts.update(generator=ts["generator"][:, :100].contiguous())),
     "generator state 'generator' is torch.uint8 (1, 100); expected uint8 (1, 5056)"),
    ("rng-rows", _edit_tensors("rng", lambda ts: ts.update(torch=ts["torch"].repeat(2, 1))),
     "generator state 'torch' is torch.uint8 (2, 5056); expected uint8 (1, 5056): one 5056-byte state per process"),
    ("rng-dtype", _edit_tensors("rng", lambda ts: ts.update(torch=ts["torch"].long())), "generator state 'torch' is torch.int64"),
    ("rng-missing", _edit_tensors("rng", lambda ts: ts.pop("generator")), "no 'generator' generator state"),
    ("rng-garbage", _edit_tensors("rng", lambda ts: ts.update(torch=torch.full_like(ts["torch"], 255))),
     "rng.safetensors: not a valid generator state"),
    ("log-bad-line", _write("r/log.jsonl", '{"step": 10, "loss": 1}\nnot json\n{"step": 20, "loss": 1}\n'),
     "log.jsonl: line 2 is not a JSON record with an integer 'step'"),
    ("log-step-string", _write("r/log.jsonl", '{"step": "10"}\n{"step": 20}\n'), "log.jsonl: line 1 is not"),
    ("log-not-a-record", _write("r/log.jsonl", '[1, 2]\n{"step": 20}\n'), "log.jsonl: line 1 is not"),
    ("changed-model", None, "cannot resume: model.width is 64 but the run was trained with 32"),
]:
    argv = RESUME + (["--set", "model.width=64"] if name == "changed-model" else [])
    case(f"resume-{name}", argv, message, setup, run=True)

case("sample-weights-huge", SAMPLE, "samples are NaN or infinite: the model diverged (its weights are finite, its "
     "outputs are not); nothing written", _edit_tensors("ema", lambda ts: ts.update({k: v * 1e30 for k, v in ts.items()})),
     run=True)

case("resume-path-into-new-out", ["train", "{t}/tiny.toml", "--out", "{t}/new", "--resume", f"{{t}}/{CKPT}", "--quiet"],
     "a checkpoint of", run=True)
case("resume-path-not-a-checkpoint", ["train", "{t}/tiny.toml", "--out", RUN, "--resume", "{t}/nowhere", "--quiet"],
     "nowhere: not a diffprop checkpoint folder (no state.json)", run=True)
case("resume-latest-empty-folder", ["train", "{t}/tiny.toml", "--out", "{t}/empty", "--resume", "latest", "--quiet"],
     "no checkpoints found", lambda t: (t / "empty").mkdir())
case("train-over-a-run", ["train", "{t}/tiny.toml", "--out", RUN, "--quiet"], "already holds a run; use --resume latest",
     run=True)
case("sample-no-run", ["sample", "{t}"], "not a diffprop run folder (no config.toml)")

# -- numbers and sizes ---------------------------------------------------------------------------------------------
TRAIN = ["train", "{t}/tiny.toml", "--out", "{t}/o", "--quiet"]
for name, argv, message in [
    ("seed-64-bit", ["sample", "--oracle", "gmm-grid", "--seed", str(2**64)], "argument --seed: must be in 0..4294967295"),
    ("seed-negative", ["sample", "--oracle", "gmm-grid", "--seed", "-1"], "argument --seed: must be in 0..4294967295"),
    ("seed-float", ["sample", "--oracle", "gmm-grid", "--seed", "1.5"], "argument --seed: expected an integer"),
    ("measure-seed-33-bit", ["measure", "--oracle", "gmm-grid", "--seed", str(2**32)], "must be in 0..4294967295"),
    ("config-seed-64-bit", [*TRAIN, "--set", f"seed={2**64}"], "config: seed must be <= 4294967295"),
    ("steps-huge", [*TRAIN, "--set", "train.steps=99999999999999999999999"], "train.steps must fit in 64 bits"),
    ("steps-5000-digits", [*TRAIN, "--set", "train.steps=" + "9" * 5000], "cannot read the value (Exceeds the limit"),
    ("num-samples-1e9", [*TRAIN, "--set", "data.num_samples=1000000000"], "data.num_samples must be <= 10000000"),
    ("T-1e9", [*TRAIN, "--set", "diffusion.T=1000000000"], "diffusion.T must be <= 100000"),
    ("width-1e8", [*TRAIN, "--set", "model.width=100000000"], "model.width must be <= 65536"),
    ("model-too-big", [*TRAIN, "--set", "model.width=65536", "--set", "model.depth=64"],
     "parameters (model.kind = 'mlp', width 65536, depth 64, data (2,)) in training (weights, gradient, EMA, two "
     "AdamW moments) needs"),
    ("image-size-huge", [*TRAIN, "--set", "data.image_size=100000"], "data.image_size must be <= 2048"),
    ("sample-num-1e9", ["sample", "--oracle", "gmm-grid", "--num", "1000000000"], "argument --num: must be in 1..1000000"),
    ("config-sample-num", [*TRAIN, "--set", "sample.num=1000000000"], "sample.num must be <= 1000000"),
    ("lr-1e38", [*TRAIN, "--set", "train.lr=1e38"], "train.lr must be <= 1e+30, got 1e+38"),
    ("lr-inf", [*TRAIN, "--set", "train.lr=inf"], "train.lr must be a finite number, got inf"),
    ("lr-nan", [*TRAIN, "--set", "train.lr=nan"], "train.lr must be a finite number, got nan"),
    ("weight-decay-1e400", [*TRAIN, "--set", "train.weight_decay=1e400"], "weight_decay must be a finite number"),
    ("measure-num-1e5", ["measure", "--oracle", "gmm-grid", "--num", "100000"], "--num 100000: at most 3000 samples"),
    ("measure-permutations-1e9", ["measure", "--oracle", "gmm-grid", "--permutations", "1000000000"],
     "argument --permutations: must be in 1..10000"),
    ("measure-repeats-1e9", ["measure", "--oracle", "gmm-grid", "--repeats", "1000000000"],
     "argument --repeats: must be in 1..100"),
    ("reproduce-seeds-1e20", ["reproduce", "epdm-quick", "--scale", "tiny", "--seeds", str(10**20)],
     "argument --seeds: must be in 1..100"),
    ("consistency-steps-1e5", [*TRAIN, "--set", "consistency.steps=100000"],
     "consistency.steps (100000) must be <= consistency.window (20)"),
]:
    case(name, argv, message)

# -- nesting, archives, files that are not what they claim ---------------------------------------------------------
for name, argv, message, setup in [
    ("toml-deep", ["train", "{t}/deep.toml"], "deep.toml: not valid TOML (nested too deeply)", _write("deep.toml", "a = " + DEEP)),
    ("set-deep", [*TRAIN, "--set", "train.steps=" + DEEP], "cannot read the value (nested too deeply)", None),
    ("toml-not-utf8", ["train", "{t}/bad.toml"], "bad.toml: not valid TOML", _write("bad.toml", b"\xff = 1")),
    ("toml-5000-digits", ["train", "{t}/big.toml"], "not valid TOML (Exceeds the limit", _write("big.toml", "seed = " + "9" * 5000)),
    ("toml-steps-huge", ["train", "{t}/big.toml"], "train.steps must fit in 64 bits",
     _write("big.toml", "[train]\nsteps = 99999999999999999999999\n")),
    ("npz-member-not-npy", [*TRAIN, "--set", "data.name='npz:{t}/z.npz'"], "member 'x.txt' is not a .npy array",
     _zip_member("z.npz", "x.txt", b"not an array")),
    ("npz-member-bad-npy", [*TRAIN, "--set", "data.name='npz:{t}/z.npz'"], "array 'x' is corrupt",
     _zip_member("z.npz", "x.npy", b"\x93NUMPY garbage")),
    ("npz-zero-columns", [*TRAIN, "--set", "data.name='npz:{t}/z.npz'"], "has shape (10, 0)",
     _npz("z.npz", x=np.zeros((10, 0)))),
    ("npz-strings", [*TRAIN, "--set", "data.name='npz:{t}/z.npz'"], "non-numeric dtype",
     _npz("z.npz", x=np.array([["a", "b"]] * 4))),
    ("npz-beyond-float32", [*TRAIN, "--set", "data.name='npz:{t}/z.npz'"], "beyond float32",
     _npz("z.npz", x=np.full((4, 2), 1e39))),
    ("npz-evil-object", [*TRAIN, "--set", "data.name='npz:{t}/z.npz'"], "refusing to unpickle", _evil_npz("z.npz")),
    ("npz-evil-pickle", [*TRAIN, "--set", "data.name='npz:{t}/z.npz'"], "neither a zip archive", _evil_pickle("z.npz")),
    ("csv-overflow", [*TRAIN, "--set", "data.name='csv:{t}/c.csv'"], "column 'a' has '1e300' on line 2, beyond float32",
     _write("c.csv", "a,b\n1e300,1\n2,2\n")),
    ("csv-text", [*TRAIN, "--set", "data.name='csv:{t}/c.csv'"], "column 'b' is not numeric", _write("c.csv", "a,b\n1,x\n")),
    ("csv-no-rows", [*TRAIN, "--set", "data.name='csv:{t}/c.csv'"], "no data rows", _write("c.csv", "a,b\n")),
    ("cifar-evil", [*TRAIN, "--set", "data.name='cifar10:{t}/cifar'"], "refusing to unpickle global posix.system",
     _evil_cifar),
    ("evaluate-zero-samples", ["evaluate", "{t}/e.npz", "--dataset", "gmm-grid"], "has shape (0, 2); expected (N, ...)",
     _npz("e.npz", samples=np.zeros((0, 2), np.float32))),
    ("evaluate-strings", ["evaluate", "{t}/e.npz", "--dataset", "gmm-grid"], "'samples' is not a numeric array",
     _npz("e.npz", samples=np.array([["a", "b"]]))),
    ("evaluate-nan", ["evaluate", "{t}/e.npz", "--dataset", "gmm-grid"], "1 of the 3 samples hold NaN",
     _npz("e.npz", samples=np.array([[0, 1], [np.nan, 0], [1, 1]], np.float32))),
    ("evaluate-vector", ["evaluate", "{t}/e.npy", "--dataset", "gmm-grid"], "has shape (3,)",
     lambda t: np.save(t / "e.npy", np.zeros(3, np.float32))),
    ("evaluate-member-not-npy", ["evaluate", "{t}/e.npz", "--dataset", "gmm-grid"], "'samples' is not a numeric array",
     _zip_member("e.npz", "samples", b"raw bytes")),
    ("evaluate-bad-zip", ["evaluate", "{t}/e.npz", "--dataset", "gmm-grid"], "cannot read samples",
     _write("e.npz", b"PK\x03\x04 truncated")),
    ("evaluate-evil-object", ["evaluate", "{t}/e.npz", "--dataset", "gmm-grid"], "cannot read samples",
     _evil_npz("e.npz", "samples")),
    ("evaluate-evil-pickle", ["evaluate", "{t}/e.npz", "--dataset", "gmm-grid"], "cannot read samples",
     _evil_pickle("e.npz")),
    ("evaluate-evil-inception", ["evaluate", "{t}/d.npz", "--dataset", "digits", "--features", "inception",
                                 "--inception-weights", "{t}/w.pth"], "w.pth", _nested(DIGITS, _evil_pickle("w.pth"))),
    ("diffusers-evil-bin", ["sample", "--diffusers", "{t}/unet", "--dataset", "digits"], "no .safetensors weights",
     _nested(_write("unet/config.json", json.dumps({"_class_name": "UNet2DModel", "sample_size": 8})),
             _evil_pickle("unet/diffusion_pytorch_model.bin"))),
    ("diffusers-wrong-dataset", ["sample", "--diffusers", "{t}/pipe", "--dataset", "digits"],
     "--dataset digits: data of shape (1, 8, 8) but the --diffusers U-Net takes (3, 8, 8)", _pipeline),
    ("measure-kernels-empty", ["measure", "--oracle", "gmm-grid", "--kernels", ""], "--kernels '': name at least one kernel", None),
    ("measure-kernels-commas", ["measure", "--oracle", "gmm-grid", "--kernels", ",,"], "name at least one kernel", None),
]:
    case(name, argv, message, setup)

# -- options that do not apply, values that were accepted --------------------------------------------------------
ORACLE = ["sample", "--oracle", "gmm-grid", "--num", "8"]
for name, argv, message, setup, run in [
    ("eps-scale-nan", [*ORACLE, "--eps-scale", "nan"], "argument --eps-scale: must be a finite number, got nan", None, False),
    ("eps-scale-inf", [*ORACLE, "--eps-scale", "inf"], "must be a finite number, got inf", None, False),
    ("eps-scale-overflow", [*ORACLE, "--eps-scale", "1e400"], "must be a finite number, got 1e400", None, False),
    ("eps-bias-nan", [*ORACLE, "--eps-bias", "nan"], "argument --eps-bias: must be a finite number", None, False),
    ("eps-bias-neg-inf", [*ORACLE, "--eps-bias=-inf"], "argument --eps-bias: must be a finite number", None, False),
    ("measure-eps-bias-inf", ["measure", "--oracle", "gmm-grid", "--eps-bias", "inf"], "must be a finite number", None, False),
    ("eta-negative", [*ORACLE, "--sampler", "ddim", "--eta=-1"], "argument --eta: must be a finite number >= 0.0", None, False),
    ("eta-nan", [*ORACLE, "--sampler", "ddim", "--eta", "nan"], "argument --eta: must be a finite number", None, False),
    ("eta-inf", [*ORACLE, "--sampler", "ddim", "--eta", "inf"], "argument --eta: must be a finite number", None, False),
    ("eta-with-ddpm", [*ORACLE, "--sampler", "ddpm", "--eta", "0.5"], "--eta and --clipped-eps apply to --sampler ddim",
     None, False),
    ("eps-scale-with-run", [*SAMPLE, "--eps-scale", "2"], "--eps-scale and --eps-bias apply to --oracle", None, True),
    ("eps-bias-with-measure-run", ["measure", RUN, "--eps-bias", "0.1"], "apply to --oracle", None, True),
    ("no-ema-with-oracle", [*ORACLE, "--no-ema"], "--no-ema applies to a run folder", None, False),
    ("dataset-with-oracle", [*ORACLE, "--dataset", "digits"], "--dataset applies to --diffusers in sample", None, False),
    ("dataset-with-run", [*SAMPLE, "--dataset", "gmm-ring"], "--dataset applies to --diffusers in sample", None, True),
    ("inception-weights-digits", ["evaluate", "{t}/d.npz", "--dataset", "digits", "--inception-weights", "{t}/w.pth"],
     "--inception-weights applies to --features inception, not digits-classifier", _nested(DIGITS, _write("w.pth", "w")),
     False),
    ("inception-weights-pixels", ["evaluate", "{t}/d.npz", "--dataset", "digits", "--features", "pixels",
                                  "--inception-weights", "{t}/w.pth"], "not pixels", _nested(DIGITS, _write("w.pth", "w")),
     False),
    ("features-vector-data", ["evaluate", "{t}/s.npz", "--dataset", "gmm-grid", "--features", "pixels"],
     "apply to image data; gmm-grid is not", SAMPLES, False),
]:
    case(name, argv, message, setup, run)

# -- reports that point outside their folder ----------------------------------------------------------------------
for name, setup, message in [
    ("report-passwd", _report("![f](../../../../../../../../etc/passwd)"), "which is not a PNG, JPEG or GIF file inside"),
    ("report-symlink", _symlink_png, "links the figure f.png, which is not a PNG, JPEG or GIF file inside"),
    ("report-fake-png", _report("![f](f.png)", [("f.png", b"secret text")]), "not a PNG, JPEG or GIF"),
    ("report-missing", _report("![f](gone.png)"), "links the figure gone.png, which is missing"),
]:
    case(name, ["report", "{t}/rep", "--out", "{t}/out.md"], message, setup)

# -- every config field: a value of the wrong kind, and one out of its range ---------------------------------------
_SECTIONS = [f for f in dataclasses.fields(config_module.Config) if f.name not in ("seed", "version")]
for sec in _SECTIONS:
    for f in dataclasses.fields(sec.default_factory):
        key, rule, typ = f"{sec.name}.{f.name}", f.metadata, f.type.removesuffix(" | None")  # None: the preset
        if typ == "bool":
            bad = [("2", "{key} must be true or false")]
        elif typ == "int":
            top = rule.get("max")
            bad = [("1.5", "{key} must be an integer"),
                   (str(2**63), f"{{key}} must be <= {top}" if top is not None else "{key} must fit in 64 bits")]
        elif typ == "float":
            bad = [("'x'", "{key} must be a number"), ("inf", "{key} must be a finite number")]
        elif typ == "list":
            bad = [("3", "{key} must be a list"), ("['nope']", "{key} has 'nope'; allowed")]
        else:
            bad = [("3", "{key} must be a string")] + ([("'nope'", "{key} = 'nope' is not allowed")]
                                                        if "choices" in rule else [])
        for value, message in bad:
            case(f"field-{key}={value[:8]}", [*TRAIN, "--set", f"{key}={value}"], "config: " + message.format(key=key))


# -- the harness ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-run")
    _tiny_toml(root)
    code = main(["train", str(root / "tiny.toml"), "--out", str(root / "r"), "--quiet"])
    assert code == 0
    return root / "r"


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if not p.is_symlink()}


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors leave through exit()
        code = e.code
    return code, capsys.readouterr()


@pytest.mark.parametrize("name, argv, message, setup, run", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line_and_exit_2(name, argv, message, setup, run, trained, tmp_path, capsys):
    _tiny_toml(tmp_path)
    if run:
        shutil.copytree(trained, tmp_path / "r")
    if setup:
        setup(tmp_path)
    before = _snapshot(tmp_path)
    fill = {"t": tmp_path, "r": tmp_path / "r"}
    code, out = _run([a.format(**fill) for a in argv], capsys)
    lines = [ln for ln in re.split(r"[\r\n]+", out.err) if ln.strip()]  # (a progress bar rewrites its line with \r)
    errors = [ln for ln in lines if ln.startswith("diffprop: error:")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in out.err, out.err
    assert message.format(**fill) in errors[0], errors[0]
    assert not (tmp_path / "PWNED").exists(), "a malicious pickle ran"
    assert _snapshot(tmp_path) == before, "a refused command changed or created files"


def test_there_are_enough_cases_of_every_class():
    prefixes = ("out-", "sample-state", "resume-state", "sample-data", "resume-data", "resume-weights",
                "sample-weights", "resume-optimizer", "resume-rng", "resume-log", "resume-path", "seed", "lr-",
                "toml-", "npz-", "csv-", "evaluate-", "eps-", "eta-", "report-", "field-", "measure-num",
                "consistency-steps")
    assert len(CASES) >= 150 and all(any(c[0].startswith(p) for c in CASES) for p in prefixes)


def test_evaluate_takes_a_plain_npy(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    code, out = _run(["evaluate", str(tmp_path / "s.npy"), "--dataset", "gmm-grid"], capsys)
    assert code == 0, out.err
    assert "mmd_rbf" in json.loads((tmp_path / "s.metrics.json").read_text())


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_html_escapes_untrusted_text_links_and_images(tmp_path, capsys):
    from PIL import Image

    rep = tmp_path / "rep"
    rep.mkdir()
    Image.new("L", (4, 4)).save(rep / "fig.png")
    (rep / "report.md").write_text(
        '# Title <script>alert(1)</script> [x](javascript:alert(1))\n\n'
        '[js](javascript:alert(1)) [JS](JaVaScRiPt:alert(1)) [data](data:text/html,hi) [file](file:///etc/passwd) '
        '[proto](//evil.example/x) [quote](a"onmouseover="alert(1)) [ok](https://example.org/a?b=1&c=2) '
        '[rel](table.csv) [anchor](#title)\n\n<script>alert(2)</script>\n\n<img src=x onerror=alert(3)>\n\n'
        '![fig](fig.png) ![remote](https://example.org/x.png)\n\n**Reproduces?** yes | <b onclick=x>no</b>\n')
    out = tmp_path / "site/index.md"
    assert main(["report", str(rep), "--out", str(out)]) == 0, capsys.readouterr().err
    page = out.with_suffix(".html").read_text()
    parser = _Tags()
    parser.feed(page)
    allowed = {"html": set(), "head": set(), "meta": {"charset"}, "title": set(), "style": set(), "body": set(),
               "h1": {"id"}, "h2": {"id"}, "p": set(), "a": {"href"}, "img": {"src", "alt"}, "table": set(),
               "thead": set(), "tbody": set(), "tr": set(), "th": {"style"}, "td": {"style"}, "strong": set(),
               "code": set()}
    for tag, attrs in parser.tags:
        assert tag in allowed and set(attrs) <= allowed[tag], (tag, attrs)
    hrefs = [a["href"] for t, a in parser.tags if t == "a"]
    assert all(h.startswith(("https://", "#", "../rep/")) and '"' not in h for h in hrefs), hrefs
    assert "https://example.org/a?b=1&amp;c=2" in page and any(h.endswith("/rep/table.csv") for h in hrefs)
    srcs = [a["src"] for t, a in parser.tags if t == "img"]
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")  # the remote image is its alt text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(3)&gt;" in page
    assert "[js](javascript:alert(1))" in page and "<script" not in page.lower()
